"""The event and task envelopes: one definition, strict validation, stable ids and names."""

from __future__ import annotations

import json
import re

import pytest

from sluice import envelope
from sluice.envelope import Event, Task, execution_name, parse_events, parse_task
from sluice.errors import BusinessError, PoisonMessage, TransientError


def _body(**overrides) -> bytes:
    doc = {
        "v": 1,
        "kind": "event",
        "id": "01JD3ABCDEF",
        "name": "media/transcription.requested",
        "ts": "2026-11-23T10:00:00Z",
        "data": {"bucket": "b", "key": "uploads/sermon.mp3"},
        "correlation_id": "01JD3ABCDEF",
    }
    doc.update(overrides)
    return json.dumps(doc).encode()


def test_a_valid_envelope_round_trips():
    (event,) = parse_events(_body())
    assert event.name == "media/transcription.requested"
    assert event.data == {"bucket": "b", "key": "uploads/sermon.mp3"}
    assert parse_events(event.to_json().encode()) == [event]


def test_correlation_id_defaults_to_the_event_id():
    event = Event(name="media/uploaded", data={})
    assert event.correlation_id == event.id


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", envelope.MALFORMED_JSON),
        (b"\xff\xfe{}", envelope.INVALID_UTF8),
        (b"[1, 2]", envelope.SCHEMA_VIOLATION),
        (_body(v=2), envelope.SCHEMA_VIOLATION),
        (_body(kind="task"), envelope.SCHEMA_VIOLATION),
        (_body(id=""), envelope.SCHEMA_VIOLATION),
        (_body(id="has space"), envelope.SCHEMA_VIOLATION),
        (_body(name="NoSlash"), envelope.SCHEMA_VIOLATION),
        (_body(ts="yesterday"), envelope.SCHEMA_VIOLATION),
        (_body(ts="2026-11-23T10:00:00"), envelope.SCHEMA_VIOLATION),
        (_body(data=[1]), envelope.SCHEMA_VIOLATION),
        (_body(extra=1), envelope.SCHEMA_VIOLATION),
        (b" " * (envelope.MAX_BODY_BYTES + 1), envelope.OVERSIZE),
    ],
)
def test_bad_bodies_are_poison_with_a_reason(body, reason):
    with pytest.raises(PoisonMessage) as err:
        parse_events(body)
    assert err.value.code == reason
    assert err.value.error_class == "business"


def test_execution_name_keeps_a_valid_id_and_hashes_any_other():
    assert execution_name("01JD3ABC_def-9") == "01JD3ABC_def-9"
    long_id = "x" * 100
    for raw in ("a/b:c", long_id, "a.b"):
        name = execution_name(raw)
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name), name
        assert execution_name(raw) == name  # deterministic
    assert execution_name("a.b") != execution_name("a:b")  # distinct ids never share a name
    assert execution_name("x" * 65) != execution_name("x" * 66)


def _s3_record(key="uploads/My+Sermon.mp3", version="v1", event="ObjectCreated:Put"):
    return {
        "eventSource": "aws:s3",
        "eventName": event,
        "eventTime": "2026-11-23T10:00:00.000Z",
        "s3": {
            "bucket": {"name": "media"},
            "object": {"key": key, "size": 10, "eTag": "e1", "versionId": version},
        },
    }


def test_s3_object_created_becomes_media_uploaded_with_a_stable_id():
    body = json.dumps({"Records": [_s3_record()]}).encode()
    (event,) = parse_events(body)
    assert event.name == "media/uploaded"
    assert event.data["bucket"] == "media"
    assert event.data["key"] == "uploads/My Sermon.mp3"  # S3 url-encodes keys in notifications
    assert parse_events(body)[0].id == event.id  # redelivery: same id
    other_version = json.dumps({"Records": [_s3_record(version="v2")]}).encode()
    assert parse_events(other_version)[0].id != event.id  # a new upload: a new job


def test_s3_test_event_and_deletions_start_nothing():
    assert parse_events(json.dumps({"Event": "s3:TestEvent", "Bucket": "media"}).encode()) == []
    deleted = json.dumps({"Records": [_s3_record(event="ObjectRemoved:Delete")]}).encode()
    assert parse_events(deleted) == []


def test_task_envelope_round_trips_and_requires_a_callback():
    task = Task(name="media/transcode", callback_id="cb-1", data={"k": 1}, correlation_id="c1")
    assert parse_task(task.to_json().encode()) == task
    bad = json.dumps({**task.to_dict(), "callback_id": ""}).encode()
    with pytest.raises(PoisonMessage):
        parse_task(bad)


def test_error_classes():
    assert TransientError("slow").error_class == "transient"
    assert BusinessError("bad", code="missing_object").to_dict() == {
        "error_class": "business",
        "code": "missing_object",
        "message": "bad",
    }
