"""Declared cancellation (`cancel_on`) reaches the events flow control holds (docs/flow-control.md,
"Cancellation"): a held event is not a run yet, so no registration names it; before it starts,
the worker asks for a cancellation received since it arrived and drops it instead, recorded as
a cancelled run, its failure handler told, counted as Cancelled."""

from __future__ import annotations

from sluice.envelope import Event
from sluice.run_control import RunRecords
from sluice.workflows import CancelOn, Debounce, Flow, Throttle
from tests.flow.conftest import WORKFLOW, Pipeline, webhook
from tests.lambdas.conftest import COORDINATION_TABLE

# As deliver_webhook declares it (lambdas/workflows/deliver_webhook/workflow.toml).
CANCEL = (CancelOn(event="customer/deleted", match="data.customer_id"),)


def customer_deleted(customer: str) -> Event:
    return Event(name="customer/deleted", data={"customer_id": customer}, id=f"del-{customer}")


def recorded_cancelled(p: Pipeline) -> list[tuple[str, str, str]]:
    records = RunRecords(p.ddb, COORDINATION_TABLE).list(WORKFLOW)
    return sorted((r.name, r.status, r.reason["reason"]) for r in records)


def test_a_throttled_event_for_a_deleted_customer_is_dropped_and_another_customers_starts(
    pipeline,
):
    pipeline.flows[WORKFLOW] = Flow(
        throttle=Throttle(limit=1, period_s=60, key="data.customer_id"), cancel_on=CANCEL
    )
    pipeline.clock.now = 1_800_000_000.0  # a window's start
    # Given c1 and c2 each over their throttle: evt-1 and evt-4 start, the rest wait
    for n, customer in [(1, "c1"), (2, "c1"), (3, "c1"), (4, "c2"), (5, "c2")]:
        pipeline.send(webhook(n, customer=customer))
    assert pipeline.lam.started() == ["evt-1", "evt-4"]
    # When c1 is deleted while its evt-2 and evt-3 wait
    assert pipeline.send(customer_deleted("c1")).status == 200
    # and a new c1 event arrives after the cancellation (a new customer with the same id; a
    # second later: sqsd's receipt time, which the cancellation is compared with, has seconds)
    pipeline.clock.now += 1
    pipeline.send(webhook(6, customer="c1"))
    pipeline.run_until(1_800_000_000.0 + 180)
    # Then c1's held events never start, c2's starts in the next window, and the c1 event that
    # arrived after the cancellation starts in the window the dropped ones would have taken
    by_window = sorted((int(at - 1_800_000_000.0) // 60, n) for at, n, _ in pipeline.lam.starts)
    assert by_window == [(0, "evt-1"), (0, "evt-4"), (1, "evt-5"), (1, "evt-6")]
    # each recorded as a cancelled run, its failure handler told once, counted
    assert recorded_cancelled(pipeline) == [
        ("evt-2", "STOPPED", "cancelled"),
        ("evt-3", "STOPPED", "cancelled"),
    ]
    assert sorted(h["job_id"] for h in pipeline.lam.handled) == ["evt-2", "evt-3"]
    assert {h["reason"] for h in pipeline.lam.handled} == {"cancelled"}
    assert pipeline.count("Cancelled") == 2
    dropped = pipeline.log_lines("held event cancelled: not started")
    assert sorted(d["event_id"] for d in dropped) == ["evt-2", "evt-3"]
    assert {d["cancelled_by"] for d in dropped} == {"customer/deleted"}
    # and nothing waits any more
    assert pipeline.store.waiting(WORKFLOW) == []


def test_a_debounced_event_for_a_deleted_customer_is_dropped_and_another_customers_starts(
    pipeline,
):
    pipeline.flows[WORKFLOW] = Flow(
        debounce=Debounce(quiet_s=30, key="data.customer_id"), cancel_on=CANCEL
    )
    start = pipeline.clock.now
    pipeline.send(webhook(1, customer="c1"))
    pipeline.send(webhook(2, customer="c2"))
    pipeline.clock.now += 10
    pipeline.send(customer_deleted("c1"))
    pipeline.run_until(start + 60)
    assert pipeline.lam.started() == ["evt-2"]
    assert recorded_cancelled(pipeline) == [("evt-1", "STOPPED", "cancelled")]
    assert [h["job_id"] for h in pipeline.lam.handled] == ["evt-1"]
    assert pipeline.count("Cancelled") == 1
    assert pipeline.store.waiting(WORKFLOW) == []
