"""A scheduler part's connection loop survives every way the broker can be unavailable."""

from __future__ import annotations

import threading

import pika
import pytest
from botocore.exceptions import ClientError
from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout

import worker.scheduler.control as control
import worker.scheduler.runner as runner
from sluice.scheduling.names import Names
from sluice.scheduling.registry import PeriodicTask, Registry
from sluice.scheduling.schedule import Every

TASK = PeriodicTask("report", Every(1.0), action=lambda tick: None)


def test_a_runner_whose_connection_times_out_in_the_handshake_retries_and_lives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a broker too busy to finish the AMQP handshake in time (pika raises its connector's
    # own timeout, which is no AMQPConnectionError: seen with a thousand runners starting at once)
    stop = threading.Event()
    attempts = []

    def connect(url: str, heartbeat_s: int) -> None:
        attempts.append(url)
        if len(attempts) >= 2:
            stop.set()
        raise AMQPConnectorStackTimeout("Timeout during AMQP handshake")

    monkeypatch.setattr(runner, "_connect", connect)
    task_runner = runner.TaskRunner(TASK, "amqp://busy", names=Names())
    # When its runner starts, Then it backs off and tries again rather than its thread dying
    task_runner.serve(stop)
    assert len(attempts) == 2


class _Stop(threading.Event):
    """A stop event that records how long each wait would have been, without waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return self.is_set()


def test_the_scheduler_loops_reconnect_with_backoff_reset_once_connected_and_wait_out_the_table():
    # Given a session that fails on the broker twice, connects and fails again, then fails on
    # the table, then is stopped
    closed = []
    broker_down = pika.exceptions.AMQPConnectionError("gone")
    table_down = ClientError({"Error": {"Code": "ProvisionedThroughputExceededException"}}, "Query")
    stop = _Stop()
    calls = iter(range(5))

    def session(stop_: threading.Event, connected) -> None:
        n = next(calls)
        if n == 2:
            connected()
        if n < 3:
            raise broker_down
        if n == 3:
            raise table_down
        stop_.set()

    runner.reconnecting(stop, "test", session, lambda: closed.append(1), ledger_wait_s=7.0)
    # Then it backed off 0.2, 0.4 s, from 0.2 s again once connected, waited out the table,
    # and closed the connection after every session
    assert stop.waits == [0.2, 0.4, 0.2, 7.0]
    assert len(closed) == 5


def test_a_reconciler_whose_publish_is_refused_reconnects_rather_than_its_thread_dying(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a broker that refuses the reconciler's first session (a token's publish nacked: a
    # quorum queue not ready yet), then is stopped
    stop = _Stop()
    sessions = []

    def open_(self: runner.Reconciler, tasks: list[PeriodicTask]) -> None:
        sessions.append(len(tasks))
        if len(sessions) == 1:
            raise pika.exceptions.NackError([])
        stop.set()
        raise pika.exceptions.AMQPConnectionError("gone")

    monkeypatch.setattr(runner.Reconciler, "_open", open_)
    reconciler = runner.Reconciler(Registry([TASK]), "amqp://refusing", names=Names())
    # When it serves, Then it backs off and opens a new session (the loop it shares with every
    # part of the scheduler: pika's NackError is a channel error, one of the broker-down ones)
    reconciler.serve(stop)
    assert sessions == [1, 1]
    assert stop.waits[0] == 0.2


def test_the_registry_prompts_survive_a_handshake_timeout_and_reread_by_time_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a broker too busy to finish the handshake, twice, and overrides due for a re-read
    stop = _Stop()
    attempts = []
    reads = []

    def connection(params: pika.URLParameters) -> None:
        attempts.append(params.heartbeat)
        if len(attempts) >= 2:
            stop.set()
        raise AMQPConnectorStackTimeout("Timeout during AMQP handshake")

    class Live:
        def refresh(self) -> bool:
            reads.append(1)
            return True

    monkeypatch.setattr(pika, "BlockingConnection", connection)
    prompts = control.Prompts("amqp://busy", Names(), Live(), heartbeat_s=7)  # type: ignore[arg-type]
    prompts.reread_s = 0.0
    # When they serve, Then they back off and try again (with the process's heartbeat) rather
    # than their thread dying, and re-read the overrides by time while the broker is away
    prompts.serve(stop)
    assert attempts == [7, 7]
    assert stop.waits == [0.2, 0.4]
    assert len(reads) == 2
