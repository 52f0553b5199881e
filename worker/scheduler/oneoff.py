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
  new hop, up to the task's `max_attempts`; then the record ends `failed`.
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
from sluice.scheduling.names import Names
from sluice.scheduling.oneoff import OneOff
from sluice.scheduling.oneoff_records import OneOffRecords, key
from sluice.scheduling.registry import Registry
from worker.scheduler.ledger import Ledger, MemoryLedger, TableLedger
from worker.scheduler.runner import (
    _BROKER_DOWN,
    _LEDGER_DOWN,
    DEFAULT_HEARTBEAT_S,
    DEFAULT_LEASE_S,
    Backoff,
    Clock,
    SendEvent,
    _Base,
    _Channels,
)

log = logging.getLogger("sluice.scheduler")
# A publish the broker refused (a quorum queue not ready yet nacks it) or could not route.
_REFUSED = (pika.exceptions.NackError, pika.exceptions.UnroutableError)
LEDGER_PREFIX = "oneoff#"
CHECK_CANCELLED_S = 60.0
LAST_STRETCHES = 8  # one-offs in their last stretch at once, per process
PREFETCH = 64  # hops further than this from the due time drop a cancelled one-off  # a one-off's key in a process-local ledger (no table)


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
) -> int | None:
    """Send `oneoff` on its next hop (the wait in ms), or to the run queue at once (None);
    confirmed when the channel has confirms on. A wait queue is declared on its first use
    (`declared`: those this connection declared), so a scheduler makes only those it needs."""
    hop = spec.next_hop((oneoff.at - now) * 1000, wait_ms)
    if hop is not None and declared is not None and hop not in declared:
        spec.declare(channel, names, (hop,))
        declared.add(hop)
    channel.basic_publish(
        spec.exchange(names),
        spec.RUN_KEY if hop is None else spec.wait_key(hop),
        oneoff.encode(),
        pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json"
        ),
        mandatory=True,
    )
    return hop


class OneOffRunner(_Base):
    """Consumes the one-off run queue of one scheduler process."""

    def __init__(
        self,
        registry: Registry,
        url: str,
        *,
        names: Names,
        max_ttl_ms: int = spec.RABBITMQ_MAX_TTL_MS,
        send: SendEvent | None = None,
        clock: Clock = time.time,
        ledger: Ledger | None = None,
        records: OneOffRecords | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        heartbeat_s: int = DEFAULT_HEARTBEAT_S,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(url, names, clock, heartbeat_s)
        self.registry, self.send, self.backoff = registry, send, backoff or Backoff()
        self.waits = spec.waits(max_ttl_ms)
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self.records = records
        self.lease_s = lease_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._declared: set[int] = set()  # wait queues this connection declared
        self._pool = ThreadPoolExecutor(max_workers=LAST_STRETCHES, thread_name_prefix="oneoff")

    def _ledger_key(self, oneoff: OneOff) -> str:
        return oneoff.id if self.ledger.shared else LEDGER_PREFIX + oneoff.id

    def serve(self, stop: threading.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            try:
                ch = self._open([])
                spec.declare(ch.work, self.names)
                self._declared = set()
                ch.work.basic_qos(prefetch_count=PREFETCH)
                backoff = 0.2
                for method, _, body in ch.work.consume(
                    spec.run_queue(self.names), inactivity_timeout=0.05
                ):
                    if stop.is_set():
                        break
                    if method is not None:
                        self._handle(method, body)
            except (*_BROKER_DOWN, *_REFUSED) as exc:
                # Unacked, the one-off comes back on the next connection (a copy it may have
                # left on a hop is dropped by its claim).
                log.warning("one-off runner: broker unavailable (%r); reconnecting", exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            except _LEDGER_DOWN as exc:
                log.error("one-off runner: tick ledger unavailable (%s); retrying", exc)
                stop.wait(1.0)
            finally:
                self._close()
        self._pool.shutdown(wait=False, cancel_futures=True)

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
        if spec.next_hop((oneoff.at - now) * 1000, self.waits) is not None:
            # A long wait ahead: drop it now if it was cancelled (the claim would refuse it
            # anyway; the short last hops skip this read, which would cost precision).
            far = oneoff.at - now > CHECK_CANCELLED_S and self.records is not None
            record = self.records.read(oneoff.id) if far and self.records is not None else None
            if record is not None and record.state == "cancelled":
                self.emit(oneoff.task, "cancelled", due=oneoff.due, oneoff=oneoff.id)
            else:
                publish(ch, self.names, oneoff, self.waits, now, self._declared)
            ch.basic_ack(method.delivery_tag)
            return
        # The last stretch runs on the pool, so this thread goes on taking (and hopping) the
        # others meanwhile; what it sends on the broker goes back through this thread's loop.
        self._pool.submit(self._last_stretch, self._ch, method.delivery_tag, oneoff)

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

    def _run(self, chans: _Channels, tag: int, oneoff: OneOff) -> None:
        name = oneoff.task

        def ack() -> None:
            if self._ch is chans:
                chans.work.basic_ack(tag)

        lease_ms = round(self.lease_s * 1000)
        now = self.clock()
        # The claim is made before the due time, within the last stretch. Its lease only bounds
        # the claim's life: no other claim of this one-off's item exists but its own retry.
        claimed = self.ledger.claim(
            self._ledger_key(oneoff),
            oneoff.key,
            round(now * 1000),
            max(lease_ms, round((oneoff.at - now) * 1000) + lease_ms),
            self.holder,
        )
        if claimed is None:
            # Cancelled, or started already (a second copy, a redelivery, another process).
            self._emit(chans, name, "duplicate", due=oneoff.due, oneoff=oneoff.id)
            self._on_loop(chans, ack)
            return
        rest = oneoff.at - self.clock()
        if rest > 0:
            time.sleep(rest)  # the last stretch (under ~0.1 s), on this clock
        lateness = self.clock() - oneoff.at
        self._emit(chans, name, "started", due=oneoff.due, lateness_s=lateness,
                   attempt=oneoff.attempt, oneoff=oneoff.id)  # fmt: skip
        outcome, error = self._act_safely(oneoff)
        retry = outcome == "transient" and oneoff.attempt < self._max_attempts(name)
        key = self._ledger_key(oneoff)
        if not self.ledger.finish(key, claimed.fence, "retry" if retry else "done"):
            self._emit(chans, name, "fenced", due=oneoff.due, oneoff=oneoff.id, outcome=outcome)
            self._on_loop(chans, ack)
            return
        if outcome == "succeeded":
            self._emit(chans, name, "succeeded", due=oneoff.due, oneoff=oneoff.id)
        elif retry:
            delay = self.backoff.delay_s(oneoff.attempt + 1)
            # The same tick (released as `retry`, which the ledger admits once more and a
            # cancel still stops), run after the delay.
            again = replace(oneoff, attempt=oneoff.attempt + 1, retry_at=self.clock() + delay)

            def retry_then_ack() -> None:
                if self._ch is chans:
                    publish(chans.work, self.names, again, self.waits, self.clock(), self._declared)
                    chans.work.basic_ack(tag)

            self._emit(chans, name, "failed", due=oneoff.due, oneoff=oneoff.id,
                       error_class="transient", error=error, attempt=oneoff.attempt,
                       retry_in_s=delay)  # fmt: skip
            self._on_loop(chans, retry_then_ack)
            return
        else:
            self._emit(chans, name, "failed", due=oneoff.due, oneoff=oneoff.id,
                       error_class=outcome, error=error, attempt=oneoff.attempt)  # fmt: skip
        if self.records is not None:
            ended = "succeeded" if outcome == "succeeded" else "failed"
            self.records.conclude(oneoff.id, claimed.fence, ended)
        self._on_loop(chans, ack)

    def _max_attempts(self, task: str) -> int:
        return self.registry.get(task).max_attempts if task in self.registry else 1

    def _act(self, oneoff: OneOff) -> None:
        if oneoff.task not in self.registry:
            raise BusinessError(f"one-off {oneoff.id}: no task {oneoff.task!r} is registered")
        task = self.registry.get(oneoff.task)
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
