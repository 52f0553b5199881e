"""Flow control under bursts (docs/flow-control.md): idempotency keys, rate limits, throttles
with priority; the exact starts per period, their order, the skipped and duplicate events."""

from __future__ import annotations

import json
from typing import Any

from sluice.catalog import FLOW_WAKE
from sluice.envelope import MAX_ASYNC_PAYLOAD_BYTES, Event
from sluice.workflows import Batch, Debounce, Flow, Idempotency, Priority, RateLimit, Throttle
from tests.flow.conftest import WORKFLOW, Pipeline, webhook
from worker.dispatch import Delivery
from worker.flow import BATCH_PAYLOAD_BYTES, MAX_DELAY_S, member_bytes, rank


def starts_per_window(p: Pipeline, period_s: int, begin: float) -> list[int]:
    """How many runs started in each period from `begin` on."""
    out: dict[int, int] = {}
    for at, _, _ in p.lam.starts:
        out[int((at - begin) // period_s)] = out.get(int((at - begin) // period_s), 0) + 1
    return [out.get(i, 0) for i in range(max(out) + 1)] if out else []


# -- idempotency ----------------------------------------------------------------------------------


def test_a_second_event_with_the_same_key_within_the_window_starts_nothing(pipeline):
    pipeline.flows[WORKFLOW] = Flow(
        idempotency=Idempotency(key=("data.customer_id", "data.checksum"), window_s=60)
    )
    for n in range(5):  # the same upload five times in a row
        pipeline.send(webhook(n, checksum="abc"))
    pipeline.send(webhook(5, checksum="def"))  # another file
    pipeline.send(webhook(6, customer="c2", checksum="abc"))  # another customer
    assert pipeline.lam.started() == ["evt-0", "evt-5", "evt-6"]
    assert pipeline.count("FlowDuplicates") == 4
    duplicates = pipeline.log_lines("duplicate event: started nothing")
    assert [(d["event_id"], d["duplicate_of"], d["key"]) for d in duplicates] == [
        (f"evt-{n}", "evt-0", "c1|abc") for n in range(1, 5)
    ]
    # The first event delivered again (sqsd's retry) is not its own duplicate: it starts (the
    # same execution, so nothing runs twice).
    assert pipeline.send(webhook(0, checksum="abc")).counts.get("FlowDuplicates", 0) == 0
    assert pipeline.lam.started() == ["evt-0", "evt-5", "evt-6"]
    assert pipeline.lam.invokes == 4
    # Past the window the key is free again.
    pipeline.clock.now += 61
    pipeline.send(webhook(7, checksum="abc"))
    assert pipeline.lam.started()[-1] == "evt-7"


# -- rate limit -----------------------------------------------------------------------------------


def test_events_over_the_rate_limit_are_skipped_counted_and_logged_not_dead_lettered(pipeline):
    pipeline.flows[WORKFLOW] = Flow(
        rate_limit=RateLimit(limit=3, period_s=60, key="data.customer_id")
    )
    pipeline.clock.now = 1_800_000_000.0  # a window's start
    for n in range(10):
        pipeline.send(webhook(n))
    for n in range(10, 12):
        pipeline.send(webhook(n, customer="c2"))
    assert pipeline.lam.started() == ["evt-0", "evt-1", "evt-2", "evt-10", "evt-11"]
    assert pipeline.count("FlowSkipped") == 7
    skipped = pipeline.log_lines("rate limited: event skipped")
    assert [s["event_id"] for s in skipped] == [f"evt-{n}" for n in range(3, 10)]
    assert {s["key"] for s in skipped} == {"c1"}
    assert pipeline.queue.dead == [] and pipeline.queue.pending == []
    assert all(r.status == 200 for r in pipeline.results)
    # An admitted event delivered again is admitted again (it counts once).
    pipeline.send(webhook(1))
    assert pipeline.count("FlowSkipped") == 7
    # The next window admits three more.
    pipeline.clock.now += 60
    for n in range(20, 25):
        pipeline.send(webhook(n))
    assert pipeline.lam.started()[5:] == ["evt-20", "evt-21", "evt-22"]
    assert pipeline.count("FlowSkipped") == 9


# -- throttle and priority ------------------------------------------------------------------------


def test_a_throttle_starts_at_most_n_per_period_in_arrival_order_and_drops_nothing(pipeline):
    pipeline.flows[WORKFLOW] = Flow(throttle=Throttle(limit=3, period_s=10, key="data.customer_id"))
    begin = pipeline.clock.now = 1_800_000_000.0
    for n in range(10):
        pipeline.send(webhook(n))
    pipeline.send(webhook(99, customer="c2"))  # another key is not held back
    assert pipeline.lam.started() == ["evt-0", "evt-1", "evt-2", "evt-99"]
    assert pipeline.count("FlowWaiting") == 7
    assert [w.event_id for w in pipeline.store.waiting(WORKFLOW)] == [
        f"evt-{n}" for n in range(3, 10)
    ]
    pipeline.run_until(begin + 60)
    c1 = [(at, name) for at, name, payload in pipeline.lam.starts if name != "evt-99"]
    assert [name for _, name in c1] == [f"evt-{n}" for n in range(10)]
    per_window: dict[int, int] = {}
    for at, _ in c1:
        per_window[int((at - begin) // 10)] = per_window.get(int((at - begin) // 10), 0) + 1
    assert per_window == {0: 3, 1: 3, 2: 3, 3: 1}
    assert pipeline.store.waiting() == []
    # Each run started once, with the event as sent.
    assert len(set(pipeline.lam.started())) == len(pipeline.lam.started()) == 11
    payloads = {name: payload for _, name, payload in pipeline.lam.starts}
    assert payloads["evt-4"] == json.loads(webhook(4).start_payload())
    # One wake-up per window that had waiting events (not one per event).
    assert pipeline.queue.sent == 3


def test_one_worker_holds_an_arrival_in_a_full_window_with_one_state_call(pipeline):
    # Given one worker process (its per-process hints kept) and a throttle of 3 per 10 s
    pipeline.flows[WORKFLOW] = Flow(throttle=Throttle(limit=3, period_s=10, key="data.customer_id"))
    begin = pipeline.clock.now = 1_800_000_000.0
    calls: list[str] = []

    class Counted:
        def __init__(self, store: Any) -> None:
            self.store = store

        def __getattr__(self, name: str) -> Any:
            calls.append(name)
            return getattr(self.store, name)

    pipeline.wrap_store = Counted
    worker = pipeline.dispatcher()
    per_event = []
    for n in range(10):
        pipeline.clock.now += 0.001
        before = len(calls)
        assert worker.handle(webhook(n).to_json().encode(), Delivery()).status == 200
        per_event.append(calls[before:])
    # Then the first three start (one write each); the fourth finds the window full, drains
    # and sends the window's wake-up; the fifth learns from the refused write that the window is
    # full with its wake-up noted; from then on an arrival is one hold (one transaction)
    assert per_event[:3] == [["admit"]] * 3
    assert per_event[3] == ["admit", "hold", "read", "woken"]
    assert per_event[4] == ["admit", "hold"]
    assert per_event[5:] == [["hold"]] * 5
    # and the starts per window are exact, in arrival order, none lost
    pipeline.run_until(begin + 60)
    assert pipeline.lam.started() == [f"evt-{n}" for n in range(10)]
    assert starts_per_window(pipeline, 10, begin) == [3, 3, 3, 1]
    assert pipeline.store.waiting() == []


def test_waiting_events_start_by_priority_then_arrival(pipeline):
    pipeline.flows[WORKFLOW] = Flow(
        throttle=Throttle(limit=1, period_s=10),
        priority=Priority(key="data.tier", max=9, aging_s=3600),
    )
    begin = pipeline.clock.now = 1_800_000_000.0
    tiers = {"a": 0, "b": 0, "c": 5, "d": 5, "e": 9, "f": "gold", "g": 42}
    for n, tier in tiers.items():
        pipeline.send(webhook(n, tier=tier))
    pipeline.run_until(begin + 80)
    # a starts at once (nothing waited); then 9 (g clamped to 9 arrived after e), 5, 5, then
    # 0s in arrival order, f (not an integer: the default, 0) last.
    assert pipeline.lam.started() == [f"evt-{n}" for n in "aegcdbf"]
    assert starts_per_window(pipeline, 10, begin) == [1, 1, 1, 1, 1, 1, 1]


def test_a_low_priority_event_ages_and_cannot_starve(pipeline):
    """Aging: +1 per aging_s waited, up to max. With max 9 and aging_s 10, a priority-0 event
    ranks with the highest after 90 s and then goes before every later arrival."""
    pipeline.flows[WORKFLOW] = Flow(
        throttle=Throttle(limit=1, period_s=10),
        priority=Priority(key="data.tier", max=9, aging_s=10),
    )
    begin = pipeline.clock.now = 1_800_000_000.0
    pipeline.send(webhook("first", tier=9))
    pipeline.send(webhook("low", tier=0))
    # A steady stream of top-priority events, two per period: they alone could fill the throttle.
    for second in range(0, 200, 5):
        pipeline.run_until(begin + second)
        pipeline.send(webhook(f"high-{second}", tier=9))
    pipeline.run_until(begin + 200)
    low_at = next(at for at, name, _ in pipeline.lam.starts if name == "evt-low")
    assert 90 <= low_at - begin <= 100
    # Every high event that arrived before it aged to the top went first, in arrival order.
    before = pipeline.lam.started()[: pipeline.lam.started().index("evt-low")]
    assert before == ["evt-first"] + [f"evt-high-{s}" for s in range(0, 5 * len(before) - 5, 5)]


def test_rank_is_priority_aged_then_arrival():
    from sluice.flowstate import Waiter

    def w(event_id: str, priority: int, arrival_ms: int) -> Waiter:
        return Waiter("pk", WORKFLOW, "k", event_id, "{}", priority, arrival_ms)

    p = Priority(key="data.tier", max=5, aging_s=10)
    now = 100_000
    assert rank(w("x", 2, now - 25_000), now, p) == (-4, now - 25_000, "x")
    assert rank(w("y", 0, 0), now, p) == (-5, 0, "y")  # aged past max: max
    assert rank(w("z", 3, now), now, None) == (-3, now, "z")


def test_a_wake_up_for_a_later_window_than_sqs_can_delay_is_sent_again(pipeline):
    pipeline.flows[WORKFLOW] = Flow(throttle=Throttle(limit=1, period_s=3600))
    begin = pipeline.clock.now = 1_800_000_000.0 - 1_800_000_000 % 3600
    pipeline.send(webhook(1))
    pipeline.send(webhook(2))
    wake = json.loads(pipeline.queue.pending[0][2])
    assert wake["name"] == FLOW_WAKE and wake["data"]["due"] == begin + 3600
    assert pipeline.queue.pending[0][0] == pipeline.clock.now + MAX_DELAY_S
    pipeline.run_until(begin + 3599, step=60)
    assert pipeline.lam.started() == ["evt-1"]
    pipeline.run_until(begin + 3601, step=1)
    assert pipeline.lam.started() == ["evt-1", "evt-2"]
    assert begin + 3600 <= pipeline.lam.starts[1][0] < begin + 3602  # SQS delays whole seconds


# -- debounce -------------------------------------------------------------------------------------


def test_a_debounce_starts_one_run_per_key_with_the_last_event_after_a_quiet_period(pipeline):
    pipeline.flows[WORKFLOW] = Flow(debounce=Debounce(quiet_s=10, key="data.customer_id"))
    begin = pipeline.clock.now = 1_800_000_000.0
    for n in range(5):  # one every second
        pipeline.run_until(begin + n)
        pipeline.send(webhook(n))
    pipeline.send(webhook("other", customer="c2"))
    waiting = pipeline.store.waiting(WORKFLOW)
    assert [(w.control, w.key, w.event_id) for w in waiting] == [
        ("debounce", "c1", "evt-4"),
        ("debounce", "c2", "evt-other"),
    ]
    assert waiting[0].arrival_ms == int(begin * 1000) + 1  # since the first of the period
    pipeline.run_until(begin + 60)
    # Quiet 10 s after the last event (at 4.004 s; SQS delays whole seconds): 15 s.
    assert [(name, int(at - begin)) for at, name, _ in pipeline.lam.starts] == [
        ("evt-4", 15),
        ("evt-other", 15),
    ]
    payloads = {name: payload for _, name, payload in pipeline.lam.starts}
    assert payloads["evt-4"] == json.loads(webhook(4).start_payload())
    assert pipeline.count("FlowWaiting") == 6
    assert pipeline.store.waiting() == []
    # A later event starts a new quiet period and a new run.
    pipeline.send(webhook(5))
    pipeline.run_until(begin + 80)
    assert pipeline.lam.started()[-1] == "evt-5"
    assert len(pipeline.lam.starts) == 3


def test_a_debounce_with_a_maximum_wait_runs_a_steady_stream(pipeline):
    pipeline.flows[WORKFLOW] = Flow(debounce=Debounce(quiet_s=10, max_wait_s=30))
    begin = pipeline.clock.now = 1_800_000_000.0
    for second in range(0, 75, 3):  # never 10 s quiet for 75 s
        pipeline.run_until(begin + second)
        pipeline.send(webhook(second))
    pipeline.run_until(begin + 120)
    runs = [(name, round(at - begin)) for at, name, _ in pipeline.lam.starts]
    # A run 30 s after each period's first event, with the latest event then; the last period
    # ends quiet 10 s after the last event.
    assert runs == [("evt-30", 31), ("evt-63", 64), ("evt-72", 83)]


def test_a_debounced_event_redelivered_older_than_the_latest_does_not_replace_it(pipeline):
    pipeline.flows[WORKFLOW] = Flow(debounce=Debounce(quiet_s=10))
    begin = pipeline.clock.now = 1_800_000_000.0
    older = webhook("old")
    newer = Event(name=older.name, data=older.data, id="evt-new", ts="2026-12-02T08:00:01Z")
    pipeline.send(older)
    pipeline.send(newer)
    pipeline.send(older)  # sqsd sends the older one again
    pipeline.run_until(begin + 30)
    assert pipeline.lam.started() == ["evt-new"]


# -- batch ----------------------------------------------------------------------------------------


def batch_runs(pipeline: Pipeline, begin: float) -> list[tuple[str, int, list[str]]]:
    """(execution name, start second, the batch's event ids) of every run."""
    return [
        (name, int(at - begin), [e["id"] for e in payload["data"]["events"]])
        for at, name, payload in pipeline.lam.starts
    ]


def test_a_batch_starts_one_run_per_full_batch_and_one_when_the_window_ends(pipeline):
    pipeline.flows[WORKFLOW] = Flow(batch=Batch(size=3, window_s=60, key="data.customer_id"))
    begin = pipeline.clock.now = 1_800_000_000.0
    for n in range(7):
        pipeline.send(webhook(n))
    pipeline.send(webhook("other", customer="c2"))
    assert batch_runs(pipeline, begin) == [
        ("evt-0_batch", 0, ["evt-0", "evt-1", "evt-2"]),
        ("evt-3_batch", 0, ["evt-3", "evt-4", "evt-5"]),
    ]
    assert [(w.control, w.key, w.event_id) for w in pipeline.store.waiting(WORKFLOW)] == [
        ("batch", "c1", "evt-6"),
        ("batch", "c2", "evt-other"),
    ]
    pipeline.run_until(begin + 120)
    assert batch_runs(pipeline, begin)[2:] == [
        ("evt-6_batch", 61, ["evt-6"]),
        ("evt-other_batch", 61, ["evt-other"]),
    ]
    assert pipeline.store.waiting() == []
    # The run's event: the members as sent, in arrival order, under the first one's name.
    (_, _, payload) = pipeline.lam.starts[0]
    assert payload["name"] == "webhook/requested"
    assert payload["data"]["events"][1] == webhook(1).to_dict()
    # A member's message sent again after its batch started joins no other batch.
    pipeline.send(webhook(1))
    pipeline.run_until(begin + 240)
    assert len(pipeline.lam.starts) == 4


def test_a_batch_takes_what_arrived_within_its_window(pipeline):
    pipeline.flows[WORKFLOW] = Flow(batch=Batch(size=50, window_s=10))
    begin = pipeline.clock.now = 1_800_000_000.0
    for n in range(25):  # one event every second
        pipeline.run_until(begin + n)
        pipeline.send(webhook(n))
    pipeline.run_until(begin + 60)
    # A batch closes 10 s after its first event: here the event that arrives then (the
    # window's last) closes it; the last batch is closed by its wake-up (SQS delays whole
    # seconds).
    assert [(start, ids[0], len(ids)) for _, start, ids in batch_runs(pipeline, begin)] == [
        (10, "evt-0", 11),
        (21, "evt-11", 11),
        (33, "evt-22", 3),
    ]
    started = [i for _, _, ids in batch_runs(pipeline, begin) for i in ids]
    assert started == [f"evt-{n}" for n in range(25)]


def test_a_batch_closes_early_when_the_next_event_would_pass_lambdas_payload_limit(pipeline):
    # Events of ~200 KB (under SQS's 256 KiB): at most 4 fit one run's 1 MB asynchronous
    # payload (sluice.envelope.MAX_ASYNC_PAYLOAD_BYTES), far fewer than the declared size.
    pipeline.flows[WORKFLOW] = Flow(batch=Batch(size=50, window_s=60))
    begin = pipeline.clock.now = 1_800_000_000.0
    events = [webhook(n, body="x" * 200_000) for n in range(10)]
    for event in events:
        pipeline.send(event)
    pipeline.run_until(begin + 120)
    runs = batch_runs(pipeline, begin)
    # Each event in exactly one run, in arrival order; full runs closed by bytes, the last by
    # its window's end.
    assert [i for _, _, ids in runs for i in ids] == [e.id for e in events]
    assert [(start, len(ids)) for _, start, ids in runs] == [(0, 4), (0, 4), (61, 2)]
    for _, _, payload in pipeline.lam.starts:
        assert payload_bytes(payload) <= MAX_ASYNC_PAYLOAD_BYTES  # Lambda takes it
    # and a batch is closed only when one more member would not have fitted
    first_run = pipeline.lam.starts[0][2]
    assert payload_bytes(first_run) + member_bytes(events[4]) > BATCH_PAYLOAD_BYTES


def payload_bytes(payload: dict) -> int:
    """The size of a run's input as the worker sends it (Event.start_payload: compact, sorted)."""
    return len(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
