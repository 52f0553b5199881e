"""One-off tasks, in process: the message, the hop chain under a TTL ceiling, the time syntax,
and the record as the tick-ledger item that a start and a cancel race for."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

import boto3
import pytest
from moto import mock_aws

from devtools.local.resources import ENV, REGION, create_coordination_table
from sluice import catalog, naming
from sluice.scheduling import oneoff as spec
from sluice.scheduling.names import Names
from sluice.scheduling.oneoff import OneOff
from sluice.scheduling.oneoff_records import OneOffRecords, key
from sluice.scheduling.overrides import Override, OverrideStore, change
from sluice.scheduling.registry import PeriodicTask, Registry
from sluice.scheduling.schedule import Every
from sluice.settings import SchedulerSettings
from sluice_cli.oneoff import OneOffError, OneOffs, parse_time
from worker.scheduler.oneoff import OneOffLedger

YEAR_MS = 365 * 86_400 * 1000


def test_a_oneoff_message_decodes_as_it_was_encoded():
    job = OneOff("abc", "report", 1.5, {"k": [1, 2]}, attempt=2, retry_at=3.25)
    assert OneOff.decode(job.encode()) == job
    assert job.at == 3.25 and job.key == 1500  # a retry is the same tick, run later


def test_waits_are_powers_of_two_up_to_the_ceiling_and_never_above_rabbitmqs():
    assert spec.waits(300) == (16, 32, 64, 128, 256)
    assert spec.waits(2**40)[-1] == 2**31 <= spec.RABBITMQ_MAX_TTL_MS
    with pytest.raises(ValueError, match="at least 16"):
        spec.waits(10)


@pytest.mark.parametrize(
    ("ceiling", "ahead_ms"),
    [(300, ms) for ms in (5, 25, 999, 60_000)]
    + [(spec.RABBITMQ_MAX_TTL_MS, ms) for ms in (5, 999, 60_000, 50 * 86_400_000, YEAR_MS)],
)
def test_the_hop_chain_ends_within_the_last_wait_before_the_due_time(ceiling, ahead_ms):
    waits = spec.waits(ceiling)
    remaining, hops = float(ahead_ms), 0
    while (hop := spec.next_hop(remaining, waits)) is not None:
        assert hop <= ceiling and hop <= remaining - spec.HOP_SLACK_MS  # never overshoots
        remaining -= hop
        hops += 1
    # what is left is waited out in the scheduler: under the shortest wait plus the slack
    assert 0 <= remaining < waits[0] + spec.HOP_SLACK_MS
    assert hops == spec.hops(ahead_ms, waits)
    if ahead_ms > spec.RABBITMQ_MAX_TTL_MS:
        assert hops > 1  # past RabbitMQ's ceiling only a chain gets there


def test_the_ceiling_setting_is_bounded_by_rabbitmqs():
    assert SchedulerSettings.of().max_ttl_ms == spec.RABBITMQ_MAX_TTL_MS
    with pytest.raises(ValueError, match="MAX_TTL_MS"):
        SchedulerSettings.of(max_ttl_ms=spec.RABBITMQ_MAX_TTL_MS + 1)


def test_an_event_tasks_oneoff_sends_the_payload_over_the_tasks_data_with_its_own_id():
    task = PeriodicTask("reindex", Every(3600), event="media/uploaded", data={"scope": "x"})
    job = OneOff("j1", "reindex", 1_800_000_000.0, {"scope": "all", "n": 1})
    event = job.event(task)
    assert event.id == "at-j1" and event.name == "media/uploaded"
    assert event.data == {"scope": "all", "n": 1, "task": "reindex", "scheduled_at": job.due_iso}
    assert job.event(task) == event  # every send of it is the same event


def test_times_are_iso_8601_in_utc_or_relative():
    now = 1_000.0
    assert parse_time("+90s", now) == 1090 and parse_time("+2h", now) == now + 7200
    assert parse_time("2027-03-03T09:00:00Z") == datetime(2027, 3, 3, 9, tzinfo=UTC).timestamp()
    assert parse_time("2027-03-03T09:00:00") == parse_time("2027-03-03T09:00:00+00:00")
    with pytest.raises(OneOffError, match="ISO 8601"):
        parse_time("tomorrow")


@pytest.fixture
def table() -> Iterator[tuple[OneOffRecords, OneOffLedger]]:
    """The coordination table as the stack makes it (moto, in process): records and ledger."""
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        name = naming.coordination_table(ENV)
        create_coordination_table(client, name)
        yield OneOffRecords(client, name, "p"), OneOffLedger(client, name, "p")


def test_a_oneoff_is_claimed_once_and_a_cancel_after_the_claim_is_refused(table) -> None:
    records, ledger = table
    job = OneOff("j1", "report", 100.0)
    assert records.create(job, 0) and not records.create(job, 0)  # an id is taken once
    claimed = ledger.claim("j1", job.key, 99_000, 10_000, "a")
    assert claimed is not None
    assert ledger.claim("j1", job.key, 99_001, 10_000, "b") is None  # a second copy
    assert not records.cancel("j1")
    assert ledger.finish("j1", claimed.fence, "done") and records.conclude(
        "j1", claimed.fence, "succeeded"
    )
    assert ledger.claim("j1", job.key, 200_000, 10_000, "c") is None  # a late redelivery
    [record] = records.all()
    assert (record.state, record.ended_as, record.pending) == ("done", "succeeded", False)


@pytest.mark.parametrize("retrying", [False, True])
def test_a_cancelled_oneoff_is_never_claimed_pending_or_waiting_to_retry(table, retrying) -> None:
    records, ledger = table
    job = OneOff("j2", "report", 100.0, {"n": 1})
    records.create(job, 0)
    if retrying:  # its first attempt failed transiently: released as `retry`
        claimed = ledger.claim("j2", job.key, 99_000, 10_000, "a")
        assert claimed is not None and ledger.finish("j2", claimed.fence, "retry")
    assert records.cancel("j2")
    assert ledger.claim("j2", job.key, 100_000, 10_000, "b") is None
    assert not records.cancel("j2")  # once
    assert [(r.oneoff, r.state) for r in records.all()] == [(job, "cancelled")]


@pytest.mark.parametrize(
    ("ceiling", "ahead_ms", "grace_s"),
    [
        (300, 2_500, 10.0),
        (4096, 8_000, 1.0),
        (spec.RABBITMQ_MAX_TTL_MS, 90_000, 10.0),
        (2**40, YEAR_MS, 10.0),
    ],
)
def test_a_oneoff_in_flight_is_never_taken_for_lost_and_few_hops_write(ceiling, ahead_ms, grace_s):
    # Given a one-off recorded at 0 (expect = 0: the run queue has it) and sent along its chain
    # as the runner sends it (each handling writes `expect` when the sweep needs it), every hop
    # taking 3 ms more than its TTL
    waits, transit = spec.waits(ceiling), 0.003
    at = ahead_ms / 1000
    now, recorded, writes, long_hops = 0.0, 0.0, 0, 0
    while (hop := spec.next_hop((at - now) * 1000, waits)) is not None:
        long_hops += hop >= spec.MARK_HOP_MS
        expect = spec.expect_after(at, now, hop, waits)
        if spec.worth_noting(expect, recorded, grace_s):
            recorded, writes = expect, writes + 1
        now += hop / 1000 + transit  # the next handling
        # Then the sweep would not take it for lost before that handling, nor before its claim
        # (its last stretch starts before `at`)
        assert now - transit <= recorded + grace_s / 2 + 1e-6 or at <= recorded + grace_s / 2
    assert recorded + grace_s / 2 >= at
    # and at most the first handling and the hops of a second or more wrote; none when it is
    # due before the sweep would look
    assert writes <= 1 + long_hops
    if ahead_ms / 1000 <= grace_s / 2:
        assert writes == 0


@pytest.mark.parametrize(
    ("ceiling", "ahead_ms", "grace_s"),
    [(4096, 2_389, 1.0), (4096, 7_000, 1.0), (spec.RABBITMQ_MAX_TTL_MS, 90_000, 10.0)],
)
def test_a_copy_the_sweep_sends_is_not_taken_for_lost_while_it_waits_out_its_first_hop(
    ceiling, ahead_ms, grace_s
):
    # Given a one-off the sweep sends again at 0, due `ahead_ms` later, on the hop the send
    # takes (every hop 3 ms more than its TTL), then handled by runners as they send it
    waits, transit = spec.waits(ceiling), 0.003
    at = ahead_ms / 1000
    recorded = spec.swept_expect(at, 0.0, waits, grace_s)
    now = 0.0
    while (hop := spec.next_hop((at - now) * 1000, waits)) is not None:
        now += hop / 1000 + transit  # the next handling
        # Then no sweep takes it for lost before that handling (lost: now > expect + grace)
        assert now <= recorded + grace_s or at <= recorded + grace_s, (now, recorded)
        expect = spec.expect_after(at, now, spec.next_hop((at - now) * 1000, waits), waits)
        if spec.worth_noting(expect, recorded, grace_s):
            recorded = expect
    assert at <= recorded + grace_s


def test_a_oneoff_may_name_a_task_added_or_paused_at_run_time_but_not_a_removed_one(table):
    # Given declared tasks `report` and `old`, and at run time `report` paused, `old` removed
    # and `nightly` added (the overrides in the table, as `sluice schedules` writes them)
    records, _ = table
    declared = Registry(
        [
            PeriodicTask("report", Every(3600), action=print),
            PeriodicTask("old", Every(60), action=print),
        ]
    )
    store = OverrideStore(records.client, records.table, "p")

    def write(name: str, op: Literal["add", "pause", "remove"], **fields: Any) -> None:
        def edit(tasks: dict[str, Override]) -> None:
            tasks[name] = change(declared, tasks, name, op, **fields)

        store.update(edit)

    write("report", "pause")
    write("old", "remove")
    write("nightly", "add", every_s=86_400.0, event=sorted(catalog.EVENTS)[0])
    oneoffs = OneOffs("amqp://unused", records.client, records.table, names=Names("p"), registry=declared)  # fmt: skip
    # Then those it may name are the running registry's (paused included)
    assert sorted(oneoffs.tasks()) == ["nightly", "report"]
    # and a removed one is refused before anything is recorded or published
    with pytest.raises(OneOffError, match="unknown task 'old'; tasks: report, nightly"):
        oneoffs.at(time.time() + 60, "old")
    assert records.all() == []


def test_the_sweep_counts_a_send_once_and_never_over_a_runner_that_saw_it(table):
    # Given a pending one-off recorded at 1 s, and one recorded before records had `expect`
    records, ledger = table
    job = OneOff("j3", "report", 100.0)
    assert records.create(job, 1_000)
    (record,) = records.all()
    assert record.oneoff.expect == 1.0 and not record.lost(10.9, 10.0) and record.lost(11.1, 10.0)
    # When the sweep sends it again, Then the record counts it and expects it later
    assert records.swept(record, 50_000)
    (after,) = records.all()
    assert (after.swept, after.oneoff.expect) == (1, 50.0) and not after.lost(59.0, 10.0)
    # and a sweep that read it before a runner noted a later time does not overwrite that
    assert records.expect("j3", 70_000)
    assert not records.swept(after, 80_000)
    # and a record without `expect` (written before it was) is swept by its creation time
    records.client.update_item(
        TableName=records.table, Key=key("p", "j3"), UpdateExpression="REMOVE expect"
    )
    (old,) = records.all()
    assert old.oneoff.expect == 1.0 and old.lost(11.1, 10.0)
    assert records.swept(old, 90_000)
    # and once claimed it is neither lost nor sweepable
    assert ledger.claim("j3", job.key, 99_000, 10_000, "a") is not None
    (claimed,) = records.all()
    assert claimed.state == "running" and not claimed.lost(1e9, 10.0)
    assert not records.swept(claimed, 99_500)
