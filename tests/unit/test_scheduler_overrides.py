"""Runtime overrides of the registry in code: the effective registry, the checks that name the
field at fault, and their store in the coordination table (moto)."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from devtools.local.resources import ENV, REGION, create_coordination_table
from sluice import catalog, naming
from sluice.scheduling.overrides import (
    Override,
    OverrideError,
    OverrideStore,
    change,
    effective,
    parse_data,
    parse_period,
)
from sluice.scheduling.registry import PeriodicTask, Registry, Tick, Token
from sluice.scheduling.schedule import Cron, Every, ScheduleError

EVENT = sorted(catalog.EVENTS)[0]  # an event the events queue takes


def _noop(tick: Tick) -> None:
    del tick


DECLARED = Registry(
    [
        PeriodicTask("beat", Every(60), action=_noop),
        PeriodicTask("sweep", Every(300), event=EVENT, data={"k": 1}),
    ]
)


def apply(current: dict[str, Override], name: str, op: str, **fields) -> dict[str, Override]:
    return {**current, name: change(DECLARED, current, name, op, **fields)}  # type: ignore[arg-type]


def by_name(overrides: dict[str, Override]):
    return {e.task.name: e for e in effective(DECLARED, overrides)}


def test_without_overrides_the_declared_tasks_run_as_declared():
    entries = by_name({})
    assert [(n, e.origin, e.state) for n, e in entries.items()] == [
        ("beat", "declared", "active"),
        ("sweep", "declared", "active"),
    ]


def test_an_added_task_runs_its_event_on_its_schedule_in_its_group():
    # When an operator adds a task
    current = apply(
        {}, "nightly", "add", cron="0 3 * * *", event=EVENT, data={"a": 2}, group="tasks"
    )
    # Then it runs beside the declared ones, marked added, on its own schedule and group
    entry = by_name(current)["nightly"]
    assert (entry.origin, entry.state, entry.gen) == ("added", "active", 1)
    assert entry.task.schedule == Cron("0 3 * * *") and entry.task.group == "tasks"
    assert entry.task.tick_event(Tick("nightly", 0.0)).data["a"] == 2


def test_set_overrides_a_declared_task_and_a_new_period_starts_a_new_generation():
    current = apply({}, "sweep", "set", every_s=0.2)
    entry = by_name(current)["sweep"]
    assert entry.origin == "overridden" and entry.task.schedule == Every(0.2) and entry.gen == 1
    # A payload change keeps the schedule's generation (its token stays valid)
    current = apply(current, "sweep", "set", data={"k": 9})
    entry = by_name(current)["sweep"]
    assert entry.gen == 1 and entry.task.data == {"k": 9} and entry.task.schedule == Every(0.2)


def test_pause_and_resume_keep_the_task_and_its_generation():
    current = apply({}, "beat", "pause")
    assert (by_name(current)["beat"].state, by_name(current)["beat"].active) == ("paused", False)
    current = apply(current, "beat", "resume")
    assert by_name(current)["beat"].state == "active" and by_name(current)["beat"].gen == 0


def test_removing_a_declared_task_disables_it_and_add_brings_it_back_as_declared():
    current = apply({}, "beat", "remove")
    entry = by_name(current)["beat"]
    assert (entry.state, entry.disabled) == ("removed (disabled)", True)
    # A removed task is unknown to every change but `add`
    with pytest.raises(OverrideError, match="unknown task 'beat'") as caught:
        apply(current, "beat", "pause")
    assert caught.value.field == "task"
    current = apply(current, "beat", "add")
    assert by_name(current)["beat"].state == "active"
    assert by_name(current)["beat"].task == DECLARED.get("beat")


def test_an_added_task_removed_and_added_again_gets_a_newer_generation():
    current = apply({}, "extra", "add", every_s=1.0, event=EVENT)
    current = apply(current, "extra", "remove")
    assert by_name(current)["extra"].disabled
    current = apply(current, "extra", "add", every_s=2.0, event=EVENT)
    assert by_name(current)["extra"].gen == 2 and by_name(current)["extra"].active


@pytest.mark.parametrize(
    ("name", "op", "fields", "field", "message"),
    [
        ("nosuch", "pause", {}, "task", "unknown task 'nosuch'"),
        ("beat", "add", {"every_s": 1.0, "event": EVENT}, "task", "task beat exists"),
        ("new", "add", {"event": EVENT}, "period", "needs a period or a cron"),
        ("new", "add", {"every_s": 1.0}, "event", "needs the event"),
        ("new", "add", {"every_s": 1.0, "event": "no/such.event"}, "event", "not an event"),
        ("new", "add", {"cron": "61 * * * *", "event": EVENT}, "cron", "cron"),
        ("Bad Name", "add", {"every_s": 1.0, "event": EVENT}, "task", "task name"),
        ("beat", "set", {"data": {"x": 1}}, "data", r"runs _noop\(\): no payload"),
        ("sweep", "set", {"group": "gpu"}, "group", "'gpu' is not a consumer group"),
        ("sweep", "set", {"every_s": -1.0}, "period", "positive"),
        ("sweep", "set", {}, "task", "nothing to change"),
        ("sweep", "set", {"overlap": "queue"}, "overlap", "'queue' is not one of skip, allow"),
        ("beat", "set", {"overlap": "allow"}, "overlap", "applies to event tasks only"),
    ],
)
def test_a_bad_change_is_refused_naming_the_field(name, op, fields, field, message):
    with pytest.raises(OverrideError, match=message) as caught:
        change(DECLARED, {}, name, op, **fields)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("text", "seconds"), [("250ms", 0.25), ("30s", 30), ("5m", 300), ("1h", 3600), ("2", 2)]
)
def test_periods_are_read_with_their_unit(text, seconds):
    assert parse_period(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5s", "fast", "5 parsecs", "nan"])
def test_a_bad_period_names_the_field(text):
    with pytest.raises(OverrideError, match=r"^period: ") as caught:
        parse_period(text)
    assert caught.value.field == "period"


@pytest.mark.parametrize(("text", "why"), [("{", "not JSON"), ("[1]", "JSON object")])
def test_bad_data_names_the_field(text, why):
    with pytest.raises(OverrideError, match=f"^data: .*{why}"):
        parse_data(text)


def test_a_task_group_outside_the_declared_groups_is_refused():
    with pytest.raises(ScheduleError, match="group must be one of scheduler, tasks, got 'gpu'"):
        PeriodicTask("x", Every(1), action=_noop, group="gpu")


def test_a_token_carries_its_schedule_generation_and_old_tokens_read_as_generation_zero():
    assert Token.decode(Token("t", 1.5, gen=3).encode()) == Token("t", 1.5, gen=3)
    assert Token.decode(b'{"v":1,"task":"t","due":1.5}').gen == 0


@pytest.fixture
def store() -> Iterator[OverrideStore]:
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        table = naming.coordination_table(ENV)
        create_coordination_table(ddb, table)
        yield OverrideStore(ddb, table, "sluice.sched")


def test_the_store_keeps_every_change_with_a_version(store: OverrideStore):
    assert store.read().version == 0 and not store.read().tasks
    store.update(lambda t: t.update(beat=change(DECLARED, t, "beat", "pause")))
    written = store.update(
        lambda t: t.update(sweep=change(DECLARED, t, "sweep", "set", every_s=2.0))
    )
    again = store.read()
    assert again.version == written.version == 2
    assert again.tasks == {"beat": Override(paused=True), "sweep": Override(every_s=2.0, gen=1)}


def test_a_write_that_raced_another_is_retried_on_the_newer_overrides(store: OverrideStore):
    # Given an operator whose change reads the overrides, then another operator writes first
    raced = []

    def slow(tasks):
        if not raced:
            raced.append(1)
            store.update(lambda t: t.update(beat=change(DECLARED, t, "beat", "pause")))
        tasks["sweep"] = change(DECLARED, tasks, "sweep", "pause")

    store.update(slow)
    # Then both changes are kept (no lost update)
    assert set(store.read().tasks) == {"beat", "sweep"}
    assert store.read().version == 2


def test_a_scheduler_process_runs_only_its_groups_tasks_and_follows_the_runtime_registry():
    from worker.scheduler.runner import Scheduler

    # Given a light and a heavy declared task, and a process of each group (never started)
    declared = Registry(
        [
            PeriodicTask("light", Every(1), action=_noop),
            PeriodicTask("heavy", Every(1), action=_noop, group="tasks"),
        ]
    )
    light = Scheduler(declared, "amqp://unused/", group="scheduler")
    heavy = Scheduler(declared, "amqp://unused/", group="tasks")
    assert [r.task.name for r in light.runners] == ["light"]
    assert [r.task.name for r in heavy.runners] == ["heavy"]
    # When the heavy task moves to group scheduler and light is paused
    current = {
        "heavy": change(declared, {}, "heavy", "set", group="scheduler"),
        "light": change(declared, {}, "light", "pause"),
    }
    for process in (light, heavy):
        process.apply(effective(declared, current))
    # Then the scheduler process runs both (light paused), the tasks process none
    assert {r.task.name: r.paused for r in light.runners} == {"light": True, "heavy": False}
    assert next(r for r in light.runners if r.task.name == "heavy").gen == 1
    assert heavy.runners == []


def test_a_process_of_an_unknown_group_is_refused():
    from worker.scheduler.runner import Scheduler

    with pytest.raises(ValueError, match="group must be one of scheduler, tasks, got 'gpu'"):
        Scheduler(DECLARED, "amqp://unused/", group="gpu")


def test_overlap_is_set_at_run_time_for_an_added_or_a_declared_event_task():
    # Given an added task that allows overlapping runs, and the declared event task set to allow
    current = apply({}, "extra", "add", every_s=1.0, event=EVENT, overlap="allow")
    current = apply(current, "sweep", "set", overlap="allow")
    # Then both run so, and the stored document keeps it
    assert by_name(current)["extra"].task.overlap == "allow"
    assert by_name(current)["sweep"].task.overlap == "allow"
    assert Override.from_doc(current["sweep"].to_doc()).overlap == "allow"
    # and without the setting an added task skips overlapping ticks (the default)
    assert by_name(apply({}, "plain", "add", every_s=1.0, event=EVENT))["plain"].task.overlap == (
        "skip"
    )
