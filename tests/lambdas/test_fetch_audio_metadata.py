"""fetch_audio_metadata reads only what it needs and refuses what cannot be transcribed."""

from __future__ import annotations

import pytest

from lambdas.steps.fetch_audio_metadata.handler import audio_metadata, handler
from sluice.errors import BusinessError
from sluice.settings import LambdaSettings
from tests.lambdas.audio import mp3, wav

# The Lambdas' variables, by setting (sluice.settings.LambdaSettings).
LAMBDA_VARS = LambdaSettings.variables()


def _payload(aws, key: str) -> dict:
    return {"job_id": "job-1", "correlation_id": "corr-1", "bucket": aws.bucket, "key": key}


def test_a_wav_upload_yields_duration_format_channels_and_rate(aws, lambda_context):
    # Given a 3-second stereo WAV at 22.05 kHz in the media bucket
    aws.put_audio("uploads/a.wav", wav(3.0, rate=22_050, channels=2))
    # When the step runs
    result = handler(_payload(aws, "uploads/a.wav"), lambda_context)
    # Then it reports what Transcribe needs
    assert result["format"] == "wav"
    assert result["duration_s"] == pytest.approx(3.0, abs=0.01)
    assert (result["channels"], result["sample_rate"]) == (2, 22_050)


def test_an_mp3_upload_is_recognised_as_mp3(aws, lambda_context):
    aws.put_audio("uploads/s.mp3", mp3(10.0), content_type="audio/mpeg")
    result = handler(_payload(aws, "uploads/s.mp3"), lambda_context)
    assert result["format"] == "mp3"
    assert result["duration_s"] == pytest.approx(10.0, abs=0.2)
    assert result["sample_rate"] == 44_100


def test_a_long_recording_is_measured_without_downloading_it(aws, monkeypatch):
    # Given ten minutes of WAV (about 19 MB)
    monkeypatch.setenv(LAMBDA_VARS["max_audio_seconds"], "3600")
    body = wav(600.0, rate=16_000)
    aws.put_audio("uploads/long.wav", body)
    # When measured
    result = audio_metadata(_payload(aws, "uploads/long.wav"))
    # Then the duration is right and only a small part of the object was read
    assert result["duration_s"] == pytest.approx(600.0, abs=0.01)
    assert result["bytes_read"] < len(body) / 50


def test_a_missing_object_is_a_business_error(aws, lambda_context):
    with pytest.raises(BusinessError) as err:
        handler(_payload(aws, "uploads/nothing.wav"), lambda_context)
    assert err.value.code == "missing_object"


def test_non_audio_bytes_are_a_business_error(aws, lambda_context):
    aws.put_audio("uploads/notes.wav", b"%PDF-1.7 this is a document, not audio" * 100)
    with pytest.raises(BusinessError) as err:
        handler(_payload(aws, "uploads/notes.wav"), lambda_context)
    assert err.value.code == "not_audio"


def test_an_empty_object_is_a_business_error(aws, lambda_context):
    aws.put_audio("uploads/empty.wav", b"")
    with pytest.raises(BusinessError) as err:
        handler(_payload(aws, "uploads/empty.wav"), lambda_context)
    assert err.value.code == "empty_audio"


def test_audio_without_samples_is_a_business_error(aws, lambda_context):
    aws.put_audio("uploads/silent.wav", wav(0.0))
    with pytest.raises(BusinessError) as err:
        handler(_payload(aws, "uploads/silent.wav"), lambda_context)
    assert err.value.code == "empty_audio"


def test_audio_over_the_maximum_duration_is_a_business_error(aws, lambda_context, monkeypatch):
    monkeypatch.setenv(LAMBDA_VARS["max_audio_seconds"], "2")
    aws.put_audio("uploads/long.wav", wav(3.0))
    with pytest.raises(BusinessError) as err:
        handler(_payload(aws, "uploads/long.wav"), lambda_context)
    assert err.value.code == "too_long"


def test_an_object_outside_the_media_bucket_is_refused(aws, lambda_context):
    with pytest.raises(BusinessError) as err:
        handler({**_payload(aws, "uploads/a.wav"), "bucket": "someone-else"}, lambda_context)
    assert err.value.code == "foreign_bucket"
