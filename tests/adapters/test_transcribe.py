"""Transcribe's output document, parsed once for the step and the embedder; its job states."""

from __future__ import annotations

import json

import pytest

from adapters import transcribe
from adapters.s3 import S3Location
from sluice.errors import BusinessError
from tests.lambdas.conftest import SERMON, transcribe_json


def test_words_carry_their_times_and_punctuation_joins_the_word_before():
    words = transcribe.words(transcribe_json(SERMON))
    assert [w.text for w in words][:5] == ["Grace", "and", "peace", "to", "you."]
    assert (words[5].text, words[5].start, words[5].end) == ("Today", 4.0, 4.4)
    assert words[-1].text == "three."


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        ({"segments": []}, "bad_transcript"),
        ({"results": {"items": [{"type": "pronunciation", "alternatives": []}]}}, "bad_transcript"),
        ({"results": {"items": ["x"]}}, "bad_transcript"),
        (transcribe_json([]), "empty_transcript"),
        (transcribe_json([(".", 0, 0)]), "empty_transcript"),
    ],
)
def test_a_document_that_is_not_transcribes_output_or_has_no_words_is_a_business_error(doc, code):
    with pytest.raises(BusinessError) as err:
        transcribe.words(doc)
    assert err.value.code == code


def test_a_document_that_is_not_json_is_a_business_error():
    assert transcribe.document(json.dumps({"a": 1}).encode()) == {"a": 1}
    with pytest.raises(BusinessError) as err:
        transcribe.document(b"\xff\xfe not json")
    assert err.value.code == "bad_transcript"


def test_a_completed_job_says_where_its_transcript_is():
    job = transcribe.Job.of(
        {
            "TranscriptionJobName": "sluice-j",
            "TranscriptionJobStatus": "COMPLETED",
            "LanguageCode": "en-US",
            "Transcript": {
                "TranscriptFileUri": "https://s3.eu-west-1.amazonaws.com/m/tmp/transcribe/j.json"
            },
        }
    )
    assert (job.status, job.transcript, job.language) == (
        "COMPLETED",
        S3Location("m", "tmp/transcribe/j.json"),
        "en-US",
    )
    assert transcribe.Job.of({"TranscriptionJobName": "n"}).status == "QUEUED"
