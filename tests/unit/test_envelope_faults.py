"""Issue 12's envelope faults: ids with a trailing newline, JSON the decoder cannot carry (deep,
huge integers, NaN), `"v": true`, an empty S3 record list, execution-name collisions, and the
start payload that must not change between re-sends of one event."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice import envelope
from sluice.envelope import Event, execution_name, parse_events
from sluice.errors import PoisonMessage

DOC = {
    "v": 1,
    "kind": "event",
    "id": "evt-1",
    "name": "media/transcription.requested",
    "ts": "2026-11-23T10:00:00Z",
    "data": {"bucket": "b", "key": "uploads/sermon.mp3"},
    "correlation_id": "evt-1",
}


def body(**overrides: object) -> bytes:
    return json.dumps({**DOC, **overrides}).encode()


def reason(raw: bytes) -> str:
    with pytest.raises(PoisonMessage) as caught:
        parse_events(raw)
    return caught.value.code


# --- fault 3: `$` matches before a final newline -----------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"id": "evt-1\n"},
        {"correlation_id": "evt-1\n"},
        {"name": "media/transcription.requested\n"},
    ],
)
def test_a_trailing_newline_is_a_schema_violation(overrides):
    assert reason(body(**overrides)) == envelope.SCHEMA_VIOLATION


def test_an_event_object_refuses_a_trailing_newline_in_its_id():
    # the producer and the CLI build Event objects: the same check
    with pytest.raises(PoisonMessage):
        Event(name="media/uploaded", data={}, id="evt-1\n")


# --- fault 5: JSON the worker cannot carry is poison, not a 503 loop ------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"data": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",  # RecursionError in json
        b'{"data": {"n": ' + b"7" * 5_000 + b"}}",  # ValueError: int digit limit
        body(data={"x": float("nan")}),  # json.dumps writes NaN; json.loads reads it back
        b'{"data": {"x": Infinity}}',
        b'{"data": {"x": -Infinity}}',
        b'{"data": {"x": 1e400}}',  # a float literal that overflows to inf
    ],
    ids=["deep", "huge_int", "nan", "infinity", "minus_infinity", "overflowing_float"],
)
def test_json_python_cannot_carry_is_malformed_json(raw):
    assert reason(raw) == envelope.MALFORMED_JSON


def test_nesting_below_the_decoders_limit_but_above_ours_is_malformed_json():
    # 500 levels decode, but re-encoding them on a deep stack (gunicorn's thread) could not
    deep = b'{"data": {"x": ' + b"[" * 500 + b"]" * 500 + b"}}"
    assert reason(deep) == envelope.MALFORMED_JSON


# --- fault 7: smaller ones ----------------------------------------------------------------------


def test_true_is_not_version_1():
    assert reason(body(v=True)) == envelope.SCHEMA_VIOLATION


def test_an_s3_notification_without_records_is_a_schema_violation():
    assert reason(b'{"Records": []}') == envelope.SCHEMA_VIOLATION


def test_a_crafted_id_cannot_take_another_ids_execution_name():
    # "a!" is hashed; an id spelled like its derived name must not be used as is
    victim = "a!"
    assert execution_name(victim) != victim
    assert execution_name(execution_name(victim)) != execution_name(victim)


IDS = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=128
)


@settings(max_examples=500, deadline=None)
@given(st.lists(IDS, min_size=2, max_size=6, unique=True))
def test_distinct_ids_never_share_an_execution_name(ids):
    # each id, plus the derived names spelled as ids (the crafted case)
    candidates = set(ids) | {execution_name(i) for i in ids}
    names = {execution_name(i) for i in candidates}
    assert len(names) == len(candidates)
    assert all(envelope._EXECUTION_NAME.fullmatch(n) for n in names)


# --- fault 6: one payload per event, whatever its timestamp -----------------------------------


def test_the_start_payload_ignores_the_timestamp_of_a_re_send():
    first = Event(name="media/uploaded", data={"k": 1}, id="tick-x-1", ts="2026-11-23T10:00:00Z")
    again = Event(name="media/uploaded", data={"k": 1}, id="tick-x-1", ts="2026-11-23T10:05:00Z")
    assert first.start_payload() == again.start_payload()


def test_the_start_payload_differs_when_the_business_data_does():
    first = Event(name="media/uploaded", data={"k": 1}, id="tick-x-1")
    other = Event(name="media/uploaded", data={"k": 2}, id="tick-x-1")
    assert first.start_payload() != other.start_payload()
