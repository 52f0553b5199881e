"""Concurrency limits under a burst, run by AWS's local durable execution runner against moto.

50 runs of a small workflow start at once; each holds its slots around one step that records
when it starts and ends. The observed number of runs inside that step never exceeds the limits;
every run completes, none fails or is dropped.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from aws_durable_execution_sdk_python import DurableContext, durable_execution
from aws_durable_execution_sdk_python.config import StepConfig
from aws_durable_execution_sdk_python.execution import InvocationStatus
from aws_durable_execution_sdk_python.retries import RetryStrategyConfig, create_retry_strategy
from aws_durable_execution_sdk_python_testing.runner import DurableFunctionTestRunner

from adapters.slots import Slots, scope
from lambdas.common.concurrency import slots_held
from sluice.errors import BusinessError
from sluice.workflows import Priority
from tests.lambdas.conftest import Atomic

RUNS = 50
NO_RETRY = StepConfig(retry_strategy=create_retry_strategy(RetryStrategyConfig(max_attempts=1)))
WORK_S = 0.02
# A slot's lease: longer than any run here (a lease is the workflow's execution timeout).
LEASE_S = 3600


@dataclass
class Observed:
    """What the runs did inside their slots: (run, key, arrival) in start order, and the most
    runs inside at once, in all and per key."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    inside: dict[str, int] = field(default_factory=dict)  # "" (all) and each key -> now
    most: dict[str, int] = field(default_factory=dict)
    starts: list[tuple[str, str, int]] = field(default_factory=list)

    def enter(self, run: str, key: str, arrival: int) -> None:
        with self.lock:
            self.starts.append((run, key, arrival))
            for k in {"", key}:
                self.inside[k] = self.inside.get(k, 0) + 1
                self.most[k] = max(self.most.get(k, 0), self.inside[k])

    def leave(self, key: str) -> None:
        with self.lock:
            for k in {"", key}:
                self.inside[k] -= 1


def burst_workflow(
    observed: Observed,
    slots: Callable[[], Slots],
    is_running: Callable[[str], bool],
    **limits: Any,
) -> Callable[..., Any]:
    def workflow(event: Mapping[str, Any], ctx: DurableContext) -> dict[str, Any]:
        run, key = event["id"], event["data"].get("customer", "-")
        with slots_held(
            ctx,
            workflow="burst",
            event=event,
            run=run,
            slots=slots,
            is_running=lambda: is_running,
            lease_s=LEASE_S,
            **limits,
        ) as held:

            def work(_: Any) -> str:
                observed.enter(run, key, held.arrival_ms)
                try:
                    time.sleep(WORK_S)
                finally:
                    observed.leave(key)
                return run

            ctx.step(work, name="work")
        return {"run": run}

    return durable_execution(workflow)


def run_burst(handler: Callable[..., Any], events: list[dict[str, Any]]) -> list[Any]:
    with DurableFunctionTestRunner(handler=handler, skip_time=True) as runner:
        arns = [
            runner.run_async(input=json.dumps(e), execution_name=e["id"], execution_timeout=600)
            for e in events
        ]
        return [runner.wait_for_result(arn, timeout=120) for arn in arns]


def burst(n: int, keys: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": f"run-{i:02d}", "data": {"customer": f"c{i % keys}"} if keys else {}}
        for i in range(n)
    ]


@pytest.fixture
def slots(aws) -> Callable[[], Slots]:
    table = Slots(Atomic(aws.ddb), aws.coordination)
    return lambda: table


def everyone_alive(_: str) -> bool:
    return True


def assert_all_completed(results: list[Any], events: list[dict[str, Any]]) -> None:
    assert [r.status for r in results] == [InvocationStatus.SUCCEEDED] * len(events), [
        r.error for r in results if r.status is not InvocationStatus.SUCCEEDED
    ]
    assert sorted(json.loads(r.result)["run"] for r in results) == sorted(e["id"] for e in events)


@pytest.mark.slow
def test_a_burst_of_50_runs_never_has_more_than_5_executing_at_once(slots):
    observed, events = Observed(), burst(RUNS)
    handler = burst_workflow(observed, slots, everyone_alive, limit=5)
    results = run_burst(handler, events)
    assert_all_completed(results, events)
    assert len(observed.starts) == RUNS  # each run did its work once
    assert observed.most[""] <= 5
    assert observed.most[""] > 1  # the runs did run side by side: the limit, not the runner, bounds
    assert slots().holders(scope("burst"))[0] == {}  # every slot given back
    assert slots().waiters(scope("burst")) == []


@pytest.mark.slow
def test_a_key_limit_of_1_over_5_keys_runs_each_key_alone_in_arrival_order(slots):
    observed, events = Observed(), burst(RUNS, keys=5)
    handler = burst_workflow(observed, slots, everyone_alive, key="data.customer", key_limit=1)
    results = run_burst(handler, events)
    assert_all_completed(results, events)
    assert len(observed.starts) == RUNS
    assert all(observed.most[f"c{k}"] == 1 for k in range(5)), observed.most
    assert observed.most[""] > 1  # different keys ran side by side
    for k in range(5):
        # a key's runs started in the order they arrived (ties broken by run name, as queued)
        arrivals = [(a, r) for r, key, a in observed.starts if key == f"c{k}"]
        assert arrivals == sorted(arrivals)


@pytest.mark.slow
def test_both_limits_together(slots):
    observed, events = Observed(), burst(30, keys=5)
    handler = burst_workflow(
        observed, slots, everyone_alive, limit=3, key="data.customer", key_limit=1
    )
    results = run_burst(handler, events)
    assert_all_completed(results, events)
    assert observed.most[""] <= 3
    assert all(observed.most[f"c{k}"] == 1 for k in range(5)), observed.most


def test_a_slot_held_by_a_killed_run_is_recovered(aws):
    # Given the only slot held by a run that was killed (stopped) without releasing it
    killed = "arn:aws:lambda:eu-west-1:123456789012:function:burst:1/durable-execution/k/1"
    table = Slots(aws.ddb, aws.coordination, check_after_s=0)
    table.enqueue(scope("burst"), "killed", arn=killed, arrival_ms=1)
    assert table.try_acquire(
        scope("burst"),
        "killed",
        arn=killed,
        arrival_ms=1,
        limit=1,
        lease_s=3600,
        is_running=everyone_alive,
    )
    status = {killed: "RUNNING"}
    observed = Observed()
    handler = burst_workflow(
        observed, lambda: table, lambda arn: status.get(arn, "RUNNING") == "RUNNING", limit=1
    )
    with DurableFunctionTestRunner(handler=handler, skip_time=True) as runner:
        arn = runner.run_async(input=json.dumps(burst(1)[0]), execution_name="run-00")
        # Then the new run waits while the holder's execution still runs
        time.sleep(1.0)
        assert observed.starts == []
        # When Lambda reports the holder's execution stopped
        status[killed] = "STOPPED"
        result = runner.wait_for_result(arn, timeout=60)
    # Then the waiter took the slot and finished
    assert result.status is InvocationStatus.SUCCEEDED, result.error
    assert [r for r, _, _ in observed.starts] == ["run-00"]
    assert table.holders(scope("burst"))[0] == {}


def test_a_run_that_fails_gives_its_slot_back_and_the_next_run_goes_on(slots):
    # Given a limit of 1 and a first run whose step fails for good
    observed = Observed()

    def workflow(event: Mapping[str, Any], ctx: DurableContext) -> dict[str, Any]:
        with slots_held(
            ctx,
            workflow="burst",
            event=event,
            run=event["id"],
            slots=slots,
            limit=1,
            lease_s=LEASE_S,
        ):

            def work(_: Any) -> str:
                observed.enter(event["id"], "-", 0)
                observed.leave("-")
                if event["data"].get("fail"):
                    raise BusinessError("bad input", code="bad_input")
                return event["id"]

            ctx.step(work, name="work", config=NO_RETRY)
        return {"run": event["id"]}

    events = [{"id": "run-00", "data": {"fail": True}}, {"id": "run-01", "data": {}}]
    results = run_burst(durable_execution(workflow), events)
    # Then the first failed, the second still ran, and no slot is left held
    assert [r.status for r in results] == [InvocationStatus.FAILED, InvocationStatus.SUCCEEDED]
    assert sorted(r for r, _, _ in observed.starts) == ["run-00", "run-01"]
    assert slots().holders(scope("burst"))[0] == {}
    assert slots().waiters(scope("burst")) == []


HOLDER_ARN = "arn:aws:lambda:eu-west-1:123456789012:function:burst:1/durable-execution/h/1"


def start_queued_behind_a_holder(
    table: Slots, priority: Priority, events: list[dict[str, Any]], *, gap_s: float = 0.0
) -> list[str]:
    """Runs of a workflow with a limit of 1 whose slot a holder keeps: `events` arrive one after
    the other (each queued before the next is started, `gap_s` apart), then the holder leaves.
    The runs in the order they started their work."""
    table.enqueue(scope("burst"), "holder", arn=HOLDER_ARN, arrival_ms=1)
    assert table.try_acquire(
        scope("burst"),
        "holder",
        arn=HOLDER_ARN,
        arrival_ms=1,
        limit=1,
        lease_s=LEASE_S,
        is_running=everyone_alive,
    )
    observed = Observed()
    handler = burst_workflow(observed, lambda: table, everyone_alive, limit=1, priority=priority)
    with DurableFunctionTestRunner(handler=handler, skip_time=True) as runner:
        arns = []
        for i, event in enumerate(events):
            if i:
                time.sleep(gap_s)
            arns.append(runner.run_async(input=json.dumps(event), execution_name=event["id"]))
            deadline = time.monotonic() + 30
            while len(table.waiters(scope("burst"))) < i + 1:  # queued: it has its arrival
                assert time.monotonic() < deadline, f"{event['id']} never queued"
                time.sleep(0.05)
        assert observed.starts == []  # the holder keeps the only slot
        table.release(scope("burst"), "holder", arrival_ms=1)
        results = [runner.wait_for_result(arn, timeout=120) for arn in arns]
    assert_all_completed(results, events)
    return [run for run, _, _ in observed.starts]


def prioritised(run: str, priority: int) -> dict[str, Any]:
    return {"id": run, "data": {"priority": priority}}


def test_a_higher_priority_run_waiting_for_a_slot_starts_first_then_arrival_order(slots):
    # Given a limit of 1 held by a run, and low, low, high arriving in that order (no aging
    # within the test: one step per hour)
    order = Priority(key="data.priority", max=9, aging_s=3600)
    events = [prioritised("low-1", 0), prioritised("low-2", 0), prioritised("high", 5)]
    # When the holder gives its slot back
    started = start_queued_behind_a_holder(slots(), order, events)
    # Then the high one starts first, then the lows in the order they arrived
    assert started == ["high", "low-1", "low-2"]
    assert slots().waiters(scope("burst")) == []


def test_aging_lets_a_low_priority_run_that_waited_go_before_a_newer_high_one(slots):
    # Given a priority of at most 2 aging by one per second: a low run that waited 2 s ranks
    # with the highest, and then arrival decides
    order = Priority(key="data.priority", max=2, aging_s=1)
    events = [prioritised("old-low", 0), prioritised("new-high", 2)]
    # When the high one arrives after the low one waited past the aging bound (max * aging_s)
    started = start_queued_behind_a_holder(slots(), order, events, gap_s=2.2)
    # Then the low one, which arrived first, starts first: it cannot starve
    assert started == ["old-low", "new-high"]
