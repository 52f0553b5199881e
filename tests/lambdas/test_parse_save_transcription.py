"""parse_save_transcription turns Transcribe's JSON into transcript, text and captions."""

from __future__ import annotations

import json

import pytest

from lambdas.common.aws import jobs as jobs_table
from lambdas.steps.parse_save_transcription.handler import handler
from sluice.errors import BusinessError
from tests.lambdas.conftest import SERMON, transcribe_json

KEY = "tmp/transcribe/job-9.json"


def _payload(aws) -> dict:
    return {
        "job_id": "job-9",
        "correlation_id": "corr-9",
        "transcript_bucket": aws.bucket,
        "transcript_key": KEY,
        "language": "en-US",
        "source": {"bucket": aws.bucket, "key": "uploads/a.wav"},
    }


def _read(aws, key: str) -> str:
    return aws.s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read().decode()


def test_a_transcript_becomes_paragraphs_text_and_captions(aws, lambda_context):
    # Given Transcribe's output for two sentences with a long pause between them
    aws.s3.put_object(Bucket=aws.bucket, Key=KEY, Body=json.dumps(transcribe_json(SERMON)))
    jobs_table().claim("job-9", execution_arn="arn:x", fields={})
    # When the step runs
    result = handler(_payload(aws), lambda_context)
    # Then the transcript has timed segments and paragraphs split at the pause
    doc = json.loads(_read(aws, "transcripts/job-9/transcript.json"))
    assert [s["text"] for s in doc["segments"]] == [
        "Grace and peace to you.",
        "Today we read from Psalm twenty three.",
    ]
    assert (doc["segments"][1]["start"], doc["segments"][1]["end"]) == (4.0, 6.3)
    assert len(doc["paragraphs"]) == 2
    assert _read(aws, "transcripts/job-9/transcript.txt") == (
        "Grace and peace to you.\n\nToday we read from Psalm twenty three.\n"
    )
    # And WebVTT captions with cue times
    vtt = _read(aws, "transcripts/job-9/captions.vtt")
    assert vtt.startswith("WEBVTT\n\n1\n00:00:00.000 --> 00:00:01.500\nGrace and peace to you.")
    assert "00:00:04.000 --> 00:00:06.300" in vtt
    # And the job record is completed with its outputs
    record = aws.job("job-9")
    assert record["status"] == "COMPLETED"
    assert record["outputs"] == result["outputs"]
    assert result["word_count"] == 12


def test_long_speech_is_cut_into_caption_sized_segments(aws, lambda_context):
    words = [(f"word{i}", i * 0.5, i * 0.5 + 0.4) for i in range(40)]
    aws.s3.put_object(Bucket=aws.bucket, Key=KEY, Body=json.dumps(transcribe_json(words)))
    handler(_payload(aws), lambda_context)
    doc = json.loads(_read(aws, "transcripts/job-9/transcript.json"))
    assert all(s["end"] - s["start"] <= 6.0 and len(s["text"]) <= 84 for s in doc["segments"])
    assert " ".join(s["text"] for s in doc["segments"]) == " ".join(w for w, _, _ in words)


def test_a_transcript_with_no_words_is_a_business_error(aws, lambda_context):
    aws.s3.put_object(Bucket=aws.bucket, Key=KEY, Body=json.dumps(transcribe_json([])))
    with pytest.raises(BusinessError) as err:
        handler(_payload(aws), lambda_context)
    assert err.value.code == "empty_transcript"


def test_a_missing_transcript_is_a_business_error(aws, lambda_context):
    with pytest.raises(BusinessError) as err:
        handler(_payload(aws), lambda_context)
    assert err.value.code == "missing_transcript"


def test_a_transcript_that_is_not_json_is_a_business_error(aws, lambda_context):
    aws.s3.put_object(Bucket=aws.bucket, Key=KEY, Body=b"<html>oops</html>")
    with pytest.raises(BusinessError) as err:
        handler(_payload(aws), lambda_context)
    assert err.value.code == "bad_transcript"
