"""Delayed retries and the dead-letter queue against a real rabbitmq-server: a tick that fails
transiently is retried after its backoff through the task's hatchery, dead-lettered with its
reason after the limit, shown by `sluice schedules dlq peek` and run again by `… redrive`."""

from __future__ import annotations

import itertools
import sys
import time

import pika
import pytest
from click.testing import CliRunner

import sluice_cli  # noqa: F401 - loads sluice_cli.schedules
from devtools.rabbitmq import RabbitNode
from sluice.errors import TransientError
from sluice.scheduling.names import Names
from sluice.scheduling.registry import PeriodicTask, Registry, Tick
from sluice.scheduling.schedule import Every
from sluice.settings import SchedulerSettings
from tests.integration.scheduling import ControlTap, Recorder
from worker.scheduler.__main__ import build

cli_schedules = sys.modules["sluice_cli.schedules"]
FIRST_S, FACTOR = 0.3, 2.0  # retries after 0.3 s, then 0.6 s
# How much later than its backoff a retry may start: TTL expiry, dead-lettering, delivery.
SLACK_S = 0.25


def dead_letters(rabbit: RabbitNode, names: Names, expect: int) -> list[tuple[dict, bytes]]:
    """The dead queue's messages (headers, body), read and given back, once `expect` are ready
    (a message given back on another channel's close is ready again a moment later)."""
    deadline = time.monotonic() + 5
    while True:
        conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
        try:
            ch = conn.channel()
            found = []
            while True:
                method, props, body = ch.basic_get(names.dead_queue, auto_ack=False)
                if method is None:
                    break
                found.append((dict(props.headers or {}), body))
        finally:
            conn.close()  # unacknowledged: all go back
        if len(found) == expect or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    while ready(rabbit, names.dead_queue) != len(found) and time.monotonic() < deadline:
        time.sleep(0.02)  # given back: ready for whatever reads next
    return found


def ready(rabbit: RabbitNode, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def cli(*args: str, input: str | None = None):
    return CliRunner().invoke(cli_schedules.schedules, list(args), input=input)


def test_a_failing_tick_is_retried_after_its_backoff_dead_lettered_peeked_and_redriven(
    rabbit: RabbitNode, names: Names, tap: ControlTap, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a task whose ticks fail transiently until told otherwise, 3 attempts a tick, and
    # retries after 0.3 s then 0.6 s (the scheduler's settings, as its process reads them)
    failing = [True]

    def flaky(tick: Tick) -> None:
        if failing[0]:
            raise TransientError("upstream 503")

    rec = Recorder(fail=flaky)
    # Every 4 s: a retry waits at most half the time left to the next tick, which at 2 s cut the
    # second retry to 0.44 s when a loaded CI machine started the first attempt 0.7 s late.
    task = PeriodicTask("flaky", Every(4), action=rec, max_attempts=3)
    registry = Registry([task])
    settings = SchedulerSettings.of(retry_delay_s=FIRST_S, retry_backoff=FACTOR)
    with build(registry, rabbit.url, settings, names=names) as scheduler:
        # When its first tick has failed on every attempt
        dead = tap.wait_for("dead_lettered", "flaky", timeout=15)
        time.sleep(0.05)  # the status queue has the event too
        figures = {f.name: f.value for f in scheduler.lifecycle.drain()}
    due = dead["due"]
    attempts = [r.started for r in rec.runs if r.due == due]
    # Then it ran 3 times, each retry after its backoff and not much later
    assert len(attempts) == 3, attempts
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    print(f"\nretry gaps (s): {[round(g, 3) for g in gaps]}")
    for gap, backoff in zip(gaps, (FIRST_S, FIRST_S * FACTOR), strict=True):
        assert backoff <= gap < backoff + SLACK_S, gaps
    failed = tap.of("failed", "flaky")
    retry_in = [e.get("retry_in_s") for e in failed if e["due"] == due]
    assert retry_in == [FIRST_S, FIRST_S * FACTOR, None]  # the last attempt is not retried
    # and it was dead-lettered with its reason, in the event and on the broker
    assert dead["attempts"] == 3 and dead["reason"] == "retry-limit"
    [(headers, _)] = [(h, b) for h, b in dead_letters(rabbit, names, 1) if h.get("task") == "flaky"]
    assert headers["reason"] == "retry-limit" and headers["attempts"] == 3
    assert "upstream 503" in headers["error"]

    # and its lifecycle events were counted for the metrics (per task)
    assert figures["TicksStarted"] >= 3 and figures["TicksFailed"] >= 3
    assert figures["TicksDeadLettered"] == 1 and figures["TickLatenessMs"] >= 0

    # When an operator lists the tasks
    monkeypatch.setattr(cli_schedules, "_registry", lambda: registry)
    args = ["--broker-url", rabbit.url, "--prefix", names.prefix]
    listed = cli("list", *args)
    # Then the task's last outcome is the dead-lettered tick, with its last start's lateness
    assert listed.exit_code == 0, listed.output
    [line] = [x for x in listed.output.splitlines() if x.startswith("flaky")]
    assert "dead_lettered" in line and " ms " in line, listed.output

    # When an operator peeks at the dead-letter queue
    peeked = cli("dlq", "peek", *args)
    # Then the tick is shown with its reason, and nothing is consumed
    assert peeked.exit_code == 0, peeked.output
    assert "1 dead-lettered tick(s)" in peeked.output
    assert "flaky" in peeked.output and "retry-limit" in peeked.output
    assert len(dead_letters(rabbit, names, 1)) == 1

    # When the cause is fixed and the operator redrives it (answering no first, then yes)
    failing[0] = False
    refused = cli("dlq", "redrive", *args, input="n\n")
    assert "nothing redriven" in refused.output and len(dead_letters(rabbit, names, 1)) == 1
    with build(registry, rabbit.url, settings, names=names):
        redriven = cli("dlq", "redrive", *args, input="y\n")
        assert redriven.exit_code == 0, redriven.output
        assert "redriven: 1" in redriven.output
        # Then that very tick runs once more and succeeds, and the queue is empty
        deadline = time.monotonic() + 10
        while not any(e["due"] == due for e in tap.of("succeeded", "flaky")):
            assert time.monotonic() < deadline, "the redriven tick did not run"
            time.sleep(0.02)
    assert len([r for r in rec.runs if r.due == due]) == 4
    assert dead_letters(rabbit, names, 0) == []
