"""The scheduler's registry without a broker: grids, cron expressions, cron.yaml and cron events."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sluice.scheduling.registry import (
    REGISTRY,
    PeriodicTask,
    Registry,
    Tick,
    Token,
    cron_event,
    cron_yaml,
)
from sluice.scheduling.schedule import Cron, Every, ScheduleError, next_due
from sluice.settings import SchedulerSettings
from tests.conftest import ROOT
from worker.scheduler.runner import Backoff


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_period_ticks_fall_on_a_grid_anchored_at_the_epoch():
    # Given a 10 s period, When asked for the tick after 12:00:03, Then it is 12:00:10
    assert Every(10).first_after(ts("2026-11-23T12:00:03")) == ts("2026-11-23T12:00:10")


def test_the_next_tick_counts_from_the_grid_not_from_the_end_of_the_run():
    # Given tick 100 ran and finished 6 s into a 10 s period
    following, missed = next_due(Every(10), 100.0, now=106.0)
    # Then the next tick is due at 110, not 116
    assert (following, missed) == (110.0, 0)


def test_an_overrun_runs_the_latest_due_tick_now_and_reports_the_skipped_ones():
    # Given tick 100 of a 10 s period finished at 135 (it overran three slots)
    following, missed = next_due(Every(10), 100.0, now=135.0)
    # Then tick 130 runs at once (late) and ticks 110 and 120 are reported missed
    assert (following, missed) == (130.0, 2)


def test_cron_expressions_fire_at_their_minutes_in_utc():
    # Given "every 15 minutes between 9 and 17 on weekdays", Then after Friday 17:50 comes Monday 9:00
    cron = Cron("*/15 9-17 * * 1-5")
    assert cron.first_after(ts("2026-11-27T17:50:00")) == ts("2026-11-30T09:00:00")


def test_cron_sunday_may_be_written_0_or_7():
    assert Cron("0 0 * * 7").first_after(ts("2026-11-23T00:00:00")) == ts("2026-11-29T00:00:00")


@pytest.mark.parametrize("expression", ["* * *", "61 * * * *", "0 0 31 2 *", "x * * * *"])
def test_impossible_cron_expressions_are_refused(expression):
    with pytest.raises(ScheduleError):
        Cron(expression)


@pytest.mark.parametrize(
    ("period", "cron"),
    [(0.1, "* * * * *"), (60, "* * * * *"), (300, "*/5 * * * *"), (3600, "0 * * * *"),
     (6 * 3600, "0 */6 * * *"), (86400, "0 0 * * *")],
)  # fmt: skip
def test_periods_map_to_minute_granularity_cron(period, cron):
    assert Every(period).cron_expression() == cron


def test_a_period_cron_cannot_express_is_refused():
    with pytest.raises(ScheduleError, match="no cron equivalent"):
        Every(7 * 60).cron_expression()


def test_a_task_sends_an_event_or_runs_a_function_not_both():
    with pytest.raises(ScheduleError, match="exactly one"):
        PeriodicTask("both", Every(60), event="media/uploaded", action=lambda tick: None)


def test_a_tick_event_has_the_same_id_for_the_same_tick():
    # Given an event task
    task = PeriodicTask("reindex", Every(60), event="media/embedding.requested", data={"k": 1})
    # When the same tick is turned into an event twice
    first, again = task.tick_event(Tick("reindex", 120.0)), task.tick_event(Tick("reindex", 120.0))
    # Then both carry the same id (the workflow starts once) and say which tick they are
    assert first.id == again.id == "tick-reindex-120000"
    assert first.name == "media/embedding.requested"
    assert first.data == {"k": 1, "task": "reindex", "scheduled_at": "1970-01-01T00:02:00.000000Z"}


def test_a_cron_post_turns_into_the_event_of_its_scheduled_minute():
    # Given a registry with an event task
    reg = Registry([PeriodicTask("reindex", Every(300), event="media/embedding.requested")])
    # When sqsd POSTs it twice for the same scheduled time (seconds differ)
    one = cron_event("reindex", "2026-11-23T10:05:00Z", registry=reg)
    two = cron_event("reindex", "2026-11-23T10:05:07Z", registry=reg)
    # Then it is one event
    assert one.id == two.id
    assert one.data["scheduled_at"] == "2026-11-23T10:05:00.000000Z"


def test_cron_yaml_lists_every_task_with_its_url_and_schedule():
    reg = Registry(
        [
            PeriodicTask("reindex", Every(300), event="media/embedding.requested"),
            PeriodicTask("nightly", Cron("30 2 * * *"), action=lambda tick: None),
        ]
    )
    assert cron_yaml(reg) == (
        "version: 1\ncron:\n"
        '  - name: "reindex"\n    url: "/cron/reindex"\n    schedule: "*/5 * * * *"\n'
        '  - name: "nightly"\n    url: "/cron/nightly"\n    schedule: "30 2 * * *"\n'
    )


def test_the_shipped_cron_yaml_is_what_the_registry_generates():
    # `python -m worker.scheduler --cron-yaml > worker/cron.yaml` regenerates it
    assert (ROOT / "worker" / "cron.yaml").read_text() == cron_yaml(REGISTRY)


def test_task_names_are_unique():
    with pytest.raises(ScheduleError, match="twice"):
        Registry(
            [PeriodicTask("a", Every(1), action=print), PeriodicTask("a", Every(2), action=print)]
        )


def test_a_token_carries_its_retry_count_and_redrive_flag_through_the_broker() -> None:
    first = Token("t", 1.5)
    assert first.encode() == b'{"v":1,"task":"t","due":1.5}'  # what earlier versions publish
    for token in (first, Token("t", 1.5, attempt=3), Token("t", 1.5, redrive=True)):
        assert Token.decode(token.encode()) == token
    for junk in (b"", b"[]", b'{"task":"t"}', b'{"task":"t","due":"x"}'):
        with pytest.raises(ValueError, match="not a token"):
            Token.decode(junk)


def test_retries_back_off_from_the_settings() -> None:
    backoff = Backoff.of(SchedulerSettings.of(retry_delay_s=2, retry_backoff=3))
    assert [backoff.delay_s(n) for n in (2, 3, 4)] == [2, 6, 18]
    assert Backoff().delay_s(2) == 5.0  # the default: the settings' default
