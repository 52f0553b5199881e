"""S3 locations in every spelling the pipeline meets, and the object calls (moto's S3)."""

from __future__ import annotations

import io

import pytest

from adapters.s3 import S3Location, Storage, location
from sluice.errors import BusinessError, TransientError
from tests.adapters.test_errors import client_error


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("s3://media/uploads/a b%20.mp3", S3Location("media", "uploads/a b%20.mp3")),
        (
            "https://s3.eu-west-1.amazonaws.com/media/tmp/transcribe/job%201.json",
            S3Location("media", "tmp/transcribe/job 1.json"),
        ),
        (
            "https://media.s3.eu-west-1.amazonaws.com/tmp/job.json",
            S3Location("media", "tmp/job.json"),
        ),
        ({"bucket": "media", "key": "uploads/a.mp3"}, S3Location("media", "uploads/a.mp3")),
        (
            {"bucket": "media", "key": "uploads/a.mp3", "version_id": "v1"},
            S3Location("media", "uploads/a.mp3", "v1"),
        ),
    ],
)
def test_a_location_is_read_from_a_uri_a_url_or_a_mapping(spec, expected):
    assert location(spec, what="source", code="bad_task") == expected


def test_an_output_prefix_is_read_from_its_own_field():
    got = location({"bucket": "m", "prefix": "hls/1/"}, what="output", code="bad", field="prefix")
    assert got == S3Location("m", "hls/1/")


@pytest.mark.parametrize(
    "spec",
    [
        None,
        "s3://bucket-only",
        "s3:///key",
        "https://example.com/b/k",
        {"bucket": "m"},
        {"bucket": "", "key": "k"},
        {"bucket": "m", "key": 3},
    ],
)
def test_anything_else_is_a_business_error_with_the_callers_reason(spec):
    with pytest.raises(BusinessError) as err:
        location(spec, what="transcript", code="bad_transcript_uri")
    assert err.value.code == "bad_transcript_uri"


def test_a_location_and_its_dict():
    loc = S3Location("m", "k", "v")
    assert (loc.uri, loc.to_dict()) == ("s3://m/k", {"bucket": "m", "key": "k", "version_id": "v"})
    assert S3Location("m", "k").to_dict() == {"bucket": "m", "key": "k"}


def test_reads_puts_and_ranges(aws):
    store = Storage(aws.s3)
    where = S3Location(aws.bucket, "uploads/a.bin")
    store.put(where, b"0123456789", "application/octet-stream")
    assert store.read(where) == b"0123456789"
    assert store.head(where)["ContentLength"] == 10
    reader = store.reader(where, 10)
    buffered = io.BufferedReader(reader, buffer_size=4)
    buffered.seek(6)
    assert buffered.read(2) == b"67"
    assert reader.bytes_read < 10


def test_an_object_over_the_limit_is_refused_unread_and_a_missing_one_named(aws):
    store = Storage(aws.s3)
    where = S3Location(aws.bucket, "big.bin")
    store.put(where, b"x" * 100, "application/octet-stream")
    with pytest.raises(BusinessError) as err:
        store.read(where, max_bytes=10)
    assert err.value.code == "oversize"
    with pytest.raises(BusinessError) as err:
        store.read(S3Location(aws.bucket, "none.bin"), max_bytes=10, missing="missing_audio")
    assert (err.value.code, str(err.value)) == (
        "missing_audio",
        f"s3://{aws.bucket}/none.bin does not exist",
    )


def test_a_throttled_call_is_transient_whichever_method_made_it():
    class Throttled:
        def get_object(self, **_):
            raise client_error("SlowDown", 503, "GetObject")

    with pytest.raises(TransientError):
        Storage(Throttled()).read_range(S3Location("b", "k"), 0, 9)
