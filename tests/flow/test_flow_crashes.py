"""Flow control when the worker dies mid-decision: killed between each state write and the start
it leads to (and the reverse), while events wait. After sqsd sends the message again nothing is
lost, nothing runs twice and the throttle still holds."""

from __future__ import annotations

import pytest

from sluice.workflows import Batch, Debounce, Flow, Idempotency, Priority, Throttle
from tests.flow.conftest import WORKFLOW, Fault, Pipeline, webhook

LIMIT, PERIOD = 3, 10
EVENTS = 10


def burst(pipeline: Pipeline) -> float:
    begin = pipeline.clock.now = 1_800_000_000.0
    for n in range(EVENTS):
        pipeline.send(webhook(n, tier=n % 3))
    pipeline.run_until(begin + 60)
    return begin


def assert_all_once_within_the_throttle(pipeline: Pipeline, begin: float) -> None:
    started = pipeline.lam.started()
    assert sorted(started) == sorted(f"evt-{n}" for n in range(EVENTS))  # none lost
    assert len(set(started)) == len(started)  # one execution each
    per_window: dict[int, int] = {}
    for at, _, _ in pipeline.lam.starts:
        window = int((at - begin) // PERIOD)
        per_window[window] = per_window.get(window, 0) + 1
    assert max(per_window.values()) <= LIMIT
    assert pipeline.store.waiting() == []


THROTTLED = Flow(
    idempotency=Idempotency(key=("id",), window_s=3600),
    throttle=Throttle(limit=LIMIT, period_s=PERIOD, key="data.customer_id"),
    priority=Priority(key="data.tier", max=2, aging_s=30),
)


@pytest.mark.parametrize(
    ("method", "nth", "after"),
    [
        ("claim", 5, True),  # idempotency key held, nothing else done
        ("admit", 2, True),  # counted in the window, not started (fast path)
        ("admit", 5, True),  # counted in the window, a held event not started (drain)
        ("hold", 1, True),  # held, not drained, no wake-up sent
        ("hold", 4, False),
        ("release", 1, False),  # started, still held
        ("release", 4, False),  # in a wake-up's drain
        ("release", 2, True),  # released, the wake-up not answered
        ("woken", 1, False),  # wake-up sent, not noted
        ("read", 3, False),
    ],
)
def test_killed_between_a_state_write_and_a_start_nothing_is_lost_or_run_twice(
    pipeline, method, nth, after
):
    pipeline.flows[WORKFLOW] = THROTTLED
    fault = Fault(method, nth, after)
    pipeline.wrap_store = fault.wrap
    begin = burst(pipeline)
    assert fault.fired == 1
    assert_all_once_within_the_throttle(pipeline, begin)
    assert any(r.status == 503 for r in pipeline.results)
    assert pipeline.count("FlowDuplicates") == 0  # a redelivery is not its own duplicate


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_killed_after_sending_a_wake_up_before_answering_sqsd(pipeline, nth):
    pipeline.flows[WORKFLOW] = THROTTLED
    fault = Fault("send_message", nth, after=True)
    pipeline.queue = fault.wrap(pipeline.queue)
    begin = burst(pipeline)
    assert fault.fired == 1
    assert_all_once_within_the_throttle(pipeline, begin)


def test_a_worker_that_dies_while_events_wait_loses_none(pipeline):
    """Every delivery is a fresh worker process: what waits is in the table and on the queue
    only. Killing the one that handles the first wake-up changes nothing but its timing."""
    pipeline.flows[WORKFLOW] = THROTTLED
    begin = pipeline.clock.now = 1_800_000_000.0
    for n in range(EVENTS):
        pipeline.send(webhook(n, tier=n % 3))
    assert len(pipeline.store.waiting(WORKFLOW)) == EVENTS - LIMIT
    (due, _, wake), *_ = pipeline.queue.pending
    pipeline.clock.now = due
    pipeline.queue.pending.clear()
    fault = Fault("admit", 1, after=True)
    pipeline.wrap_store = fault.wrap
    with pytest.raises(AssertionError):
        pipeline.deliver(wake, attempts=1)  # killed mid-drain; sqsd will send it again
    pipeline.wrap_store = lambda store: store
    pipeline.deliver(wake)
    pipeline.run_until(begin + 60)
    assert_all_once_within_the_throttle(pipeline, begin)
    # Within each window: higher tier first, then arrival (evt-0..2 started before any waited).
    assert pipeline.lam.started() == [f"evt-{n}" for n in (0, 1, 2, 5, 8, 4, 7, 3, 6, 9)]


def test_lambda_unavailable_while_draining_keeps_the_events_waiting(pipeline):
    from botocore.exceptions import ClientError

    pipeline.flows[WORKFLOW] = Flow(throttle=Throttle(limit=LIMIT, period_s=PERIOD))
    begin = pipeline.clock.now = 1_800_000_000.0
    for n in range(EVENTS):
        pipeline.send(webhook(n))
    refusals = iter(range(4))  # Lambda throttles the next four starts

    def fail(name: str) -> Exception | None:
        if next(refusals, None) is None:
            return None
        return ClientError({"Error": {"Code": "TooManyRequestsException"}}, "Invoke")

    pipeline.lam.fail = fail
    pipeline.run_until(begin + 60)
    assert [r.reason for r in pipeline.results if r.status == 503] == [
        "TooManyRequestsException"
    ] * 4
    assert_all_once_within_the_throttle(pipeline, begin)


@pytest.mark.parametrize(
    ("method", "nth", "after"),
    [
        ("note", 3, True),  # the latest event noted, its wake-up not sent
        ("debounced", 2, False),  # killed reading at the wake-up
        ("close", 1, True),  # the quiet period closed, the run not started
        ("started", 1, False),  # the run started, its ready item not forgotten
    ],
)
def test_a_debounce_killed_mid_update_runs_the_last_event_once(pipeline, method, nth, after):
    pipeline.flows[WORKFLOW] = Flow(debounce=Debounce(quiet_s=10, key="data.customer_id"))
    fault = Fault(method, nth, after)
    pipeline.wrap_store = fault.wrap
    begin = pipeline.clock.now = 1_800_000_000.0
    for n in range(5):
        pipeline.run_until(begin + n)
        pipeline.send(webhook(n))
        pipeline.send(webhook(f"c2-{n}", customer="c2"))
    pipeline.run_until(begin + 60)
    assert fault.fired == 1
    assert sorted(pipeline.lam.started()) == ["evt-4", "evt-c2-4"]
    assert pipeline.store.waiting() == []


@pytest.mark.parametrize(
    ("method", "nth", "after"),
    [
        ("join", 2, True),  # joined, nothing else done
        ("join", 3, True),  # the member that fills the batch joined, the batch not closed
        ("batches", 4, False),
        ("close_batch", 1, True),  # closed, not started
        ("forget_batch", 1, False),  # started, not forgotten
        ("close_batch", 3, True),  # the window's batch closed by its wake-up, not started
    ],
)
def test_a_batch_killed_mid_update_runs_each_event_once(pipeline, method, nth, after):
    pipeline.flows[WORKFLOW] = Flow(batch=Batch(size=3, window_s=30, key="data.customer_id"))
    fault = Fault(method, nth, after)
    pipeline.wrap_store = fault.wrap
    begin = pipeline.clock.now = 1_800_000_000.0
    for n in range(8):
        pipeline.send(webhook(n, customer=f"c{n % 2}"))
    pipeline.run_until(begin + 90)
    assert fault.fired == 1
    runs = [[e["id"] for e in payload["data"]["events"]] for _, _, payload in pipeline.lam.starts]
    assert sorted(i for run in runs for i in run) == [f"evt-{n}" for n in range(8)]
    assert all(len(run) <= 3 for run in runs)
    assert pipeline.store.waiting() == []
