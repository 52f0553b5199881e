"""Where the broker routes the scheduler's lifecycle events, against a real rabbitmq-server.

Each event routed to a queue is work for the broker on every tick (a quorum enqueue for a status
queue, an enqueue and a delivery for the reconciler's listener): the status queue keeps outcomes
only, each carrying its start's lateness, a task's successes at most one in an interval; the
listener gets only the events the reconciler uses. Every event still reaches the control exchange
(the tap sees them all)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pytest

from devtools.rabbitmq import RabbitNode
from sluice.errors import BusinessError
from sluice.scheduling.names import (
    START_LATENESS,
    STATUS_EVENTS,
    STATUS_LENGTH,
    Names,
    quiet_window_s,
)
from sluice.scheduling.registry import PeriodicTask, Registry, Tick, Token
from sluice.scheduling.schedule import Every
from sluice_cli.schedules import last_status
from tests.integration.scheduling import ControlTap, Recorder
from worker.scheduler.connection import IDLE_WAKE_S
from worker.scheduler.runner import COUNT_LANES, Reconciler, Scheduler
from worker.scheduler.topology import declare

PERIOD_S = 0.2


def status_events(rabbit: RabbitNode, queue: str) -> list[dict[str, Any]]:
    """The status queue's events, read without consuming them (closing gives them back)."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    try:
        channel = connection.channel()
        events = []
        for _ in range(STATUS_LENGTH):
            method, _props, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            events.append(json.loads(body))
        return events
    finally:
        connection.close()


def bindings_to(rabbit: RabbitNode, queue: str) -> set[str]:
    """The routing keys binding `queue` to any exchange but the default one, as the broker has
    them (rabbitmqctl list_bindings)."""
    out = rabbit.ctl("list_bindings", "source_name", "destination_name", "routing_key", "--silent")
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    return {key for source, dest, key in rows if dest == queue and source}


def test_the_status_queue_keeps_outcomes_each_with_its_start_lateness(
    rabbit: RabbitNode, names: Names, tap: ControlTap
) -> None:
    # Given a task ticking every 200 ms
    rec = Recorder()
    task = PeriodicTask("kept", Every(PERIOD_S), action=rec)
    with Scheduler(Registry([task]), rabbit.url, names=names):
        # When it has run a few ticks
        rec.wait_for(4, timeout=15)
        tap.wait_for("succeeded", task.name)
        kept = status_events(rabbit, names.status(task.name))
        shown = last_status(rabbit.url, [task.name], names)[task.name]
    # Then its status queue holds outcomes only, no starts
    assert kept, "no event in the status queue"
    assert {e["event"] for e in kept} == {"succeeded"}, kept
    # and each outcome says how late its tick started, as the start announced it
    started = {e["due"]: e["lateness_s"] for e in tap.of("started", task.name)}
    for event in kept:
        assert event[START_LATENESS] == started[event["due"]], (event, started)
    # and `sluice schedules list` shows the last outcome with that lateness
    last = kept[-1]
    assert (shown.outcome, shown.due) == ("succeeded", last["due"])
    assert shown.lateness_ms == last[START_LATENESS] * 1000
    # and every start still reached the control exchange
    assert {r.due for r in rec.completed()} <= set(started)


def test_the_status_queue_keeps_every_outcome_but_successes_at_most_every_interval(
    rabbit: RabbitNode, names: Names, tap: ControlTap, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a task ticking every 200 ms whose sixth run fails (a business error), and a status
    # queue keeping a success at most every 0.9 s (the ticks land 0.8 and 1.0 s after one)
    every = 0.9
    monkeypatch.setattr("worker.scheduler.runner.STATUS_SUCCESS_EVERY_S", every)
    rec = Recorder()

    def sixth_fails(tick: Tick) -> None:
        if len(rec.runs) == 6:
            raise BusinessError("the sixth run fails")

    rec.fail = sixth_fails
    task = PeriodicTask("digest", Every(PERIOD_S), action=rec)
    with Scheduler(Registry([task]), rabbit.url, names=names):
        # When it has run fifteen ticks
        rec.wait_for(14, timeout=20)
    outcomes = wait_quiet(lambda: outcomes_of(tap, task.name))
    kept = status_events(rabbit, names.status(task.name))
    # Then every outcome reached the control exchange, the failure among them
    assert [e["event"] for e in outcomes].count("failed") == 1, outcomes
    assert len(outcomes) >= 15, outcomes
    # and the status queue kept each outcome that was not a success, the success after it, and
    # the first success, in order
    assert kept == [e for e in outcomes if e in kept], (kept, outcomes)
    at = {e["due"]: e for e in kept}
    failed = next(i for i, e in enumerate(outcomes) if e["event"] == "failed")
    for i in (0, failed, failed + 1):
        assert outcomes[i]["due"] in at, (i, kept, outcomes)
    # and of the successes only one at least 0.9 s after the last kept outcome, none sooner
    last = None
    for event in outcomes:
        if event["due"] in at:
            if last is not None and last["event"] == event["event"] == "succeeded":
                assert event["at"] - last["at"] >= every - 0.05, (last, event)
            last = event
        else:
            assert event["event"] == "succeeded", event
            assert event["at"] - last["at"] < every + 0.05, (last, event)
    assert 3 <= len(kept) < len(outcomes), (kept, outcomes)


def outcomes_of(tap: ControlTap, task: str) -> list[dict[str, Any]]:
    """The task's outcomes (succeeded, failed) the tap has seen, in their order of sending."""
    events = [e for e in list(tap.events) if e["task"] == task]
    return [e for e in events if e["event"] in ("succeeded", "failed")]


def wait_quiet(read: Callable[[], list[Any]], quiet_s: float = 0.5) -> list[Any]:
    """What `read` returns once it has not changed for `quiet_s` (the tap has caught up)."""
    seen, since = read(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.05)
        now = read()
        if now != seen:
            seen, since = now, time.monotonic()
    return seen


def test_a_status_queue_declared_by_an_older_version_is_left_bound_by_its_status_key_alone(
    rabbit: RabbitNode, names: Names
) -> None:
    # Given a status queue declared as before: bound to each of its events' keys, `started` too
    task = PeriodicTask("upgraded", Every(PERIOD_S), action=Recorder())
    status = names.status(task.name)
    older = {f"{task.name}.{event}" for event in ("started", *STATUS_EVENTS)}
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    try:
        channel = connection.channel()
        declare(channel, names, [task])
        for key in older:
            channel.queue_bind(status, names.control_exchange, routing_key=key)
        assert older <= bindings_to(rabbit, status)
        # When this version declares the topology (a scheduler process starting)
        declare(channel, names, [task])
        # and again (a declaration is idempotent: unbinding what is not bound succeeds)
        declare(channel, names, [task])
    finally:
        connection.close()
    # Then only the events a runner sends with the status key in their BCC reach the queue
    assert bindings_to(rabbit, status) == {names.status_key(task.name)}


def test_the_reconciler_hears_tokens_and_beats_not_starts_or_outcomes(
    rabbit: RabbitNode, names: Names, tap: ControlTap
) -> None:
    # Given a scheduler whose reconciler records what its listener receives, and a task whose
    # fourth run takes 1 s: ten of its quiet windows (0.1 s), with no `started` heard
    rec = Recorder()
    rec.fail = lambda tick: time.sleep(1.0) if len(rec.runs) == 4 else None
    task = PeriodicTask("heard", Every(PERIOD_S), action=rec)
    window = quiet_window_s(task)
    scheduler = Scheduler(Registry([task]), rabbit.url, names=names)
    heard: list[tuple[float, str]] = []
    lock = threading.Lock()
    on_event = scheduler.reconciler._on_event

    def listen(ch: Any, method: Any, props: Any, body: bytes) -> None:
        with lock:
            heard.append((time.monotonic(), method.routing_key.partition(".")[2]))
        on_event(ch, method, props, body)

    scheduler.reconciler._on_event = listen  # type: ignore[method-assign]
    with scheduler:
        # When its task has run a few ticks, the long one among them
        rec.wait_for(7, timeout=15)
        tap.wait_for("succeeded", task.name)
    # Then the reconciler heard each token announced, and the long run's beats
    with lock:
        got = [event for _, event in heard]
        beats = [at for at, event in heard if event == "running"]
    assert {"seeded", "scheduled", "running"} <= set(got), got
    # at most half a window apart, so the run was never silent for the window after which a
    # token counts as lost, and it was not re-seeded
    assert len(beats) >= 1.0 / window, beats
    assert all(b - a < window for a, b in itertools.pairwise(beats)), beats
    assert not tap.of("reseeded", task.name)
    # and not the starts nor the outcomes: a run beats while it runs, and a token's
    # announcement follows its outcome on the same channel
    assert "started" not in got and "succeeded" not in got, got
    # while the control exchange carried them all
    assert len(tap.of("started", task.name)) >= 7
    assert len(tap.of("succeeded", task.name)) >= 6


def test_the_reconciler_counts_many_tasks_at_once_from_the_hatchery_else_the_processor_queue(
    rabbit: RabbitNode, names: Names
) -> None:
    # Given 5 x COUNT_LANES tasks (so every count lane asks several times): a third with their
    # token waiting in the hatchery, a third with it ready in the processor queue, a third with
    # none, and one with two tokens in its hatchery and one ready
    tasks = [
        PeriodicTask(f"c{i:02d}", Every(60), action=Recorder()) for i in range(5 * COUNT_LANES)
    ]
    reconciler = Reconciler(Registry(tasks), rabbit.url, names=names)
    reconciler._open(tasks)
    try:
        expected = {}
        for i, task in enumerate(tasks):
            if i % 3 == 0:
                reconciler.publish_token(Token(task.name, time.time() + 60))
            elif i % 3 == 1:
                reconciler.publish_token(Token(task.name, time.time() - 1))
            expected[task.name] = int(i % 3 != 2)
        both = tasks[2].name  # one of the third with no token so far
        for due in (time.time() + 60, time.time() + 60, time.time() - 1):
            reconciler.publish_token(Token(both, due))
        expected[both] = 2
        # When they are counted
        began = time.monotonic()
        counts = reconciler.inventories([task.name for task in tasks])
        took = time.monotonic() - began
        # Then each task's tokens are its hatchery's count, else its processor queue's (the two
        # are never added: asking the processor queue when the hatchery has a token is for
        # nothing, a token waits most of its period in the hatchery)
        assert counts == expected
        # as soon as the last answer is in (not when the connection's loop next wakes by itself:
        # a sweep that waited so each time was paced by that wait, not by its interval)
        assert took < IDLE_WAKE_S / 2, took
        # And a count the broker refuses (a task whose queues do not exist) fails the sweep
        # at once instead of waiting for an answer that never comes
        began = time.monotonic()
        with pytest.raises(pika.exceptions.AMQPError):
            reconciler.inventories([tasks[0].name, "never-declared"])
        assert time.monotonic() - began < 5
    finally:
        reconciler._close()
