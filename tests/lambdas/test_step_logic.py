"""Each step's logic on its own, with in-memory adapters (tests/lambdas/fakes.py): no moto.

The handlers around it (payload in, answer out) and the adapters against moto are tested in the
other files of tests/lambdas and in tests/adapters.
"""

from __future__ import annotations

import json

import pytest

from adapters.s3 import S3Location
from adapters.transcribe import Job
from lambdas.steps.check_transcription.handler import poll
from lambdas.steps.fetch_audio_metadata.handler import measure
from lambdas.steps.notify_user.handler import announce, completed_event
from lambdas.steps.on_failure.handler import fail_job
from lambdas.steps.parse_save_transcription.handler import save_transcript
from lambdas.steps.start_transcription.handler import start_job
from sluice.errors import BusinessError
from tests.lambdas.audio import mp3, wav
from tests.lambdas.conftest import SERMON, transcribe_json
from tests.lambdas.fakes import FakeJobs, FakeNotifications, FakeTranscribe, storage

MEDIA = "media"


# --- fetch_audio_metadata -----------------------------------------------------------------------


def test_audio_is_measured_from_a_few_byte_ranges():
    # Given ten minutes of WAV in the bucket
    body = wav(600.0, rate=8_000)
    store, s3 = storage(**{"media/uploads/a.wav": body})
    # When measured
    meta = measure(
        S3Location(MEDIA, "uploads/a.wav"), storage=store, media_bucket=MEDIA, max_seconds=3600
    )
    # Then its format, duration and layout are known from a small part of the object
    assert (meta.format, meta.channels, meta.sample_rate) == ("wav", 1, 8_000)
    assert meta.duration_s == pytest.approx(600.0, abs=0.01)
    assert meta.size == len(body) and meta.bytes_read < len(body) / 50 and s3.ranges


def test_mp3_is_recognised():
    store, _ = storage(**{"media/uploads/a.mp3": mp3(3.0)})
    meta = measure(
        S3Location(MEDIA, "uploads/a.mp3"), storage=store, media_bucket=MEDIA, max_seconds=60
    )
    assert meta.format == "mp3"


@pytest.mark.parametrize(
    ("objects", "key", "max_seconds", "code"),
    [
        ({}, "uploads/none.wav", 60, "missing_object"),
        ({"media/uploads/e.wav": b""}, "uploads/e.wav", 60, "empty_audio"),
        ({"media/uploads/t.wav": b"hello, not audio" * 100}, "uploads/t.wav", 60, "not_audio"),
        ({"media/uploads/l.wav": wav(3.0)}, "uploads/l.wav", 2, "too_long"),
    ],
)
def test_what_cannot_be_transcribed_is_a_business_error(objects, key, max_seconds, code):
    store, _ = storage(**objects)
    with pytest.raises(BusinessError) as err:
        measure(S3Location(MEDIA, key), storage=store, media_bucket=MEDIA, max_seconds=max_seconds)
    assert err.value.code == code


def test_an_object_outside_the_media_bucket_is_refused_unread():
    store, s3 = storage()
    with pytest.raises(BusinessError) as err:
        measure(S3Location("other", "a.wav"), storage=store, media_bucket=MEDIA, max_seconds=60)
    assert err.value.code == "foreign_bucket" and not s3.ranges


# --- start_transcription and check_transcription ----------------------------------------------


def test_a_job_is_started_once_with_the_language_and_rate_given():
    transcribe = FakeTranscribe()
    media = S3Location(MEDIA, "uploads/a.wav")
    kwargs = {"output_bucket": MEDIA, "sample_rate": 16_000, "language": "en-US", "kms_key": "k"}
    job, started = start_job("j-1", media, "wav", transcribe=transcribe, **kwargs)
    again, started_again = start_job("j-1", media, "wav", transcribe=transcribe, **kwargs)
    assert (job.name, started, started_again, again == job) == ("sluice-j-1", True, False, True)
    request = transcribe.requests[0]
    assert request["Media"] == {"MediaFileUri": "s3://media/uploads/a.wav"}
    assert (request["OutputBucketName"], request["OutputKey"]) == (
        MEDIA,
        "tmp/transcribe/j-1.json",
    )
    assert (request["LanguageCode"], request["MediaSampleRateHertz"]) == ("en-US", 16_000)
    assert request["OutputEncryptionKMSKeyId"] == "k"


def test_without_a_language_transcribe_identifies_it_and_an_odd_rate_is_left_to_it():
    transcribe = FakeTranscribe()
    start_job(
        "j-2",
        S3Location(MEDIA, "a.wav"),
        "wav",
        transcribe=transcribe,
        output_bucket=MEDIA,
        sample_rate=96_000,
    )
    (request,) = transcribe.requests
    assert request["IdentifyLanguage"] is True
    assert "LanguageCode" not in request and "MediaSampleRateHertz" not in request


def test_a_poll_reports_the_state_and_fails_for_good_on_failed():
    where = S3Location(MEDIA, "tmp/transcribe/j.json")
    transcribe = FakeTranscribe(
        jobs={
            "running": Job("running", "IN_PROGRESS"),
            "done": Job("done", "COMPLETED", transcript=where, language="en-US"),
            "failed": Job("failed", "FAILED", failure_reason="unsupported codec"),
            "odd": Job("odd", "COMPLETED"),
        }
    )
    assert poll("running", transcribe=transcribe).status == "IN_PROGRESS"
    assert poll("done", transcribe=transcribe).transcript == where
    with pytest.raises(BusinessError, match="unsupported codec") as err:
        poll("failed", transcribe=transcribe)
    assert err.value.code == "transcription_failed"
    with pytest.raises(BusinessError) as err:
        poll("odd", transcribe=transcribe)
    assert err.value.code == "bad_transcript_uri"


# --- parse_save_transcription -------------------------------------------------------------------


def test_a_transcript_is_saved_three_ways_and_the_job_completed():
    store, s3 = storage(
        **{"media/tmp/transcribe/j.json": json.dumps(transcribe_json(SERMON)).encode()}
    )
    jobs = FakeJobs()
    saved = save_transcript(
        "j",
        S3Location(MEDIA, "tmp/transcribe/j.json"),
        storage=store,
        jobs=jobs,
        media_bucket=MEDIA,
        language="en-US",
    )
    assert saved.outputs == {
        "transcript": "s3://media/transcripts/j/transcript.json",
        "text": "s3://media/transcripts/j/transcript.txt",
        "captions": "s3://media/transcripts/j/captions.vtt",
    }
    assert (saved.word_count, saved.segment_count, saved.paragraph_count) == (12, 2, 2)
    text, content_type = s3.objects[(MEDIA, "transcripts/j/transcript.txt")]
    assert content_type.startswith("text/plain") and text.decode().startswith("Grace and peace")
    record = jobs.get("j")
    assert record is not None
    assert (record["status"], record["outputs"], record["language"]) == (
        "COMPLETED",
        saved.outputs,
        "en-US",
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (None, "missing_transcript"),
        (b"not json", "bad_transcript"),
        (json.dumps(transcribe_json([])).encode(), "empty_transcript"),
    ],
)
def test_a_missing_unreadable_or_empty_transcript_is_a_business_error(body, code):
    store, _ = storage(**({} if body is None else {"media/t.json": body}))
    jobs = FakeJobs()
    with pytest.raises(BusinessError) as err:
        save_transcript(
            "j",
            S3Location(MEDIA, "t.json"),
            storage=store,
            jobs=jobs,
            media_bucket=MEDIA,
        )
    assert err.value.code == code and jobs.records == {}


# --- notify_user and on_failure -----------------------------------------------------------------


def test_completion_is_published_then_sent_as_the_event_the_job_id_names():
    notes, sent = FakeNotifications(), []
    event = completed_event(
        "j", "corr-j", source={"bucket": MEDIA, "key": "a.wav"}, outputs={"text": "s3://x"}
    )
    notified = announce(
        event,
        notifications=notes,
        send=lambda ev: sent.append(ev) or "msg-1",
    )
    assert (notified.notification_id, notified.event_id, notified.event_message_id) == (
        "note-1",
        "j-transcribed",
        "msg-1",
    )
    ((subject, note),) = notes.published
    assert (subject, note["type"], note["outputs"]) == (
        "Transcript ready",
        "transcription.completed",
        {"text": "s3://x"},
    )
    assert [(ev.name, ev.correlation_id) for ev in sent] == [
        ("media/transcription.completed", "corr-j")
    ]


def test_a_failure_is_recorded_and_told():
    jobs, notes = FakeJobs(), FakeNotifications()
    error = {"error_class": "business", "error_type": "BusinessError", "message": "m", "step": "s"}
    note = fail_job("j", error, jobs=jobs, notifications=notes, correlation_id="c")
    record = jobs.get("j")
    assert record is not None
    assert (record["status"], record["failed_step"], record["error"]) == ("FAILED", "s", error)
    assert note == "note-1"
    assert notes.published[0][1]["type"] == "transcription.failed"
