"""The one-off runner: takes one-offs off the run queue, sends each on its next hop, and runs it
at its due time, once (sluice/scheduling/oneoff.py has the design).

Every scheduler process consumes the run queue (competing consumers: the tick ledger, not the
broker, makes a one-off run once). For each one-off it takes:

- more than a hop before its due time: publish it (confirmed) to the wait queue of the largest
  hop that ends before it is due, then ack; a one-off whose record says `cancelled` is dropped
  here if it is over a minute away. A crash between the two leaves two copies; both arrive, one claim wins.
- within the last hop: claim it in the ledger (its record is its ledger item), wait out the rest
  in this process, run the task's action or send its event (id `at-<id>`), finish the claim on
  its fence, then ack. A claim the ledger refuses (cancelled, started or run by another copy or
  process) drops it (event `duplicate`). A transient failure is retried after the backoff by a
  new hop, up to the task's `max_attempts`; then the record ends `failed`. A one-off later
  than its task's `max_lateness_s` is not run: its record ends `missed` (event `missed`).

A process runs the one-offs of its consumer group's tasks (the runtime registry: declared tasks
and those added at run time): it forwards the last stretch of another group's one-off to that
group's run queue, which only that group's processes consume (and run, whatever their registry
says, so a one-off never goes back and forth). Tasks are looked up in the process's runtime
registry, read again from the table when a one-off names a task it does not know yet.

The sweep (OneOffSweeper, one leader per prefix by an exclusive queue, on a thread of the
one-off runner) reads the records every `sweep_s` and sends again each one not claimed and not
seen for `grace_s` after its `expect` (its message was lost: a purged queue, a replaced broker);
the copy finds its way like any other and the claim keeps it to one run. A copy that still finds
no consumer is sent again after twice the wait each time.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pika

from sluice.errors import BusinessError
from sluice.scheduling import oneoff as spec
from sluice.scheduling.names import START_LATENESS, Names
from sluice.scheduling.oneoff import OneOff
from sluice.scheduling.oneoff_records import OneOffRecords, key
from sluice.scheduling.registry import GROUPS, PeriodicTask, Registry
from worker.scheduler.connection import serve_for
from worker.scheduler.control import LiveRegistry
from worker.scheduler.ledger import Claimed, Ledger, MemoryLedger, TableLedger
from worker.scheduler.runner import (
    _BROKER_DOWN,
    DEFAULT_HEARTBEAT_S,
    DEFAULT_LEASE_S,
    Backoff,
    Clock,
    SendEvent,
    _Base,
    _Channels,
    reconnecting,
)

log = logging.getLogger("sluice.scheduler")
LEDGER_PREFIX = "oneoff#"
CHECK_CANCELLED_S = 60.0  # hops further than this from the due time drop a cancelled one-off
LAST_STRETCHES = 8  # one-offs in their last stretch at once, per process
PREFETCH = 64
# The sweep: how often it reads the records, and how long after its `expect` a one-off not seen
# is taken for lost (hop transit is milliseconds; this covers a busy consumer or a short
# broker restart, whose copies would only be dropped by their claim). A lost one-off is sent
# again at most SWEEP_GRACE_S + SWEEP_S after it should have been seen.
SWEEP_S = 30.0
SWEEP_GRACE_S = 10.0
# After taking the sweep's lead (a start, or the broker's return), a second sweep this long after
# takes for lost what was expected before then and is still not seen: messages held up by the
# outage arrive within about a second of the return, except those RabbitMQ 4.0 parks (a message
# it dead-letters while booting, before the exchange it goes to is back, waits up to two minutes:
# "Cannot forward any dead-letter messages ... does not exist" in its log).
RETURN_SETTLE_S = 3.0
SWEEP_BACKOFF_CAP_S = 3600.0


class OneOffLedger(TableLedger):
    """The tick ledger on one-off records: the same claims, keyed by the one-off's id."""

    def _key(self, task: str) -> dict[str, Any]:
        return key(self.prefix, task)


def publish(
    channel: Any,
    names: Names,
    oneoff: OneOff,
    wait_ms: tuple[int, ...],
    now: float,
    declared: set[int] | None = None,
    group: str | None = None,
) -> int | None:
    """Send `oneoff` on its next hop (the wait in ms), or at once (None) to the run queue of
    `group` (default: the shared one); confirmed when the channel has confirms on. A wait queue
    is declared on its first use (`declared`: those this connection declared), so a scheduler
    makes only those it needs."""
    hop = spec.next_hop((oneoff.at - now) * 1000, wait_ms)
    if hop is not None and declared is not None and hop not in declared:
        spec.declare(channel, names, (hop,))
        declared.add(hop)
    run_key = spec.RUN_KEY if group is None else spec.group_key(group)
    channel.basic_publish(
        spec.exchange(names),
        run_key if hop is None else spec.wait_key(hop),
        oneoff.encode(),
        pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json"
        ),
        mandatory=True,
    )
    return hop


class OneOffRunner(_Base):
    """Consumes the one-off run queues of one scheduler process: the shared one and its group's."""

    def __init__(
        self,
        registry: Registry,
        url: str,
        *,
        names: Names,
        group: str = GROUPS[0],
        max_ttl_ms: int = spec.RABBITMQ_MAX_TTL_MS,
        send: SendEvent | None = None,
        clock: Clock = time.time,
        ledger: Ledger | None = None,
        records: OneOffRecords | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        heartbeat_s: int = DEFAULT_HEARTBEAT_S,
        backoff: Backoff | None = None,
        sweep_s: float = SWEEP_S,
        sweep_grace_s: float = SWEEP_GRACE_S,
    ) -> None:
        super().__init__(url, names, clock, heartbeat_s)
        self.registry, self.send, self.backoff = registry, send, backoff or Backoff()
        self.group = group
        self.waits = spec.waits(max_ttl_ms)
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self.records = records
        self.lease_s = lease_s
        self.sweep_s, self.sweep_grace_s = sweep_s, sweep_grace_s
        # The process's runtime registry (set by the Scheduler's builder): tasks added, changed
        # or moved at run time. Without it, the registry in code.
        self.live: LiveRegistry | None = None
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._declared: set[int] = set()  # wait queues this connection declared
        self._pool = ThreadPoolExecutor(max_workers=LAST_STRETCHES, thread_name_prefix="oneoff")

    def _ledger_key(self, oneoff: OneOff) -> str:
        return oneoff.id if self.ledger.shared else LEDGER_PREFIX + oneoff.id

    def task(self, name: str) -> PeriodicTask | None:
        """Task `name` as it runs now (None: not registered, or removed); a name this process
        does not know makes it read the runtime registry again (a task just added)."""
        if self.live is None:
            return self.registry.get(name) if name in self.registry else None
        for again in (False, True):
            if again:
                self.live.refresh()
            for entry in self.live.entries:
                if entry.task.name == name and not entry.disabled:
                    return entry.task
        return None

    def serve(self, stop: threading.Event) -> None:
        sweeper = None
        if self.records is not None:
            sweeper = threading.Thread(
                target=OneOffSweeper(self).serve, args=(stop,), name="oneoff-sweep", daemon=True
            )
            sweeper.start()
        # Unacked, a one-off comes back on the next connection (a copy it may have left on a
        # hop is dropped by its claim).
        reconnecting(stop, "one-off runner", self._consume, self._close, ledger_wait_s=1.0)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if sweeper is not None:
            sweeper.join(5)

    def _consume(self, stop: threading.Event, connected: Callable[[], None]) -> None:
        ch = self._open([])
        spec.declare(ch.work, self.names, groups=GROUPS)
        self._declared = set()
        ch.work.basic_qos(prefetch_count=PREFETCH)
        connected()
        for queue in (spec.run_queue(self.names), spec.group_queue(self.names, self.group)):
            ch.work.basic_consume(queue, self._on_message)
        while not stop.is_set():
            ch.connection.process_data_events(time_limit=0.05)

    def _on_message(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        self._handle(method, body)

    def _handle(self, method: Any, body: bytes) -> None:
        assert self._ch is not None
        ch = self._ch.work
        try:
            oneoff = OneOff.decode(body)
        except ValueError:
            log.error("one-off runner: unreadable message %r dropped", body[:200])
            ch.basic_reject(method.delivery_tag, requeue=False)
            return
        if not self._declared:
            # Every wait queue, on this connection's first one-off: a scheduler that never gets
            # one makes none, and no hop of a due one-off waits for a queue's declaration.
            spec.declare(ch, self.names, self.waits)
            self._declared.update(self.waits)
        now = self.clock()
        hop = spec.next_hop((oneoff.at - now) * 1000, self.waits)
        if hop is not None:
            # A long wait ahead: drop it now if it was cancelled (the claim would refuse it
            # anyway; the short last hops skip this read, which would cost precision).
            far = oneoff.at - now > CHECK_CANCELLED_S and self.records is not None
            record = self.records.read(oneoff.id) if far and self.records is not None else None
            if record is not None and record.state == "cancelled":
                self.emit(oneoff.task, "cancelled", due=oneoff.due, oneoff=oneoff.id)
            else:
                publish(ch, self.names, self._expected(oneoff, now, hop), self.waits, now,
                        self._declared)  # fmt: skip
            ch.basic_ack(method.delivery_tag)
            return
        task = self.task(oneoff.task)
        mine = method.routing_key == spec.group_key(self.group)
        if task is not None and task.group != self.group and not mine:
            # Another group's task: its processes run it (a forward takes milliseconds).
            oneoff = self._expected(oneoff, now, None)
            publish(ch, self.names, oneoff, self.waits, now, self._declared, group=task.group)
            ch.basic_ack(method.delivery_tag)
            return
        # The last stretch runs on the pool, so this thread goes on taking (and hopping) the
        # others meanwhile; what it sends on the broker goes back through this thread's loop.
        self._pool.submit(self._last_stretch, self._ch, method.delivery_tag, oneoff)

    def _expected(self, oneoff: OneOff, now: float, hop: int | None) -> OneOff:
        """`oneoff` as sent now on `hop`, carrying when it is next expected; a time the sweep
        needs (spec.worth_noting) is written to its record first, so the sweep does not take it
        for lost. Only hops of MARK_HOP_MS or more, and a first handling, can write."""
        expect = spec.expect_after(oneoff.at, now, hop, self.waits)
        if self.records is not None and spec.worth_noting(
            expect, oneoff.expect, self.sweep_grace_s
        ):
            self.records.expect(oneoff.id, round(expect * 1000))
            return replace(oneoff, expect=expect)
        return oneoff

    def _last_stretch(self, chans: _Channels, tag: int, oneoff: OneOff) -> None:
        try:
            self._run(chans, tag, oneoff)
        except Exception:  # the message goes back when the connection closes: claimed once
            log.exception("one-off %s: run failed in the scheduler", oneoff.id)

    def _on_loop(self, chans: _Channels, call: Callable[[], Any]) -> None:
        """Run `call` on the consumer's thread (pika's channels are not thread-safe)."""
        try:
            chans.connection.add_callback_threadsafe(call)
        except _BROKER_DOWN as exc:  # unacked: redelivered, and the ledger refuses it then
            log.warning("one-off runner: broker gone before an ack (%s)", exc)

    def _emit(self, chans: _Channels, task: str, event: str, **fields: Any) -> None:
        self._on_loop(
            chans, lambda: self.emit(task, event, **fields) if self._ch is chans else None
        )

    def claim(self, oneoff: OneOff) -> Claimed | None:
        """Claim `oneoff`'s tick (None: cancelled, or started already). Its lease only bounds
        the claim's life: no other claim of this one-off's item exists but its own retry."""
        lease_ms = round(self.lease_s * 1000)
        now = self.clock()
        return self.ledger.claim(
            self._ledger_key(oneoff),
            oneoff.key,
            round(now * 1000),
            max(lease_ms, round((oneoff.at - now) * 1000) + lease_ms),
            self.holder,
        )

    def too_late(self, oneoff: OneOff, now: float) -> float | None:
        """How late `oneoff` is, when that is past its task's lateness bound (else None)."""
        task = self.task(oneoff.task)
        bound = task.max_lateness_s if task is not None else None
        late = now - oneoff.at
        return late if bound is not None and late > bound else None

    def miss(self, oneoff: OneOff, claimed: Claimed) -> bool:
        """End a claimed one-off unrun: its record says `missed`."""
        if not self.ledger.finish(self._ledger_key(oneoff), claimed.fence, "done"):
            return False
        if self.records is not None:
            self.records.conclude(oneoff.id, claimed.fence, "missed")
        return True

    def _run(self, chans: _Channels, tag: int, oneoff: OneOff) -> None:
        name = oneoff.task

        def ack() -> None:
            if self._ch is chans:
                chans.work.basic_ack(tag)

        # The claim is made before the due time, within the last stretch.
        claimed = self.claim(oneoff)
        if claimed is None:
            # Cancelled, or started already (a second copy, a redelivery, another process).
            self._emit(chans, name, "duplicate", due=oneoff.due, oneoff=oneoff.id)
            self._on_loop(chans, ack)
            return
        late = self.too_late(oneoff, self.clock())
        if late is not None:
            if self.miss(oneoff, claimed):
                self._emit(chans, name, "missed", due=oneoff.due, oneoff=oneoff.id,
                           lateness_s=late)  # fmt: skip
            self._on_loop(chans, ack)
            return
        rest = oneoff.at - self.clock()
        if rest > 0:
            time.sleep(rest)  # the last stretch (under ~0.1 s), on this clock
        lateness = self.clock() - oneoff.at
        self._emit(chans, name, "started", due=oneoff.due, lateness_s=lateness,
                   attempt=oneoff.attempt, oneoff=oneoff.id)  # fmt: skip
        outcome, error = self._act_safely(oneoff)
        start = {START_LATENESS: lateness}  # the status queue keeps outcomes only
        retry = outcome == "transient" and oneoff.attempt < self._max_attempts(name)
        key = self._ledger_key(oneoff)
        again, delay = None, 0.0
        if retry:
            delay = self.backoff.delay_s(oneoff.attempt + 1)
            # The same tick (released as `retry`, which the ledger admits once more and a
            # cancel still stops), run after the delay; its record knows it first, so the
            # sweep sends it again as this retry if its message is lost.
            now = self.clock()
            again = replace(oneoff, attempt=oneoff.attempt + 1, retry_at=now + delay)
            hop = spec.next_hop((again.at - now) * 1000, self.waits)
            again = replace(again, expect=spec.expect_after(again.at, now, hop, self.waits))
            if self.records is not None:
                self.records.retrying(again, claimed.fence)
        if not self.ledger.finish(key, claimed.fence, "retry" if retry else "done"):
            self._emit(chans, name, "fenced", due=oneoff.due, oneoff=oneoff.id, outcome=outcome)
            self._on_loop(chans, ack)
            return
        if outcome == "succeeded":
            self._emit(chans, name, "succeeded", due=oneoff.due, oneoff=oneoff.id, **start)
        elif again is not None:

            def retry_then_ack() -> None:
                if self._ch is chans:
                    publish(chans.work, self.names, again, self.waits, self.clock(), self._declared)
                    chans.work.basic_ack(tag)

            self._emit(chans, name, "failed", due=oneoff.due, oneoff=oneoff.id,
                       error_class="transient", error=error, attempt=oneoff.attempt,
                       retry_in_s=delay, **start)  # fmt: skip
            self._on_loop(chans, retry_then_ack)
            return
        else:
            self._emit(chans, name, "failed", due=oneoff.due, oneoff=oneoff.id,
                       error_class=outcome, error=error, attempt=oneoff.attempt,
                       **start)  # fmt: skip
        if self.records is not None:
            ended = "succeeded" if outcome == "succeeded" else "failed"
            self.records.conclude(oneoff.id, claimed.fence, ended)
        self._on_loop(chans, ack)

    def _max_attempts(self, name: str) -> int:
        task = self.task(name)
        return task.max_attempts if task is not None else 1

    def _act(self, oneoff: OneOff) -> None:
        task = self.task(oneoff.task)
        if task is None:
            raise BusinessError(f"one-off {oneoff.id}: no task {oneoff.task!r} is registered")
        if task.action is not None:
            task.action(oneoff.tick())
            return
        if self.send is None:
            raise BusinessError(f"task {task.name} sends events but no sender is configured")
        self.send(oneoff.event(task))

    def _act_safely(self, oneoff: OneOff) -> tuple[str, str]:
        """Run it here (a pool thread): its outcome and error."""
        try:
            self._act(oneoff)
            return "succeeded", ""
        except BusinessError as exc:
            return "business", repr(exc)
        except Exception as exc:  # TransientError, and unclassified failures, are transient
            return "transient", repr(exc)


class OneOffSweeper(_Base):
    """Sends again the one-offs whose messages were lost, while it holds the sweep's leader
    lock (an exclusive queue: it dies with this connection, and another process takes it)."""

    def __init__(self, runner: OneOffRunner) -> None:
        super().__init__(runner.url, runner.names, runner.clock, runner.heartbeat_s)
        assert runner.records is not None
        self.runner, self.records = runner, runner.records
        self.lifecycle = runner.lifecycle
        self._declared: set[int] = set()

    def serve(self, stop: threading.Event) -> None:
        wait = self.runner.sweep_s
        reconnecting(stop, "one-off sweep", self._lead, self._close, ledger_wait_s=wait)

    def _lead(self, stop: threading.Event, connected: Callable[[], None]) -> None:
        ch = self._open([])
        try:
            ch.connection.channel().queue_declare(
                spec.sweeper_queue(self.names), exclusive=True, auto_delete=True
            )
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 405:  # RESOURCE_LOCKED: another process sweeps
                raise
            connected()
            stop.wait(self.runner.sweep_s)
            return
        spec.declare(ch.work, self.names, groups=GROUPS)
        self._declared = set()
        connected()
        # On taking the lead it sweeps at once, again RETURN_SETTLE_S later with that as the grace
        # (a one-off expected while the broker was away whose message did not come back with it
        # is sent again then, not up to a grace and a sweep period later), then every sweep_s.
        self.sweep()
        settle = min(RETURN_SETTLE_S, self.runner.sweep_grace_s, self.runner.sweep_s)
        serve_for(ch.connection, settle, stop)
        while not stop.is_set():
            self.sweep(grace_s=settle)
            serve_for(ch.connection, self.runner.sweep_s, stop)
            settle = self.runner.sweep_grace_s

    def sweep(self, grace_s: float | None = None) -> list[str]:
        """Send again (or end `missed`) every one-off not seen `grace_s` (default: the sweep's
        grace) after it was expected; the ids sent again."""
        assert self._ch is not None
        now = self.clock()
        grace = self.runner.sweep_grace_s if grace_s is None else grace_s
        sent = []
        for record in self.records.all():
            if not record.lost(now, grace):
                continue
            oneoff = record.oneoff
            if self.runner.too_late(oneoff, now) is not None:
                self._miss(oneoff, now)
                continue
            # The next look: after the grace, doubled for each send that was not seen either
            # (a copy that waits for a consumer group with no process is not sent without end).
            wait = min(self.runner.sweep_grace_s * 2**record.swept, SWEEP_BACKOFF_CAP_S)
            expect = spec.swept_expect(oneoff.at, now, self.runner.waits, wait)
            if not self.records.swept(record, round(expect * 1000)):
                continue  # a runner saw it meanwhile: not lost
            copy = replace(oneoff, expect=expect)
            publish(self._ch.work, self.names, copy, self.runner.waits, now, self._declared)
            log.warning("one-off %s (%s): message lost; sent again", oneoff.id, oneoff.task)
            self.emit(oneoff.task, "swept", due=oneoff.due, oneoff=oneoff.id,
                      lateness_s=now - oneoff.at, swept=record.swept + 1)  # fmt: skip
            sent.append(oneoff.id)
        return sent

    def _miss(self, oneoff: OneOff, now: float) -> None:
        claimed = self.runner.claim(oneoff)
        if claimed is not None and self.runner.miss(oneoff, claimed):
            self.emit(oneoff.task, "missed", due=oneoff.due, oneoff=oneoff.id,
                      lateness_s=now - oneoff.at)  # fmt: skip
