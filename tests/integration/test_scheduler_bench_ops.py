"""The scheduler benchmark's `ops` phase (bench/scheduler_bench.py) against a real rabbitmq-server,
on a small topology: it must measure every operation of a tick as the scheduler now routes it,
and finish. (It hung once: it waited for the reconciler's listener to hear `started`, an event
the listener had stopped being bound to.)"""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest

from bench import scheduler_bench
from devtools.rabbitmq import RabbitNode


def test_the_ops_phase_measures_each_operation_of_a_tick_and_finishes(
    rabbit: RabbitNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the phase's waits shortened (they only steady the CPU readings)
    for wait in ("OPS_IDLE_S", "OPS_SETTLE_S", "OPS_FOLLOW_UP_S"):
        monkeypatch.setattr(scheduler_bench, wait, 0.05)
    out: dict[str, Any] = {}

    def measure() -> None:
        pid = scheduler_bench._broker_pid(rabbit)
        out.update(scheduler_bench.broker_ops(rabbit.url, pid, tasks=3, n=30))

    # When it runs 30 operations of each kind on 3 tasks' topology
    worker = threading.Thread(target=measure, daemon=True)
    worker.start()
    worker.join(60)
    # Then it finished, each operation measured
    assert not worker.is_alive(), "the ops phase did not finish in 60 s"
    for key in (
        "event_routed_nowhere_ms",
        "event_to_listener_ms",
        "event_to_status_queue_ms",
        "count_ms",
        "token_path_ms",
        "token_without_hatchery_ms",
        "tick_ms",
    ):
        assert math.isfinite(out[key]), (key, out)
