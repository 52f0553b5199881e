"""Failed-run records against moto: newest first, windows by start time, a rewrite replaces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sluice.run_control import CancelKeys, Registered, RunRecords, cancel_scope

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def records(aws) -> RunRecords:
    return RunRecords(aws.ddb, aws.coordination)


def _record(records: RunRecords, name: str, started: datetime, **fields) -> None:
    records.record(
        workflow=fields.pop("workflow", "deliver_webhook"),
        name=name,
        arn=f"arn:aws:lambda:eu-west-1:1:function:f:live/durable-execution/{name}/x",
        status=fields.pop("status", "FAILED"),
        event={"name": "webhook/requested", "id": name, "data": {"n": 1, "none": None}},
        reason={"reason": "step_failed", "message": "boom"},
        started=started,
        ended=fields.pop("ended", started + timedelta(minutes=5)),
    )


def test_records_read_back_newest_first_per_workflow(records):
    for i in range(3):
        _record(records, f"r{i}", T0 + timedelta(hours=i))
    _record(records, "other", T0, workflow="embed_transcript")
    found = list(records.list("deliver_webhook"))
    assert [r.name for r in found] == ["r2", "r1", "r0"]
    first = found[-1]
    assert first.started == T0 and first.ended == T0 + timedelta(minutes=5)
    assert first.event == {"name": "webhook/requested", "id": "r0", "data": {"n": 1, "none": None}}
    assert first.reason == {"reason": "step_failed", "message": "boom"}
    assert [r.name for r in records.list("embed_transcript")] == ["other"]


def test_a_window_of_start_times_and_a_name_select(records):
    for i in range(4):
        _record(records, f"r{i}", T0 + timedelta(hours=i))
    window = records.list(
        "deliver_webhook", since=T0 + timedelta(minutes=30), until=T0 + timedelta(hours=2)
    )
    assert [r.name for r in window] == ["r1"]
    assert [r.name for r in records.list("deliver_webhook", name="r2")] == ["r2"]


def test_writing_a_run_again_replaces_its_record(records):
    _record(records, "r0", T0, status="FAILED")
    _record(records, "r0", T0, status="TIMED_OUT", ended=T0 + timedelta(hours=1))
    (only,) = records.list("deliver_webhook")
    assert (only.status, only.ended) == ("TIMED_OUT", T0 + timedelta(hours=1))


def test_a_page_boundary_loses_nothing(records, aws):
    for i in range(30):
        _record(records, f"r{i:02d}", T0 + timedelta(seconds=i))
    real = aws.ddb.query
    pages = []

    def small_pages(**kwargs):
        pages.append(1)
        return real(**{**kwargs, "Limit": 7})

    aws.ddb.query = small_pages
    try:
        names = [r.name for r in records.list("deliver_webhook")]
    finally:
        aws.ddb.query = real
    assert names == [f"r{i:02d}" for i in reversed(range(30))]
    assert len(pages) == 5


# -- declared cancellation: the partition both sides meet in ---------------------------------


@pytest.fixture
def keys(aws) -> CancelKeys:
    return CancelKeys(aws.ddb, aws.coordination)


SCOPE = cancel_scope("media/deleted", "data.key", "uploads/a.wav")


def _run(name: str) -> Registered:
    return Registered(
        "transcribe_audio", name, f"arn:aws:lambda:eu-west-1:1:function:f:live/x/{name}"
    )


def test_a_cancellation_finds_the_runs_registered_by_then_and_only_those(keys):
    assert keys.register(SCOPE, _run("before"), at=T0, ttl_s=60) is False
    assert keys.register(SCOPE, _run("after"), at=T0 + timedelta(seconds=2), ttl_s=60) is False
    other = cancel_scope("media/deleted", "data.key", "uploads/b.wav")
    keys.register(other, _run("elsewhere"), at=T0, ttl_s=60)
    found = keys.cancel(SCOPE, at=T0 + timedelta(seconds=1))
    assert [r.name for r in found] == ["before"]


def test_a_registration_finds_a_cancellation_received_since_and_no_earlier_one(keys):
    keys.cancel(SCOPE, at=T0 + timedelta(seconds=1))
    assert keys.register(SCOPE, _run("registered-before"), at=T0, ttl_s=60) is True
    assert keys.register(SCOPE, _run("registered-at"), at=T0 + timedelta(seconds=1), ttl_s=60)
    late = T0 + timedelta(seconds=2)
    assert keys.register(SCOPE, _run("registered-after"), at=late, ttl_s=60) is False


def test_the_latest_cancellation_stays_and_a_forgotten_run_is_not_found(keys):
    keys.cancel(SCOPE, at=T0 + timedelta(seconds=5))
    keys.cancel(SCOPE, at=T0)  # an older one delivered late does not move it back
    assert keys.register(SCOPE, _run("r"), at=T0 + timedelta(seconds=4), ttl_s=60) is True
    keys.forget(SCOPE, _run("r"))
    assert keys.cancel(SCOPE, at=T0 + timedelta(seconds=9)) == []
