"""One-off tasks, in process: the message, the hop chain under a TTL ceiling, the time syntax."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sluice.scheduling import oneoff as spec
from sluice.scheduling.oneoff import OneOff
from sluice.scheduling.registry import PeriodicTask
from sluice.scheduling.schedule import Every
from sluice.settings import SchedulerSettings
from sluice_cli.oneoff import OneOffError, parse_time

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
