"""Flow control: what the worker decides before it starts a run (docs/flow-control.md).

For a workflow that declares any (sluice.workflows.Flow), in this order: its idempotency key
(a duplicate starts nothing), its rate limit (an event over it is skipped), then its throttle
(an event over it waits in the coordination table and starts in a later window, by priority) or
its debounce (one start per quiet period, with the latest event) or its batch (one start per
batch of events). State lives in the coordination
table (adapters/flow.py); waiting events are released by wake-up messages the worker sends to
its own events queue with a delay (`sluice/flow.wake`), which sqsd brings back to `wake`.

Every write comes before the answer to sqsd, and every start is Lambda's idempotent start by the
event's execution name: a crash anywhere means sqsd sends the message again and the decision is
made again from the table, never a lost event nor a second run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from adapters.flow import FULL, RACE_RETRIES, Batches, FlowStore, Partition
from sluice import envelope, workflows
from sluice.catalog import FLOW_WAKE
from sluice.envelope import Event
from sluice.errors import TransientError
from sluice.flowstate import Waiter, partition
from sluice.workflows import SQS_MAX_DELAY_S, Debounce, Flow, Priority, key_value
from worker.cancels import Canceller

log = logging.getLogger("sluice.worker")

START, DUPLICATE, SKIPPED, WAITING = "started", "duplicate", "skipped", "waiting"
# The counts of flow outcomes (sluice.metrics.WORKER_COUNTS).
COUNTS = {DUPLICATE: "FlowDuplicates", SKIPPED: "FlowSkipped", WAITING: "FlowWaiting"}
# SQS delays a message at most 15 minutes: a later wake-up is sent again when it arrives.
MAX_DELAY_S = SQS_MAX_DELAY_S
# Starts per drain (one sqsd POST): more free places are filled by a wake-up sent at once.
MAX_STARTS = 50
ALL = "*"  # the key of a control declared without one
# A batch's run must fit Lambda's asynchronous payload: its members and, around them, the run's
# envelope (name, id, correlation id: bounded by the envelope's patterns; a margin).
BATCH_PAYLOAD_BYTES = envelope.MAX_ASYNC_PAYLOAD_BYTES - 4096
_KEY_CHARS = 200  # longer key values are hashed into the partition key
_SEEN_MAX = 10_000  # partitions whose window a worker process remembers

Starter = Callable[[Event], None]
# The held events a cancellation dropped while one message was handled (the dispatcher sets a
# list per message and counts them as Cancelled).
dropped: ContextVar[list[dict[str, str]] | None] = ContextVar("flow_dropped", default=None)


def window_start(now: float, period_s: int) -> int:
    """The fixed window `now` falls in (windows are aligned to the epoch)."""
    return int(now) // period_s * period_s


def control_key(doc: Mapping[str, Any], path: str | None) -> str:
    return ALL if path is None else key_value(doc, path)


def _partition(workflow: str, control: str, key: str) -> str:
    if len(key) > _KEY_CHARS:
        key = _digest(key)
    return partition(workflow, control, key)


def priority_of(doc: Mapping[str, Any], priority: Priority | None) -> int:
    """The event's priority (`Priority.of`); 0 without one."""
    return 0 if priority is None else priority.of(doc)


def _debounce_due(debounce: Debounce, first_ms: int, last_ms: int) -> int:
    """When a quiet period ends (epoch s): `quiet_s` after the last event, at the latest
    `max_wait_s` after the first."""
    due_ms = last_ms + debounce.quiet_s * 1000
    if debounce.max_wait_s is not None:
        due_ms = min(due_ms, first_ms + debounce.max_wait_s * 1000)
    return math.ceil(due_ms / 1000)


def _batch_event(gen: str, events: list[dict[str, Any]]) -> Event:
    """The event a batch's run starts with: its members, in arrival order, in `data.events`;
    named after the batch (its first event's id), so a start repeated after a crash is the
    same execution."""
    first = events[0]
    run_id = f"{gen}_batch" if len(gen) <= 122 else f"{gen[:80]}_batch_{_digest(gen)}"
    return Event(
        name=first["name"],
        data={"events": events},
        id=run_id,
        ts=first["ts"],
        correlation_id=first.get("correlation_id", ""),
    )


def member_bytes(event: Event) -> int:
    """What `event` adds to its batch's run payload: its document in `data.events`, as the
    start payload writes it (compact, sorted), and a comma."""
    return len(json.dumps(event.to_dict(), separators=(",", ":"), sort_keys=True).encode()) + 1


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def rank(waiter: Waiter, now_ms: int, priority: Priority | None) -> tuple[int, int, str]:
    """The sort key of a held event: `sluice.workflows.rank`, the one rule of every queue."""
    return workflows.rank(priority, waiter.priority, waiter.arrival_ms, now_ms, waiter.event_id)


class FlowControl:
    """Decides, for one event and one workflow with flow control, what starts now."""

    def __init__(
        self,
        store: FlowStore,
        *,
        sqs: Any,
        queue_url: str,
        clock: Callable[[], float] = time.time,
        canceller: Canceller | None = None,
    ) -> None:
        self.store, self.sqs, self.queue_url, self.clock = store, sqs, queue_url, clock
        # Asked before a held event starts: a `cancel_on` event may have cancelled it meanwhile.
        self.canceller = canceller
        # The window each throttle partition was last seen in: only a hint of which write to try
        # first (the conditions decide), so a new window costs one call, not two.
        self._seen: dict[str, int] = {}
        # The window each throttle partition was last seen full in, with a wake-up noted for its
        # end. Within a window a full one stays full (its admitted ids only grow) and the
        # wake-up chain is on its way, so an arrival there is held at once: no refused write,
        # no drain.
        self._full: dict[str, int] = {}

    def admit(self, workflow: str, flow: Flow, event: Event, start: Starter) -> str:
        """Apply `flow` to `event`: START (started through `start`), DUPLICATE, SKIPPED or
        WAITING (held in the table, it starts later)."""
        doc = event.to_dict()
        facts = {"workflow": workflow, "event_id": event.id}
        if flow.idempotency is not None:
            key = "|".join(key_value(doc, path) for path in flow.idempotency.key)
            holder = self.store.claim(
                partition(workflow, "idempotency", _digest(key)),
                event.id,
                key=key,
                window_s=flow.idempotency.window_s,
            )
            if holder is not None:
                log.info(
                    "duplicate event: started nothing",
                    extra={**facts, "outcome": DUPLICATE, "key": key, "duplicate_of": holder},
                )
                return DUPLICATE
        if flow.rate_limit is not None:
            limit = flow.rate_limit
            key = control_key(doc, limit.key)
            admitted = self.store.admit(
                _partition(workflow, "rate", key),
                event.id,
                limit=limit.limit,
                window_start=window_start(self.clock(), limit.period_s),
                period_s=limit.period_s,
            )
            if not admitted:
                log.warning(
                    "rate limited: event skipped",
                    extra={**facts, "outcome": SKIPPED, "key": key, "limit": limit.limit},
                )
                return SKIPPED
        if flow.throttle is not None:
            return self._throttle(workflow, flow, event, doc, start)
        if flow.debounce is not None:
            return self._debounce(workflow, flow, event, doc)
        if flow.batch is not None:
            return self._batch(workflow, flow, event, doc, start)
        start(event)
        return START

    def _cancelled(
        self,
        workflow: str,
        flow: Flow,
        event: Event,
        since_ms: int,
        seen: dict[str, str | None],
    ) -> bool:
        """Whether a cancellation received since `event` was held names it (then it is recorded
        as cancelled, its failure handler has run, and it must not start)."""
        if not flow.cancel_on or self.canceller is None:
            return False
        by = self.canceller.held_cancelled(workflow, flow.cancel_on, event, since_ms, seen=seen)
        if by is None:
            return False
        tally = dropped.get()
        if tally is not None:
            tally.append(
                {
                    "workflow": workflow,
                    "event_id": event.id,
                    "execution_name": event.execution_name,
                    "cancelled_by": by,
                }
            )
        return True

    # -- batch -----------------------------------------------------------------------------------

    def _batch(
        self, workflow: str, flow: Flow, event: Event, doc: Mapping[str, Any], start: Starter
    ) -> str:
        """Add `event` to its key's open batch; the first member sends the wake-up for the
        batch's window, the member that fills it closes and starts it."""
        batch = flow.batch
        assert batch is not None
        key = control_key(doc, batch.key)
        pk = _partition(workflow, "batch", key)
        member = Waiter(
            pk=pk,
            workflow=workflow,
            key=key,
            event_id=event.id,
            event=event.to_json(),
            priority=0,
            arrival_ms=int(self.clock() * 1000),
        )
        nbytes = member_bytes(event)
        for _ in range(RACE_RETRIES):
            joined = self.store.join(
                member, size=batch.size, nbytes=nbytes, room=BATCH_PAYLOAD_BYTES
            )
            if joined != FULL:
                break
            # Full, by count or by bytes: close it (its closer may be gone), then join the next.
            self._batches(workflow, flow, key, start, incoming=nbytes)
        else:
            raise TransientError(f"batch of {key!r} full and not closed", code="batch_full")
        state = self.store.batches(pk)
        if state.open is not None and state.open[0] == event.id:  # the first member
            due = math.ceil((state.open[1] + batch.window_s * 1000) / 1000)
            self.send_wake(workflow, "batch", key, due)
        started = self._batches(workflow, flow, key, start, state=state)
        outcome = START if event.id in started else WAITING
        if outcome == WAITING:
            log.info(
                "batched: event waits for its batch",
                extra={"workflow": workflow, "event_id": event.id, "outcome": WAITING, "key": key},
            )
        return outcome

    def _batches(
        self,
        workflow: str,
        flow: Flow,
        key: str,
        start: Starter,
        *,
        state: Batches | None = None,
        incoming: int = 0,
    ) -> set[str]:
        """Close the open batch of `key` if it is full (by count, or by bytes for an `incoming`
        member that would push its run's payload past Lambda's limit) or its window is over,
        and start every closed one (finishing any start a crash interrupted). The event ids
        started."""
        batch = flow.batch
        assert batch is not None
        pk = _partition(workflow, "batch", key)
        state = state or self.store.batches(pk)
        done = list(state.done)
        if state.open is not None:
            gen, first_ms, ids = state.open
            over = self.clock() * 1000 >= first_ms + batch.window_s * 1000
            heavy = incoming and state.open_bytes + incoming > BATCH_PAYLOAD_BYTES
            if (len(ids) >= batch.size or over or heavy) and self.store.close_batch(pk, gen, ids):
                done.append((gen, ids))
        started: set[str] = set()
        seen: dict[str, str | None] = {}
        for gen, ids in done:
            members = [
                m
                for m in sorted(
                    (state.members[i] for i in ids if i in state.members),
                    key=lambda m: (m.arrival_ms, m.event_id),
                )
                if not self._cancelled(
                    workflow,
                    flow,
                    envelope.event_from_dict(json.loads(m.event)),
                    m.arrival_ms,
                    seen,
                )
            ]
            if members:
                start(_batch_event(gen, [json.loads(m.event) for m in members]))
                started.update(m.event_id for m in members)
            self.store.forget_batch(pk, gen, ids)
        return started

    # -- debounce --------------------------------------------------------------------------------

    def _debounce(self, workflow: str, flow: Flow, event: Event, doc: Mapping[str, Any]) -> str:
        """Note `event` as its key's latest and send a wake-up for when its quiet period ends
        (or the first event's maximum wait, if sooner): that wake-up starts the latest event if
        nothing arrived since (`woken`)."""
        debounce = flow.debounce
        assert debounce is not None
        key = control_key(doc, debounce.key)
        now_ms = int(self.clock() * 1000)
        waiter = Waiter(
            pk=_partition(workflow, "debounce", key),
            workflow=workflow,
            key=key,
            event_id=event.id,
            event=event.to_json(),
            priority=0,
            arrival_ms=now_ms,
        )
        first_ms = self.store.note(waiter, ts=event.ts, now_ms=now_ms)
        if first_ms is not None:  # else a later event is there and has sent its own wake-up
            self.send_wake(workflow, "debounce", key, _debounce_due(debounce, first_ms, now_ms))
        log.info(
            "debounced: event waits for a quiet period",
            extra={"workflow": workflow, "event_id": event.id, "outcome": WAITING, "key": key},
        )
        return WAITING

    def _debounce_woken(self, workflow: str, flow: Flow, key: str, start: Starter) -> int:
        """Start the debounced event of `key` if its quiet period (or maximum wait) is over;
        first finish any start a crash interrupted. The number started."""
        debounce = flow.debounce
        assert debounce is not None
        pk = _partition(workflow, "debounce", key)
        latest, ready = self.store.debounced(pk)
        now_ms = int(self.clock() * 1000)
        if latest is not None:
            waiter, last_ms = latest
            due = _debounce_due(debounce, waiter.arrival_ms, last_ms)
            # Not due: a later event sent the wake-up for its own quiet period.
            if now_ms >= due * 1000 and self.store.close(waiter, last_ms):
                ready.append(waiter)
        begun = 0
        seen: dict[str, str | None] = {}
        for waiter in ready:
            event = envelope.event_from_dict(json.loads(waiter.event))
            if not self._cancelled(workflow, flow, event, waiter.arrival_ms, seen):
                start(event)
                begun += 1
            self.store.started(waiter)
        return begun

    # -- throttle --------------------------------------------------------------------------------

    def _throttle(
        self, workflow: str, flow: Flow, event: Event, doc: Mapping[str, Any], start: Starter
    ) -> str:
        throttle = flow.throttle
        assert throttle is not None
        key = control_key(doc, throttle.key)
        pk = _partition(workflow, "throttle", key)
        now = self.clock()
        begun = window_start(now, throttle.period_s)
        seen = self._seen.get(pk)
        if len(self._seen) > _SEEN_MAX:
            self._seen.clear()
            self._full.clear()
        self._seen[pk] = begun
        # Nothing waits and the window has room: start it now, in one conditional write (sqsd's
        # message is the record until the 200).
        refused: list[Partition] = []
        if self._full.get(pk) != begun and self.store.admit(
            pk,
            event.id,
            limit=throttle.limit,
            window_start=begun,
            period_s=throttle.period_s,
            fresh=None if seen == begun else True,
            unless_waiting=True,
            refused=refused,
        ):
            start(event)
            return START
        waiter = Waiter(
            pk=pk,
            workflow=workflow,
            key=key,
            event_id=event.id,
            event=event.to_json(),
            priority=priority_of(doc, flow.priority),
            arrival_ms=int(now * 1000),
        )
        self.store.hold(waiter)
        # The refusal returned the window: if it is full and a wake-up for its end is on its
        # way, a drain now would start nothing and send nothing (its read is saved).
        full = bool(refused) and refused[0].used(begun) >= throttle.limit
        if full and refused[0].wake_due == begun + throttle.period_s:
            self._full[pk] = begun
        if self._full.get(pk) == begun:
            started: list[str] = []
        else:
            started = self.drain(workflow, flow, key, start, woken_for=None)
        if event.id in started:
            return START
        log.info(
            "throttled: event waits",
            extra={
                "workflow": workflow,
                "event_id": event.id,
                "outcome": WAITING,
                "key": key,
                "priority": waiter.priority,
            },
        )
        return WAITING

    def drain(
        self, workflow: str, flow: Flow, key: str, start: Starter, *, woken_for: int | None
    ) -> list[str]:
        """Start the waiting events of `key` the current window has room for, best rank first;
        if any still wait, make sure a wake-up is on its way (always when this drain is the
        wake-up due at `woken_for`). The ids started."""
        throttle = flow.throttle
        assert throttle is not None
        pk = _partition(workflow, "throttle", key)
        state = self.store.read(pk)
        now = self.clock()
        begun = window_start(now, throttle.period_s)
        free = min(max(0, throttle.limit - state.used(begun)), MAX_STARTS)
        # The held events are read only when some may start (a full window needs only the count).
        order = []
        read = bool(free and state.waiting)
        if read:
            order = sorted(
                self.store.held(pk), key=lambda w: rank(w, int(now * 1000), flow.priority)
            )
        started: list[str] = []
        dropped_here = 0
        seen: dict[str, str | None] = {}
        for waiter in order:
            if len(started) >= free:
                break
            event = envelope.event_from_dict(json.loads(waiter.event))
            if self._cancelled(workflow, flow, event, waiter.arrival_ms, seen):
                self.store.release(waiter)  # no place taken: it never starts
                dropped_here += 1
                continue
            if not self.store.admit(
                pk,
                waiter.event_id,
                limit=throttle.limit,
                window_start=begun,
                period_s=throttle.period_s,
                fresh=state.window_start < begun and not started,
            ):
                break  # a racing worker filled the window
            start(event)
            self.store.release(waiter)
            started.append(waiter.event_id)
        if (len(order) if read else state.waiting) > len(started) + dropped_here:
            due = int(now) if len(started) == MAX_STARTS else begun + throttle.period_s
            self._wake(state, workflow, "throttle", key, due, woken_for=woken_for)
        return started

    # -- wake-ups --------------------------------------------------------------------------------

    def _wake(
        self,
        state: Partition,
        workflow: str,
        control: str,
        key: str,
        due: int,
        *,
        woken_for: int | None,
    ) -> None:
        """Send a wake-up for `due` unless one is already on its way for it (or, for a wake-up
        being handled, unless another was sent after it). Sent first, noted second: a crash in
        between sends one more, never none."""
        if woken_for is None and state.wake_due == due:
            return
        if woken_for is not None and state.wake_due > woken_for:
            return  # a later wake-up is on its way: this chain ends here
        self.send_wake(workflow, control, key, due)
        self.store.woken(_partition(workflow, control, key), due)

    def send_wake(self, workflow: str, control: str, key: str, due: int) -> None:
        wake = Event(
            name=FLOW_WAKE, data={"workflow": workflow, "control": control, "key": key, "due": due}
        )
        self.sqs.send_message(
            QueueUrl=self.queue_url,
            MessageBody=wake.to_json(),
            DelaySeconds=max(0, min(MAX_DELAY_S, math.ceil(due - self.clock()))),
        )

    def woken(self, data: Mapping[str, Any], flows: Mapping[str, Flow], start: Starter) -> int:
        """Handle a wake-up (`sluice/flow.wake`): drain its key. The number started."""
        workflow, key = str(data.get("workflow", "")), str(data.get("key", ""))
        flow, control = flows.get(workflow), data.get("control")
        if flow is not None and flow.throttle is not None and control == "throttle":
            return len(self.drain(workflow, flow, key, start, woken_for=int(data.get("due", 0))))
        if flow is not None and flow.debounce is not None and control == "debounce":
            return self._debounce_woken(workflow, flow, key, start)
        if flow is not None and flow.batch is not None and control == "batch":
            return len(self._batches(workflow, flow, key, start))
        log.warning("wake-up for no declared control ignored", extra={"detail": dict(data)})
        return 0
