"""A scheduler part's connection loop survives every way the broker can be unavailable."""

from __future__ import annotations

import threading

import pytest
from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout

import worker.scheduler.runner as runner
from sluice.scheduling.names import Names
from sluice.scheduling.registry import PeriodicTask
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
