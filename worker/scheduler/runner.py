"""The broker scheduler: one runner per task, one reconciler, lifecycle events on the control exchange.

A process's runners share one Consumer: one connection and one I/O thread for all their tasks,
ticks handled in a bounded pool, publisher confirms pipelined across tasks.
Runner (any number of processes; the processor queue's single active consumer picks one):
receive the task's token, pick the latest due tick, claim it in the tick ledger
(worker/scheduler/ledger.py), run it while renewing the claim's lease, finish the claim on its
fence, publish the next token (due on the grid, not counted from the end of the run), then ack.
The token is the only message of its task, and the ledger admits a tick once and only when no
other claim is live, so runs never overlap and no tick is started twice.
Reconciler (one leader, chosen by an exclusive queue): a task whose token is nowhere to be seen
and which shows no activity for a quiet window gets a new token; a spare token that results is
dropped by the ledger (its tick is given out once), so a re-seed can never make two runs of one
tick.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pika
import pika.exceptions

from sluice.envelope import Event
from sluice.errors import BusinessError, TransientError
from sluice.scheduling.names import (
    START_LATENESS,
    STATUS_EVENTS,
    STATUS_SUCCESS_EVERY_S,
    Names,
    expiration_ms,
    quiet_window_s,
)
from sluice.scheduling.overrides import Entry, OverrideStore
from sluice.scheduling.registry import GROUPS, OVERLAP, PeriodicTask, Registry, Tick, Token
from sluice.scheduling.schedule import latest_due, next_due
from sluice.settings import SchedulerSettings
from worker.scheduler.broker_metrics import Lifecycle
from worker.scheduler.connection import (
    _BROKER_DOWN,
    _LEDGER_DOWN,
    _OPENING,
    IDLE_WAKE_S,
    _connect,
    reconnecting,
    serve_for,
)
from worker.scheduler.control import LiveRegistry, Prompts
from worker.scheduler.ledger import Claim, Ledger, MemoryLedger
from worker.scheduler.overlap import UNKNOWN, OverlapGuard, Overlapping
from worker.scheduler.topology import declare

log = logging.getLogger("sluice.scheduler")
Clock = Callable[[], float]
SendEvent = Callable[[Event], Any]

_DEFAULTS = SchedulerSettings.model_fields
# The lifecycle events that announce a task's next token (and carry when it falls due).
_TOKEN_EVENTS = frozenset({"scheduled", "seeded", "reseeded", "rescheduled", "failed"})
# The events the reconciler's listener is bound to: those that announce a token, and those that
# show a runner holding one (a delivered token is out of the queues' count). Every other event
# is followed on the same channel by a token's announcement (an outcome by `scheduled`), leaves
# the token where the count sees it, or ends the task's token; routed to the listener, each cost
# the broker an enqueue and this process a callback (bench/scheduler_bench.py, many tasks).
# `started` is not needed either: a run reports `running` every half quiet window at most (its
# beat), so a token held by a run is never silent for a whole window, the least silence after
# an empty count that makes the reconciler re-seed; listening to it cost a listener delivery per
# tick.
LISTENED_EVENTS = _TOKEN_EVENTS | {"running", "resumed"}
DEFAULT_LEASE_S: float = _DEFAULTS["lease_s"].default
DEFAULT_HEARTBEAT_S: int = _DEFAULTS["heartbeat_s"].default
# A busy Consumer's I/O thread pauses this long between two turns of pika's loop, so that one
# wake-up serves what arrived meanwhile (deliveries, confirms, the handlers' requests) instead
# of one each: pika's loop costs about as much per wake-up as per message. It pauses only with
# more than one tick under way (a lone task's chain would only wait) and when the loop came back
# within the pause (events arrive faster than that). 1,000 tasks at 1 s on one consumer
# (bench/scheduler_bench.py, alternating runs): 0.60 ms of CPU a tick without, 0.48 with 1 ms,
# lateness unchanged (p50 8 ms); 2 ms gave 0.44 but p50 11 ms, 5 ms 0.38 and p50 20 ms.
COALESCE_S = 0.001
# With TaskRunner.hold_s, a token that goes back through the hatchery is sent this long ahead of
# its tick at most (half the wait when that is shorter), and kept where it lands until the tick
# falls due: the broker's transit (tens of ms at p99 when busy) does not make the tick late.
CYCLE_LEAD_S = 1.0
# A process's Consumer: threads handling deliveries (a handler waits for its tick's run, not for
# its next token's confirm) and threads running actions; ticks beyond them wait their turn.
HANDLERS = 64
ACTIONS = 64
# A stopping process lets the ticks under way finish this long (their outcome events, next
# tokens and acks go out on the connection); a run still going then is left to the next owner
# of its token, as when the process dies (Scheduler.stop waits 5 s for each thread).
STOP_GRACE_S = 3.0
# How long a runner waits for the broker to answer a request before treating it as gone.
CONFIRM_TIMEOUT_S = 30.0
# A token whose handling the broker refused goes back to its queue after this long.
REQUEUE_S = 0.5
# Channels the reconciler's counts are pipelined over (Reconciler.inventories).
COUNT_LANES = 8
# The most tokens' counts (passive declares) the reconciler asks of the broker a second. Each
# task wants one every half of its quiet window (4,000 a second for 1,000 tasks at 1 s); counted
# as fast as the broker answered, they took the broker from the ticks (1,000 tasks at 1 s on the
# shared 2-core machine: 797 ticks/s at 437 counts a second, against 992-1,007 at 1,000-1,150;
# bench/scheduler_bench.py, many tasks). Beyond the budget each task is counted every
# tasks / budget seconds: a lost token of 1,000 tasks is then seen within about a second.
COUNT_BUDGET_PER_S = 1000.0


@dataclass(frozen=True)
class Backoff:
    """How long a tick that failed transiently waits before attempt `n` (n >= 2)."""

    first_s: float = _DEFAULTS["retry_delay_s"].default
    factor: float = _DEFAULTS["retry_backoff"].default

    def delay_s(self, attempt: int) -> float:
        return self.first_s * self.factor ** max(attempt - 2, 0)

    @classmethod
    def of(cls, settings: SchedulerSettings) -> Backoff:
        return cls(settings.retry_delay_s, settings.retry_backoff)


def freeze_heap() -> None:
    """Leave what exists once the scheduler has started (modules, classes, the registry and its
    runners) out of the garbage collector's full passes from now on (gc.freeze): a full pass
    holds the GIL, so every tick waits for it. 1,000 tasks at 0.5 s on one consumer
    (bench/scheduler_bench.py, many tasks): full passes of 55-115 ms every few seconds without,
    8-11 ms with; they set the tick lateness's p99 once the broker had no part in most ticks."""
    gc.collect()
    gc.freeze()


def broker_url(settings: SchedulerSettings, *, secrets: Any = None) -> str | None:
    """The broker's AMQP(S) URL, or None when no broker is configured.

    A full `broker_url` wins (tests, local runs); otherwise the broker's amqps://host:5671
    endpoint with the credentials of the secret `broker_secret_arn` names: on AWS the
    scheduler's own user, which may touch only the scheduler's names (never the broker's
    administrator, whose secret this process cannot read).
    """
    if settings.broker_url:
        return settings.broker_url
    endpoint, secret_arn = settings.broker_endpoint, settings.broker_secret_arn
    if not endpoint or not secret_arn:
        return None
    if secrets is None:
        import boto3  # only on the instance: the secret is read once, at start

        secrets = boto3.client("secretsmanager")
    secret = json.loads(secrets.get_secret_value(SecretId=secret_arn)["SecretString"])
    user, password = quote(secret["username"], safe=""), quote(secret["password"], safe="")
    scheme, _, hostport = endpoint.partition("://")
    return f"{scheme or 'amqps'}://{user}:{password}@{hostport}"


def token_route(names: Names, delay: float) -> tuple[str, pika.BasicProperties]:
    """Where a token that should arrive in `delay` seconds is published, and its properties:
    through the task's hatchery for that long (its TTL), or, already due, straight to the
    processor (waiting out a zero TTL adds only latency)."""
    props = pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,
        content_type="application/json",
        expiration=expiration_ms(delay) if delay > 0 else None,
    )
    return (names.scheduler_exchange if delay > 0 else names.processor_exchange), props


def event_properties(status_key: str | None = None) -> pika.BasicProperties:
    """A lifecycle event's properties (transient: information, not state); `status_key` in its
    BCC header also routes it to the task's status queue (Names.status_key)."""
    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Transient,
        headers={"BCC": [status_key]} if status_key else None,
    )


@dataclass
class _Channels:
    connection: pika.BlockingConnection
    work: Any  # confirms on: tokens and dead-lettered ticks
    control: Any  # no confirms: lifecycle events are information, not state
    lanes: list[Any] = field(default_factory=list)  # channel.Channel: the counts in flight


class _Base:
    def __init__(self, url: str, names: Names, clock: Clock, heartbeat_s: int) -> None:
        self.url, self.names, self.clock, self.heartbeat_s = url, names, clock, heartbeat_s
        self._ch: _Channels | None = None
        self.lifecycle: Lifecycle | None = None  # counts the events for the metrics

    def _open(self, tasks: list[PeriodicTask]) -> _Channels:
        with _OPENING:
            connection = _connect(self.url, self.heartbeat_s)
            work = connection.channel()
            declare(work, self.names, tasks)
            work.confirm_delivery()
            self._ch = _Channels(connection, work, connection.channel())
        return self._ch

    def _close(self) -> None:
        if self._ch is not None:
            # A broken connection may fail to close: nothing is left to release then.
            with contextlib.suppress(Exception):
                self._ch.connection.close()
        self._ch = None

    def emit(self, task: str, event: str, **fields: Any) -> None:
        """A lifecycle event on the control exchange (routing key `<task>.<event>`)."""
        body = {"task": task, "event": event, "at": self.clock(), **fields}
        if self.lifecycle is not None:
            self.lifecycle.record(task, event, fields)
        assert self._ch is not None
        # Queued on the connection, not flushed: it leaves with the process's next write (the
        # token's publish, the ack, or the flush before waiting for a run). A flush per event
        # was a round of pika's I/O loop each, most of a tick's CPU (bench-scheduler, many).
        self._ch.control._impl.basic_publish(
            self.names.control_exchange,
            f"{task}.{event}",
            json.dumps(body, separators=(",", ":")).encode(),
            event_properties(self.names.status_key(task) if event in STATUS_EVENTS else None),
        )

    def publish_token(self, token: Token, delay: float | None = None) -> None:
        """A task's token, through its hatchery for `delay` seconds (default: until its tick is
        due); the delivery being handled is acked only once the broker confirms it (`_ack`)."""
        assert self._ch is not None
        exchange, props = token_route(
            self.names, token.due - self.clock() if delay is None else delay
        )
        self._ch.work.basic_publish(exchange, token.task, token.encode(), props, mandatory=True)

    def inventories(self, tasks: list[str]) -> dict[str, int]:
        """Tokens of each task in sight: its hatchery's count, or when that is 0 its processor
        queue's (callers ask only whether there is one; a token waits most of its period in the
        hatchery, so asking the processor queue too is mostly a passive declare for nothing).

        The passive declares are pipelined over COUNT_LANES channels (pika sends a channel's
        next synchronous request only once the last one is answered). One blocking declare at a
        time cost the reconciler 0.3-0.5 ms of CPU each under load and a round trip each, so with
        1,000 tasks at 1 s its sweep took 3-9 s instead of its quarter second and a lost token
        waited that long to be seen (bench/scheduler_bench.py, many tasks: counts per second and
        CPU by thread)."""
        assert self._ch is not None
        ch = self._ch
        while len(ch.lanes) < COUNT_LANES:
            ch.lanes.append(ch.connection.channel()._impl)
        counts: dict[str, int] = {}
        todo = iter(tasks)
        failed: list[BaseException] = []

        def ask(lane: Any) -> None:
            task = next(todo, None)
            if task is not None:
                count_in(lane, task, self.names.hatchery(task), hatchery=True)

        def count_in(lane: Any, task: str, queue: str, *, hatchery: bool) -> None:
            def answered(frame: Any) -> None:
                count = frame.method.message_count
                if count or not hatchery:
                    counts[task] = count
                    if len(counts) == len(tasks):
                        # A ready event ends the wait below now (an answer on a channel's own
                        # callback leaves process_data_events running out its time limit).
                        ch.connection.add_callback_threadsafe(lambda: None)
                    ask(lane)
                else:
                    count_in(lane, task, self.names.processor(task), hatchery=False)

            try:
                lane.queue_declare(queue, passive=True, callback=answered)
            except Exception as exc:  # a closed lane: the sweep fails, the session reconnects
                failed.append(exc)

        for lane in ch.lanes:
            ask(lane)
        deadline = time.monotonic() + CONFIRM_TIMEOUT_S
        while len(counts) < len(tasks):
            closed = next((lane for lane in ch.lanes if lane.is_closed), None)
            if failed or closed is not None:
                raise failed[0] if failed else pika.exceptions.ChannelClosed(0, "count lane closed")
            if time.monotonic() > deadline:
                raise pika.exceptions.AMQPConnectionError("the broker did not answer the counts")
            ch.connection.process_data_events(time_limit=IDLE_WAKE_S)
        return counts


class _Link:
    """Nothing to talk to: a TaskRunner not yet given to a Consumer."""

    epoch = -1


class Consumer:
    """One connection, and one I/O thread, for every TaskRunner of a process.

    The I/O thread owns the connection (pika's is not thread-safe): it receives every task's
    token, hands each to its runner in the handler pool, and does what runners ask of the broker
    (publish, ack, count a task's tokens), queued through one outbox that wakes it once however
    many requests wait. Publisher confirms are pipelined and nobody waits for them: a runner's
    ack is sent by the I/O thread when its next token's confirm arrives (`ack`), so the order a
    runner keeps (its next token confirmed, then the old one acked) costs the task a round trip
    but holds no thread. Every request
    carries the connection's epoch: an ack or a publish meant for a connection that is gone is
    refused (delivery tags belong to their channel), and the token it concerned comes back on
    the next connection as before. A thousand tasks cost one connection and a bounded number of
    threads (bench/scheduler_bench.py, many tasks: one connection per task spent most of a
    tick's CPU in pika's blocking loop).
    """

    def __init__(
        self,
        url: str,
        *,
        names: Names,
        heartbeat_s: int = DEFAULT_HEARTBEAT_S,
        handlers: int = HANDLERS,
        actions: int = ACTIONS,
    ) -> None:
        self.url, self.names, self.heartbeat_s = url, names, heartbeat_s
        self.runners: dict[str, TaskRunner] = {}
        self.epoch = 0  # the connection's number; requests of an older one are refused
        self.handlers = ThreadPoolExecutor(max_workers=handlers, thread_name_prefix="sched-tick")
        self.actions = ThreadPoolExecutor(max_workers=actions, thread_name_prefix="sched-act")
        self._lock = threading.Lock()
        self._outbox: deque[Callable[[], None]] = deque()
        self._connection: pika.BlockingConnection | None = None
        self._setup: Any = None  # BlockingChannel: declarations
        self._consuming: Any = None  # BlockingChannel: consumes (and cancels)
        self._consume: Any = None  # channel.Channel: deliveries and their acks
        self._work: Any = None  # channel.Channel with confirms: tokens, dead-lettered ticks
        self._control: Any = None  # channel.Channel without confirms: lifecycle events
        self._tags: dict[str, str] = {}  # task -> consumer tag
        self._seq = 0  # publishes on this connection's work channel (the confirm numbering)
        self._unconfirmed: dict[int, Future[None]] = {}
        self._broken: BaseException | None = None
        # Deliveries handed to the handlers and not yet handled, or handled and not yet acked.
        self._active = 0
        self._io_thread: int | None = None  # the thread that serves the connection
        self.stopping = threading.Event()  # set by `serve`'s stop: its handlers are told to quit

    # --- called by any thread -----------------------------------------------------------------

    def add(self, runner: TaskRunner) -> None:
        """Consume `runner`'s task from now on (its queues declared first)."""
        runner.link = self
        with self._lock:
            self.runners[runner.task.name] = runner
        self._call(lambda: self._start_consuming(runner), self.epoch)

    def remove(self, name: str) -> None:
        """Stop consuming task `name` (the queue's next consumer takes over)."""
        with self._lock:
            self.runners.pop(name, None)
        self._call(lambda: self._stop_consuming(name), self.epoch)

    def send(
        self, epoch: int, exchange: str, key: str, body: bytes, props: pika.BasicProperties
    ) -> Future[None]:
        """Publish (mandatory); the Future settles when the broker confirms it, or with what
        pika's blocking channel raises when it is refused, unroutable, or its connection is gone."""
        done: Future[None] = Future()

        def send() -> None:
            self._seq += 1
            seq = self._seq
            self._unconfirmed[seq] = done
            props.message_id = str(seq)  # names a returned (unroutable) message
            self._work.basic_publish(exchange, key, body, props, mandatory=True)

        self._call(send, epoch, done)
        return done

    def emit(self, epoch: int, key: str, body: bytes, status_key: str | None = None) -> None:
        """A lifecycle event on the control exchange, unconfirmed (information, not state); with
        `status_key`, kept in the task's status queue too."""
        props = event_properties(status_key)
        self._call(
            lambda: self._control.basic_publish(self.names.control_exchange, key, body, props),
            epoch,
        )

    def ack(
        self, epoch: int, tag: int, after: list[Future[None]] | None = None, task: str = ""
    ) -> None:
        """Acknowledge a delivery; with `after`, once the broker confirmed each of those sends
        (the token that replaces it, a tick it dead-lettered), or, should one fail, give it back
        REQUEUE_S later, as when its handler raised. Its handler does not wait for the confirms:
        held while a busy broker confirmed (tens of ms), 64 handlers were too few for 2,000 ticks
        a second and tokens waited for a free one (bench/scheduler_bench.py, 1,000 tasks at
        0.5 s: delivered to action started p99 305-581 ms held, 30-65 ms not). Until it is
        settled, it counts as a tick under way (`_active`), so a graceful stop waits for it too."""
        if not after:
            self._call(lambda: self._consume.basic_ack(tag), epoch)
            return
        with self._lock:
            self._active += 1
        left = [len(after)]

        def settled(_: Future[None]) -> None:
            with self._lock:
                left[0] -= 1
                if left[0]:
                    return
            try:
                refused = next((f.exception() for f in after if f.exception() is not None), None)
                if refused is None:
                    self._ack_now(epoch, tag)
                else:
                    self.give_back(epoch, tag, task, refused)
            finally:
                self._handled()

        for future in after:
            future.add_done_callback(settled)

    def _ack_now(self, epoch: int, tag: int) -> None:
        """An ack, sent at once on the I/O thread (a confirm's callback: no wake-up needed)."""
        if threading.get_ident() == self._io_thread and epoch == self.epoch and self._consume:
            # A channel closing meanwhile: the delivery comes back with the next connection.
            with contextlib.suppress(pika.exceptions.AMQPError):
                self._consume.basic_ack(tag)
        else:
            self._call(lambda: self._consume.basic_ack(tag), epoch)

    def give_back(self, epoch: int, tag: int, task: str, exc: BaseException) -> None:
        """A delivery the broker kept its handling from finishing (a request refused, the
        connection gone): logged (quietly while the process stops) and requeued REQUEUE_S later;
        with its connection gone, it comes back with the next one anyway."""
        log.log(
            logging.DEBUG if self.stopping.is_set() else logging.WARNING,
            "runner %s: broker unavailable (%r); its token goes back",
            task,
            exc,
        )
        self.requeue(epoch, tag, REQUEUE_S)

    def again(self, epoch: int, at: float, runner: TaskRunner, method: Any, body: bytes) -> None:
        """Hand `runner` a delivery it holds once more at `at` (monotonic), with `body` for its
        token (a held token's next tick, TaskRunner.hold_s), as if the broker delivered it then.
        A timer of the connection's: it dies with it (the delivery then comes back unacked)."""

        def fire() -> None:
            if epoch == self.epoch:
                self._dispatch(runner, epoch, method, HELD, body)

        def schedule() -> None:
            assert self._connection is not None
            self._connection.call_later(max(at - time.monotonic(), 0.0), fire)

        self._call(schedule, epoch)

    def reject(self, epoch: int, tag: int) -> None:
        """Dead-letter a delivery (an unreadable token)."""
        self._call(lambda: self._consume.basic_reject(tag, requeue=False), epoch)

    def requeue(self, epoch: int, tag: int, after_s: float) -> None:
        """Give a delivery back to the queue `after_s` from now (its tick could not be handled:
        the ledger or the broker refused; redelivered at once, it would spin)."""

        def later() -> None:
            if self.epoch == epoch and self._consume is not None:
                self._consume.basic_nack(tag, requeue=True)

        def schedule() -> None:
            assert self._connection is not None
            self._connection.call_later(after_s, later)

        self._call(schedule, epoch)

    def count(self, epoch: int, queue: str) -> int:
        """The queue's ready messages (a passive declare)."""
        done: Future[int] = Future()

        def declare_ok(frame: Any) -> None:
            done.set_result(frame.method.message_count)

        self._call(
            lambda: self._work.queue_declare(queue, passive=True, callback=declare_ok), epoch, done
        )
        return done.result(CONFIRM_TIMEOUT_S)

    def _call(
        self, request: Callable[[], None], epoch: int, done: Future[Any] | None = None
    ) -> None:
        """Queue `request` for the I/O thread; one wake-up serves every request then waiting."""
        lost = pika.exceptions.StreamLostError(f"connection {epoch} is gone")

        def guarded() -> None:
            if epoch != self.epoch or self._connection is None:
                if done is not None and not done.done():
                    done.set_exception(lost)
                return
            try:
                request()
            except Exception as exc:  # the requester learns it; the loop goes on
                if done is not None and not done.done():
                    done.set_exception(exc)

        with self._lock:
            connection = self._connection if epoch == self.epoch else None
            if connection is None:
                if done is not None:
                    done.set_exception(lost)
                return
            self._outbox.append(guarded)
            wake = len(self._outbox) == 1
        if wake:
            with contextlib.suppress(Exception):  # closing meanwhile: `_close` fails the request
                connection.add_callback_threadsafe(self._drain)

    # --- the I/O thread ------------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        """Consume every added task until `stop` is set, reconnecting whenever the broker goes."""
        self.stopping = stop
        reconnecting(stop, "scheduler consumer", self._session, self._close, ledger_wait_s=1.0)
        self.handlers.shutdown(wait=False, cancel_futures=True)
        self.actions.shutdown(wait=False, cancel_futures=True)

    def _session(self, stop: threading.Event, connected: Callable[[], None]) -> None:
        """One connection's life: serve it until `stop` (then wind down) or until it breaks."""
        self._io_thread = threading.get_ident()
        self._open()
        connected()
        while not stop.is_set() and self._broken is None:
            self._turn()
        if self._broken is None:
            self._wind_down()
        if self._broken is not None:
            raise self._broken

    def _turn(self) -> None:
        """One turn of pika's loop (it returns once it has dispatched something, or after
        IDLE_WAKE_S); then, if it is busy (several ticks under way, and it came back within
        COALESCE_S), a pause, so that the next turn serves together what arrives meanwhile."""
        assert self._connection is not None
        began = time.monotonic()
        self._connection.process_data_events(time_limit=IDLE_WAKE_S)
        if self._active > 1 and time.monotonic() - began < COALESCE_S:
            time.sleep(COALESCE_S)

    def _open(self) -> None:
        with _OPENING:
            connection = _connect(self.url, self.heartbeat_s)
        self._broken = None
        try:
            setup = connection.channel()
            with self._lock:
                runners = list(self.runners.values())
            declare(setup, self.names, [r.task for r in runners])
            consume, work, control = (connection.channel() for _ in range(3))
            # One token per task: a consumer needs one unacknowledged delivery at a time.
            consume.basic_qos(prefetch_count=1)
            work._impl.confirm_delivery(self._on_confirm)
            work._impl.add_on_return_callback(self._on_return)
            for channel in (setup, consume, work, control):
                channel._impl.add_on_close_callback(self._on_channel_closed)
        except BaseException:
            with contextlib.suppress(Exception):
                connection.close()
            raise
        with self._lock:
            self.epoch += 1
            self._connection = connection
            self._setup = setup  # blocking: declares an added task's queues before its consume
            self._consuming = consume
            self._consume, self._work, self._control = consume._impl, work._impl, control._impl
            self._seq = 0
            self._tags = {}
            # Runners added meanwhile too (their own request was refused: no connection yet).
            current = list(self.runners.values())
        for runner in current:
            self._start_consuming(runner, declared=runner in runners)

    def _start_consuming(self, runner: TaskRunner, *, declared: bool = False) -> None:
        name = runner.task.name
        if name in self._tags or self.runners.get(name) is not runner:
            return
        if not declared:
            declare(self._setup, self.names, [runner.task])
        epoch = self.epoch

        def on_token(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            self._dispatch(runner, epoch, method, props, body)

        # Through the blocking channel (pika's wrapper owns the consume's callbacks); its
        # deliveries are dispatched on this thread, outside the poll.
        self._tags[name] = self._consuming.basic_consume(self.names.processor(name), on_token)

    def _dispatch(
        self, runner: TaskRunner, epoch: int, method: Any, props: Any, body: bytes
    ) -> None:
        """Hand a delivery (or a held token's next tick) to `runner` in the handler pool."""
        if self.stopping.is_set():
            return  # the token goes back unacked when the connection closes
        with self._lock:
            self._active += 1
        try:
            self.handlers.submit(self._deliver, runner, epoch, method, props, body)
        except RuntimeError:  # the pool is shut: the token goes back unacked
            self._handled()

    def _deliver(
        self, runner: TaskRunner, epoch: int, method: Any, props: Any, body: bytes
    ) -> None:
        try:
            runner.deliver(epoch, method, props, body)
        finally:
            self._handled()

    def _release(self, runner: TaskRunner) -> None:
        try:
            runner.release()
        finally:
            self._handled()

    def _handled(self) -> None:
        with self._lock:
            self._active -= 1

    def _wind_down(self) -> None:
        """A graceful stop: take no more tokens, let the ticks under way finish for up to
        STOP_GRACE_S while the connection still serves them, and send what they queued. Closed at
        once, a tick's outcome event, next token and ack were lost with the connection: its token
        came back to run the tick's successor late, and `schedules list` missed the outcome."""
        assert self._connection is not None
        for name in list(self._tags):
            self._stop_consuming(name)
        for runner in list(self.runners.values()):
            if runner.holding is not None:
                with self._lock:
                    self._active += 1
                try:
                    self.handlers.submit(self._release, runner)
                except RuntimeError:
                    self._handled()
        deadline = time.monotonic() + STOP_GRACE_S
        while self._active and self._broken is None and time.monotonic() < deadline:
            self._connection.process_data_events(time_limit=0.02)
        self._drain()
        self._connection.process_data_events(time_limit=0)

    def _stop_consuming(self, name: str) -> None:
        tag = self._tags.pop(name, None)
        if tag is not None:
            self._consuming.basic_cancel(tag)

    def _drain(self) -> None:
        with self._lock:
            requests = list(self._outbox)
            self._outbox.clear()
        for request in requests:
            request()

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        refused = isinstance(method, pika.spec.Basic.Nack)
        if method.multiple:
            seqs = [s for s in self._unconfirmed if s <= method.delivery_tag]
        else:
            seqs = [method.delivery_tag] if method.delivery_tag in self._unconfirmed else []
        for seq in seqs:
            done = self._unconfirmed.pop(seq)
            if done.done():
                continue  # returned unroutable before its confirm
            if refused:
                done.set_exception(pika.exceptions.NackError([]))
            else:
                done.set_result(None)

    def _on_return(self, _ch: Any, method: Any, props: Any, body: bytes) -> None:
        done = self._unconfirmed.get(int(props.message_id or 0))
        if done is not None and not done.done():
            done.set_exception(pika.exceptions.UnroutableError([]))

    def _on_channel_closed(self, _ch: Any, reason: BaseException) -> None:
        if self._broken is None:
            self._broken = (
                reason
                if isinstance(reason, _BROKER_DOWN)
                else pika.exceptions.AMQPChannelError(repr(reason))
            )

    def _close(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
            self.epoch += 1
            requests = list(self._outbox)
            self._outbox.clear()
            self._setup = self._consuming = None
            self._consume = self._work = self._control = None
        lost = pika.exceptions.StreamLostError("connection closed")
        for done in self._unconfirmed.values():
            if not done.done():
                done.set_exception(lost)
        self._unconfirmed.clear()
        for request in requests:
            request()  # each sees the new epoch: its requester learns the connection went
        if connection is not None:
            # A broken connection may fail to close: nothing is left to release then.
            with contextlib.suppress(Exception):
                connection.close()


# The properties a kept delivery is handed to its runner again with (Consumer.again).
HELD = pika.BasicProperties()


@dataclass
class _Inflight:
    """A run this process started: the token's due time, the tick it runs, its fence, how late
    it started (its outcome event says so: the status queue keeps outcomes only)."""

    token_due: float
    tick: Tick
    fence: int
    future: Future[bool]
    lateness_s: float


class TaskRunner:
    """Runs one task's ticks, one at a time, each claimed first in the tick ledger
    (worker/scheduler/ledger.py); its tokens reach it through its Consumer, which it shares with
    every other runner of the process."""

    def __init__(
        self,
        task: PeriodicTask,
        url: str,
        *,
        names: Names,
        send: SendEvent | None = None,
        clock: Clock = time.time,
        ledger: Ledger | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        heartbeat_s: int = DEFAULT_HEARTBEAT_S,
        backoff: Backoff = Backoff(),
        overlap: OverlapGuard | None = None,
        hold_s: float = 0.0,
    ) -> None:
        self.url, self.names, self.clock, self.heartbeat_s = url, names, clock, heartbeat_s
        self.lifecycle: Lifecycle | None = None  # counts the events for the metrics
        self.link: Consumer | _Link = _Link()
        self.task = task
        # Skips an event task's tick while its previous tick's run still runs (overlap.py).
        self.overlap = overlap
        self.backoff = backoff
        self.send = send
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self.lease_s = lease_s
        # A delivery is kept for the ticks that fall due within this long of its arrival (`_next`).
        self.hold_s = hold_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # One delivery handled at a time (a token redelivered on a new connection waits for the
        # handler of its old delivery to give up); `_epoch`: the connection of the one handled.
        self._serial = threading.Lock()
        self._epoch = -1
        self._inflight: _Inflight | None = None
        # Until when (monotonic: it runs on while the process is frozen) this runner's lease is
        # surely held: an event is sent only within it.
        self._lease_end = float("-inf")
        # The runtime registry's say (worker/scheduler/control.py): the schedule's generation,
        # paused, removed; `refresh` re-reads it when a token of a newer generation arrives.
        self.gen, self.paused, self.disabled = 0, False, False
        self.refresh: Callable[[], object] | None = None
        # The sends of the delivery being handled: its ack waits for their confirms (`_ack`).
        self._confirms: list[Future[None]] = []
        # The last outcome the task's status queue kept from this runner, and when (monotonic).
        self._kept, self._kept_at = "", float("-inf")
        # The delivery this runner keeps for its next tick (`_next`), until when it may keep it
        # (monotonic), and the schedule generation its token was made for.
        self.holding: Any = None
        self._kept_due = 0.0
        self._until = float("-inf")
        self._gen = 0

    def _broker(self) -> Consumer:
        assert isinstance(self.link, Consumer), "a TaskRunner talks to the broker via a Consumer"
        return self.link

    def emit(self, task: str, event: str, **fields: Any) -> None:
        """A lifecycle event on the control exchange (routing key `<task>.<event>`), kept in
        the task's status queue when `_keeps` says so."""
        body = {"task": task, "event": event, "at": self.clock(), **fields}
        if self.lifecycle is not None:
            self.lifecycle.record(task, event, fields)
        self._broker().emit(
            self._epoch,
            f"{task}.{event}",
            json.dumps(body, separators=(",", ":")).encode(),
            self.names.status_key(task) if self._keeps(event) else None,
        )

    def _keeps(self, event: str) -> bool:
        """Whether the task's status queue keeps this event: every outcome (STATUS_EVENTS) but
        a success that follows a kept success by less than STATUS_SUCCESS_EVERY_S."""
        if event not in STATUS_EVENTS:
            return False
        now = time.monotonic()
        if (
            event == "succeeded"
            and self._kept == event
            and now - self._kept_at < STATUS_SUCCESS_EVERY_S
        ):
            return False
        self._kept, self._kept_at = event, now
        return True

    def publish_token(self, token: Token, delay: float | None = None) -> None:
        """A task's token, through its hatchery for `delay` seconds (default: until its tick is
        due), confirmed by the broker before this returns."""
        exchange, props = token_route(
            self.names, token.due - self.clock() if delay is None else delay
        )
        self._confirms.append(
            self._broker().send(self._epoch, exchange, token.task, token.encode(), props)
        )

    def inventory(self, task: str) -> int:
        """Tokens of `task` waiting in its hatchery or ready in its processor queue."""
        link = self._broker()
        return sum(
            link.count(self._epoch, queue)
            for queue in (self.names.hatchery(task), self.names.processor(task))
        )

    def _ack(self, method: Any) -> None:
        """Acknowledge the delivery once what it sent is confirmed (Consumer.ack)."""
        after, self._confirms = self._confirms, []
        self._broker().ack(self._epoch, method.delivery_tag, after, self.task.name)

    def apply(self, entry: Entry) -> None:
        """Run the task as the runtime registry now has it (from its next token on)."""
        self.task, self.gen = entry.task, entry.gen
        self.paused, self.disabled = entry.paused, entry.disabled

    def _held(self, method: Any, token: Token) -> bool:
        """Keep a token from running when the runtime registry says so; True when it was handled
        here. A removed task's token ends; a paused task's moves on to its next tick unrun (the
        chain holds, so resuming runs the next tick, once, through the ledger as ever); a token of
        an older schedule is dropped (replaced on the current schedule if no other token exists)."""
        if token.gen > self.gen and self.refresh is not None:
            self.refresh()  # this process has not read the change that made the token yet
        if not (self.disabled or self.paused or token.gen != self.gen):
            return False
        name = self.task.name
        if self.disabled:
            self.emit(name, "removed", due=token.due)
        elif token.gen != self.gen:
            self.emit(name, "duplicate", due=token.due, gen=token.gen, current_gen=self.gen)
            if self.inventory(name) == 0:
                self._schedule_after(self.clock())
        else:
            self.emit(name, "paused", due=token.due)
            self._schedule_after(token.due)
        self._ack(method)
        return True

    def _act(self, tick: Tick, *, latest_only: bool = True) -> bool:
        """Run the tick's action; False when a later tick fell due before it could start (the
        process was paused between its claim and here): only the latest due tick runs (a
        redriven tick, which an operator asked for, runs whatever its age)."""
        if latest_only and self.task.schedule.last_at_or_before(self.clock()) > tick.due:
            return False
        if self.task.action is not None:
            self.task.action(tick)
            return True
        if self.send is None:
            raise BusinessError(f"task {self.task.name} sends events but no sender is configured")
        event = self.task.tick_event(tick)
        guard = self.overlap if self.task.overlap == OVERLAP[0] else None
        if guard is not None:
            verdict = guard.admit(self.task, tick)
            if not verdict.run:
                raise Overlapping(verdict)
        if time.monotonic() > self._lease_end:
            # Frozen or cut off past its lease: another runner may own the tick by now.
            raise TransientError(f"lease on tick {tick.due_iso} lapsed before the send")
        if guard is not None:
            guard.sent(self.task, tick)
        self.send(event)
        return True

    def serve(self, stop: threading.Event) -> None:
        """Consume this task alone until `stop` is set (a Scheduler shares one Consumer)."""
        consumer = Consumer(self.url, names=self.names, heartbeat_s=self.heartbeat_s)
        consumer.add(self)
        consumer.serve(stop)

    def deliver(self, epoch: int, method: Any, props: Any, body: bytes) -> None:
        """Handle a delivery of this task's token (in the Consumer's handler pool)."""
        with self._serial:
            if epoch != self._broker().epoch:
                return  # its connection is gone: the token comes back on the next one
            if props is HELD:
                if self.holding is not method:
                    return  # handed back meanwhile (a graceful stop: `release`)
            else:
                # Between half and all of hold_s: tasks that started together (a deploy, the
                # broker's return) go back through the hatchery spread out, not all at once.
                spread = random.uniform(0.5, 1.0)  # noqa: S311 - timing, not secrets
                self._until = time.monotonic() + self.hold_s * spread
            self.holding = None
            self._epoch, self._confirms = epoch, []
            try:
                self._handle(method, props, body)
            except _BROKER_DOWN as exc:
                # Unacknowledged, the token comes back: with its connection, or requeued (a
                # request the broker refused).
                self._broker().give_back(epoch, method.delivery_tag, self.task.name, exc)
            except _LEDGER_DOWN as exc:
                # The token goes back: no tick runs unclaimed.
                log.error("runner %s: tick ledger unavailable (%s); retrying", self.task.name, exc)
                self._broker().requeue(epoch, method.delivery_tag, 1.0)
            except Exception:
                log.exception("runner %s: tick not handled; its token goes back", self.task.name)
                self._broker().requeue(epoch, method.delivery_tag, 1.0)

    def _handle(self, method: Any, props: Any, body: bytes) -> None:
        name = self.task.name
        try:
            token = Token.decode(body)
        except ValueError:
            log.error("runner %s: unreadable token %r dead-lettered", name, body[:200])
            self._broker().reject(self._epoch, method.delivery_tag)
            return
        token_due, self._gen = token.due, token.gen
        if token.redrive:
            self._redrive(method, token)
            return
        if self.hold_s > 0 and token_due > self.clock():
            # Sent ahead of its tick (`_next`): kept here until it falls due.
            self._keep(method, token)
            return
        inflight = self._inflight
        if inflight is not None and inflight.token_due == token_due:
            # The broker came back while this process ran the tick: wait for that run.
            self._complete(method, inflight, resumed=True)
            return
        if self._held(method, token):
            return
        if inflight is not None and not self._settle(inflight):
            # An older run of this process is still going (its token went elsewhere).
            self._drop(method, token_due, self.ledger.read(name))
            return
        now = self.clock()
        due, missed = latest_due(self.task.schedule, token_due, now)
        bound = self.task.max_lateness_s
        if bound is not None and now - due > bound:
            # Too late even for the latest due tick: skip it too and wait for the next one.
            self.emit(name, "missed", due=due, missed=missed + 1, lateness_s=now - due)
            self._schedule_after(due)
            self._ack(method)
            return
        tick_ms, now_ms = round(due * 1000), round(now * 1000)
        lease_ms = round(self.lease_s * 1000)
        claimed = self.ledger.claim(name, tick_ms, now_ms, lease_ms, self.holder)
        if claimed is None:
            self._drop(method, due, self.ledger.read(name))
            return
        self._lease_end = time.monotonic() + self.lease_s
        fence, last = claimed.fence, claimed.previous
        if last is not None and last.tick >= round(token_due * 1000):
            # The token is older than the task's last claimed tick (a delivery kept across ticks
            # that came back when its runner went, a spare): the ticks missed are those since.
            after = self.task.schedule.first_after(last.tick / 1000)
            if round(after * 1000) <= last.tick:  # the ledger's ms fell just short of the tick
                after = self.task.schedule.first_after(after)
            _, missed = latest_due(self.task.schedule, after, now)
        latest = self.task.schedule.last_at_or_before(self.clock())
        if latest > due:
            # The claim took so long (a slow ledger, a paused process) that a later tick fell
            # due meanwhile: only the latest due tick runs, so this one is given up, not run late.
            self.ledger.finish(name, fence, "done")
            self.emit(name, "missed", due=due, missed=missed + 1)
            self.publish_token(Token(name, latest, gen=self.gen))
            self._ack(method)
            return
        if last is not None and last.state == "running" and last.tick < tick_ms:
            # Its runner died, froze or lost the ledger past its lease: never run again.
            self.emit(name, "abandoned", due=last.tick / 1000, holder=last.holder)
        if missed:
            self.emit(name, "missed", due=due, missed=missed)
        attempt = 1
        if due == token_due:
            # The retry count the token carries, plus its redeliveries (runs that killed their
            # consumer, or a crash before the retry was published).
            attempt = token.attempt + int((props.headers or {}).get("x-delivery-count", 0))
        tick = Tick(name, due, attempt)
        future = self._submit(tick)
        if future is None:
            # Never started: released, so the process that gets the token back runs this tick
            # now instead of waiting out the lease and then skipping it as abandoned.
            self.ledger.finish(name, fence, "retry")
            return
        self.emit(name, "started", due=due, lateness_s=now - due, attempt=attempt, fence=fence)
        inflight = self._inflight = _Inflight(token_due, tick, fence, future, now - due)
        self._complete(method, inflight, resumed=False)

    def _submit(self, tick: Tick, **options: Any) -> Future[Any] | None:
        """Start `tick`'s action in the Consumer's action pool; None when a stop that outlasted
        its grace has shut the pool meanwhile (this handler was inside a slow claim): the token
        goes back unacknowledged with the connection."""
        try:
            return self._broker().actions.submit(self._act, tick, **options)
        except RuntimeError:  # ThreadPoolExecutor.submit after shutdown
            log.info("runner %s: stopping; tick %s not started", self.task.name, tick.due)
            return None

    def _settle(self, inflight: _Inflight) -> bool:
        """Close a run of this process whose token went elsewhere: False while it still runs."""
        if not inflight.future.done():
            return False
        self._inflight = None
        if not self.ledger.finish(self.task.name, inflight.fence, "done"):
            self.emit(self.task.name, "fenced", due=inflight.tick.due, holder=self.holder)
        return True

    def _drop(self, method: Any, due: float, last: Claim | None) -> None:
        """A token for a tick the ledger will not give this runner: already claimed (done, in
        progress or abandoned: a spare token or a redelivered one), or another run is live.
        It is dropped; if no other token exists, it is replaced by the next tick's."""
        name = self.task.name
        self.emit(name, "duplicate", due=due, claimed=last.tick / 1000 if last else None)
        if self.inventory(name) == 0:
            after = self.clock()
            if last is not None and last.live(round(after * 1000)):
                after = max(after, last.until_ms / 1000)  # let the live claim end first
            self._schedule_after(after)
        self._ack(method)

    def _complete(self, method: Any, inflight: _Inflight, *, resumed: bool) -> None:
        name, tick = self.task.name, inflight.tick
        if resumed:
            self.emit(name, "resumed", due=tick.due, attempt=tick.attempt)
        started = self.clock()
        outcome, error = self._wait(inflight)
        took = self.clock() - started
        self._inflight = None
        retry = outcome == "transient" and tick.attempt < self.task.max_attempts
        if not self.ledger.finish(name, inflight.fence, "retry" if retry else "done"):
            # Another runner took the task over: record, send and publish nothing more.
            log.warning("task %s tick %s: fenced (lease lost), outcome dropped", name, tick.due_iso)
            self.emit(name, "fenced", due=tick.due, outcome=outcome, holder=self.holder)
            self._ack(method)
            return
        late = {START_LATENESS: inflight.lateness_s}
        if outcome == "succeeded":
            self.emit(name, "succeeded", due=tick.due, duration_s=took, **late)
        elif outcome == "missed":
            self.emit(name, "missed", due=tick.due, missed=1, **late)
        elif outcome == "skipped":
            self._skipped(inflight)
        elif outcome == "business":
            log.warning("task %s tick %s failed (business): %s", name, tick.due_iso, error)
            self.emit(name, "failed", due=tick.due, error_class="business", error=error, **late)
        elif retry:
            # The same tick again after a backoff, through the task's hatchery: the retry is the
            # task's one token meanwhile (the reconciler counts it), then claims its own tick.
            # It waits at most half the time left to the next tick, which would supersede it.
            now = self.clock()
            following, _ = next_due(self.task.schedule, tick.due, now)
            delay = min(self.backoff.delay_s(tick.attempt + 1), max(following - now, 0) / 2)
            self.publish_token(Token(name, tick.due, tick.attempt + 1, gen=self.gen), delay)
            self.emit(
                name,
                "failed",
                due=tick.due,
                error_class="transient",
                error=error,
                attempt=tick.attempt,
                retry_in_s=delay,
                **late,
            )
            self._ack(method)
            return
        else:
            self.emit(
                name,
                "failed",
                due=tick.due,
                error_class="transient",
                error=error,
                attempt=tick.attempt,
                **late,
            )
            self._dead_letter(tick, error)
        self._next(method, tick.due)

    def _next(self, method: Any, due: float) -> None:
        """After a tick, its task's next token. With `hold_s`, when the next tick falls due
        within the delivery's hold (between half and all of hold_s from its arrival), the
        delivery itself: kept unacknowledged (its queue's single active consumer stays this
        runner's, and the broker gives it back to the queue if this process goes) and handed to
        this runner again then (`_keep`): the broker has no part in that tick. Only a first
        delivery (a redelivered one goes through the hatchery, so that its delivery count starts
        again), with nothing of the tick unconfirmed (a dead-lettered tick's ack waits for it),
        and not while the process stops. Otherwise a token through the hatchery, the delivery
        acked once that is confirmed; with `hold_s`, sent up to CYCLE_LEAD_S ahead of its tick
        and kept until then where it lands, so that the broker's transit adds no lateness."""
        link = self._broker()
        now = self.clock()
        following, missed = next_due(self.task.schedule, due, now)
        if self.hold_s <= 0:
            self._schedule_after(due)
            self._ack(method)
            return
        wait = following - now
        if (
            time.monotonic() + wait <= self._until
            and not method.redelivered
            and not self._confirms
            and not link.stopping.is_set()
            and self._epoch == link.epoch
        ):
            self._keep(method, Token(self.task.name, following, gen=self._gen), missed)
            return
        token = Token(self.task.name, following, gen=self.gen)
        self.publish_token(token, wait - min(CYCLE_LEAD_S, wait / 2))
        self.emit(self.task.name, "scheduled", due=following, missed=missed)
        self._ack(method)

    def _keep(self, method: Any, token: Token, missed: int = 0) -> None:
        """Keep a delivery, unacknowledged, for `token`'s tick: handed to this runner again when
        that falls due (Consumer.again), its `scheduled` event telling the reconciler so."""
        link = self._broker()
        self.holding, self._kept_due = method, token.due
        at = time.monotonic() + (token.due - self.clock())
        link.again(self._epoch, at, self, method, token.encode())
        self.emit(self.task.name, "scheduled", due=token.due, missed=missed, held=True)

    def release(self) -> None:
        """Hand a kept delivery back as a token for the tick it was kept for, through the
        hatchery (a graceful stop: the process that takes the task over finds that tick's token,
        not an old one)."""
        with self._serial:
            method, self.holding = self.holding, None
            if method is None or self._epoch != self._broker().epoch:
                return
            self._confirms = []
            # The tick it was kept for, even if that fell due while the process stopped (its
            # timer then ran nothing): the next runner runs it, late, or reports it missed.
            due = self._kept_due
            self.publish_token(
                Token(self.task.name, due, gen=self._gen), max(due - self.clock(), 0)
            )
            self.emit(self.task.name, "scheduled", due=due)
            self._ack(method)

    def _wait(self, inflight: _Inflight) -> tuple[str, str]:
        """Wait for the run; meanwhile keep the connection alive and renew the lease."""
        tick, future = inflight.tick, inflight.future
        beat = min(quiet_window_s(self.task) / 2, self.lease_s / 3)
        while True:
            try:
                # Wakes the moment the run ends; between beats pika is not serviced, which is
                # fine: a beat is far inside the AMQP heartbeat timeout.
                return ("succeeded" if future.result(timeout=beat) else "missed"), ""
            except FuturesTimeout:
                if future.done():  # the action itself raised TimeoutError: transient
                    return "transient", repr(future.exception())
                if inflight.fence:
                    self._renew(inflight)
                else:  # a redriven tick holds no claim: nothing to renew
                    self._lease_end = time.monotonic() + self.lease_s
                # Tells the reconciler the token is held, not lost, however long the run takes.
                self.emit(self.task.name, "running", due=tick.due)
            except BusinessError as exc:
                return "business", repr(exc)
            except Overlapping as exc:
                return "skipped", str(exc)
            except Exception as exc:  # unclassified failures count as transient
                return "transient", repr(exc)

    def _renew(self, inflight: _Inflight) -> None:
        until = time.monotonic() + self.lease_s
        try:
            renewed = self.ledger.renew(
                self.task.name, inflight.fence, round((self.clock() + self.lease_s) * 1000)
            )
        except _LEDGER_DOWN as exc:  # the lease may lapse; finishing will tell
            log.warning("task %s: lease not renewed (%s)", self.task.name, exc)
            return
        if renewed:
            self._lease_end = until

    def _redrive(self, method: Any, token: Token) -> None:
        """Run a tick an operator moved back from the dead-letter queue, once more (`sluice
        schedules dlq redrive`). It is outside the task's token chain and the ledger's
        once-per-tick record (the ledger gave the tick out already): the operator asked for
        another run. It waits for a live claim's lease to end, so it never overlaps a claimed
        run; a failure dead-letters it again, with its reason."""
        name = self.task.name
        last = self.ledger.read(name)
        now = self.clock()
        busy = self._inflight is not None and not self._settle(self._inflight)
        if busy or (last is not None and last.live(round(now * 1000))):
            wait = last.until_ms / 1000 - now if last is not None else 0.0
            self.publish_token(token, max(wait, 0.1))
            self._ack(method)
            return
        tick = Tick(name, token.due, token.attempt)
        self._lease_end = time.monotonic() + self.lease_s
        run = self._submit(tick, latest_only=False)
        if run is None:
            return
        self.emit(name, "started", due=tick.due, lateness_s=now - tick.due, redrive=True)
        inflight = _Inflight(token.due, tick, 0, run, now - tick.due)
        started = self.clock()
        outcome, error = self._wait(inflight)
        late = {START_LATENESS: inflight.lateness_s}
        if outcome == "succeeded":
            self.emit(name, "succeeded", due=tick.due, duration_s=self.clock() - started, **late)
        elif outcome == "skipped":
            self._skipped(inflight)
        elif outcome == "business":
            self.emit(name, "failed", due=tick.due, error_class="business", error=error, **late)
        else:
            self.emit(name, "failed", due=tick.due, error_class="transient", error=error, **late)
            self._dead_letter(tick, error, reason="redrive-failed")
        self._ack(method)

    def _skipped(self, inflight: _Inflight) -> None:
        """Report a tick skipped because its task's previous run still runs (overlap.py)."""
        tick = inflight.tick
        exc = inflight.future.exception()
        assert isinstance(exc, Overlapping)
        verdict = exc.verdict
        previous = verdict.previous_s
        # Unknown is Lambda or the table not answering: a cause to fix if it lasts.
        log.log(
            logging.WARNING if verdict.reason == UNKNOWN else logging.INFO,
            "task %s tick %s skipped: the run of tick %s is %s",
            tick.task,
            tick.due_iso,
            "?" if previous is None else Tick(tick.task, previous).due_iso,
            verdict.reason,
        )
        self.emit(
            tick.task,
            "skipped",
            due=tick.due,
            running=previous,
            reason=verdict.reason,
            **{START_LATENESS: inflight.lateness_s},
        )

    def _dead_letter(self, tick: Tick, error: str, reason: str = "retry-limit") -> None:
        log.error(
            "task %s tick %s dead-lettered after %s attempts (%s)",
            tick.task,
            tick.due_iso,
            tick.attempt,
            reason,
        )
        headers = {"reason": reason, "task": tick.task, "attempts": tick.attempt}
        sent = self._broker().send(
            self._epoch,
            self.names.dead_exchange,
            tick.task,
            Token(tick.task, tick.due).encode(),
            pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                content_type="application/json",
                headers={**headers, "error": error[:500]},
            ),
        )
        self._confirms.append(sent)
        self.emit(
            tick.task,
            "dead_lettered",
            due=tick.due,
            attempts=tick.attempt,
            reason=reason,
            error=error,
        )

    def _schedule_after(self, due: float) -> None:
        following, missed = next_due(self.task.schedule, due, self.clock())
        self.publish_token(Token(self.task.name, following, gen=self.gen))
        self.emit(self.task.name, "scheduled", due=following, missed=missed)


class Reconciler(_Base):
    """Keeps exactly one token per task: seeds missing tokens while it holds the leader lock."""

    def __init__(
        self,
        registry: Registry,
        url: str,
        *,
        names: Names,
        clock: Clock = time.time,
        heartbeat_s: int = DEFAULT_HEARTBEAT_S,
        ledger: Ledger | None = None,
        hold_s: float = 0.0,
    ) -> None:
        super().__init__(url, names, clock, heartbeat_s)
        self.registry = registry
        # Tells a new task's first token from a lost one (a task never claimed has none to lose).
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self.monotonic: Clock = time.monotonic
        self._activity: dict[str, float] = {}
        self._empty_since: dict[str, float] = {}
        # The runtime registry (worker/scheduler/control.py): the tasks that hold a token (a
        # removed one holds none), and the re-timed ones whose new schedule needs its token now.
        self._tasks: list[PeriodicTask] = list(registry)
        self._gens: dict[str, int] = {t.name: 0 for t in registry}
        self._retimed: set[str] = set()
        self._changed = threading.Event()
        # When (monotonic) each task's token falls due, from the events that announce a token,
        # and the tasks whose last announced token is kept by its runner (TaskRunner._next).
        self._due: dict[str, float] = {}
        self._kept: set[str] = set()
        # When (monotonic) each task's tokens were last counted, and the last sweep began.
        self._counted: dict[str, float] = {}
        self._swept = float("-inf")
        # Runners may keep their tokens across ticks this long (TaskRunner.hold_s), and when
        # this process last took the lead (monotonic).
        self.hold_s = hold_s
        self._led_at = float("-inf")

    def apply(self, entries: list[Entry]) -> None:
        gens = {e.task.name: e.gen for e in entries if not e.disabled}
        self._retimed |= {n for n, g in gens.items() if n in self._gens and g > self._gens[n]}
        self._tasks = [e.task for e in entries if not e.disabled]
        self._gens = gens
        self._changed.set()

    def _on_event(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        task, _, event = method.routing_key.partition(".")
        now = self._activity[task] = self.monotonic()
        if event in _TOKEN_EVENTS:
            try:
                fields = json.loads(body)
                # A retry waits `retry_in_s` in the hatchery; any other token, until `due`.
                wait = fields["retry_in_s"] if event == "failed" else fields["due"] - self.clock()
            except (ValueError, KeyError, TypeError):
                return  # a failure with no retry announces no token
            self._due[task] = now + float(wait)
            if fields.get("held"):
                self._kept.add(task)
            else:
                self._kept.discard(task)

    def serve(self, stop: threading.Event) -> None:
        reconnecting(stop, "reconciler", self._session, self._close, ledger_wait_s=1.0)

    def _session(self, stop: threading.Event, connected: Callable[[], None]) -> None:
        """One connection's life: lead and keep the tokens until `stop`, or wait while another
        process leads (the next session tries again)."""
        self._changed.clear()
        tasks = self._tasks
        tick = self._interval(tasks)
        ch = self._open(tasks)
        # Only the leader publishes a re-timed task's token, for changes it applied while
        # leading (a process that takes the lead later leaves an older token to be dropped on
        # arrival and replaced).
        self._retimed.clear()
        if not self._lead(ch):
            self._close()
            stop.wait(max(tick, 0.5))
            return
        connected()
        self._empty_since.clear()
        self._led_at = self.monotonic()
        while not stop.is_set():
            if self._changed.is_set():
                self._changed.clear()
                tasks = self._tasks
                tick = self._interval(tasks)
                declare(ch.work, self.names, tasks)  # an added task's queues
                self._retime()
            self._sweep(tasks)
            serve_for(ch.connection, tick, stop)

    @staticmethod
    def _interval(tasks: list[PeriodicTask]) -> float:
        return min(quiet_window_s(t) for t in tasks) / 2 if tasks else 1.0

    def _retime(self) -> None:
        """Give each re-timed task a token on its new schedule at once, rather than at the old
        schedule's next tick (that token is then dropped: its generation is older)."""
        for name in list(self._retimed):
            self._retimed.discard(name)
            task = next((t for t in self._tasks if t.name == name), None)
            if task is None:
                continue
            following = task.schedule.first_after(self.clock())
            self.publish_token(Token(name, following, gen=self._gens[name]))
            self.emit(name, "rescheduled", due=following, gen=self._gens[name])

    def _lead(self, ch: _Channels) -> bool:
        """Hold the exclusive leader queue (it dies with this connection), or report not leading."""
        lock = ch.connection.channel()
        try:
            lock.queue_declare(self.names.leader_queue, exclusive=True, auto_delete=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 405:  # RESOURCE_LOCKED: another process leads
                return False
            raise
        events = ch.connection.channel()
        listen = self.names.listener(uuid.uuid4().hex)
        events.queue_declare(listen, exclusive=True, auto_delete=True)
        for event in sorted(LISTENED_EVENTS):
            events.queue_bind(listen, self.names.control_exchange, routing_key=f"*.{event}")
        events.basic_consume(listen, self._on_event, auto_ack=True)
        return True

    def _sweep(self, tasks: list[PeriodicTask]) -> None:
        """Check every task's token: count those a runner does not hold, all at once, each as
        often as its own quiet window needs (half a window apart while its token is seen, at
        every sweep once it is not), and no more than COUNT_BUDGET_PER_S a second: those seen
        empty first, then those counted longest ago. The sweep runs every half of the shortest
        window; counting every task at every sweep counted a daily task as often as a 1 s one."""
        now = self.monotonic()
        budget = max(1, round(COUNT_BUDGET_PER_S * min(now - self._swept, 1.0)))
        self._swept = now
        wanted = []
        for task in tasks:
            if self._held(task, now):
                continue
            last = self._counted.get(task.name, float("-inf"))
            if task.name in self._empty_since:
                wanted.append((float("-inf"), task))
            elif now - last >= quiet_window_s(task) / 2:
                wanted.append((last, task))
        wanted.sort(key=lambda pair: pair[0])
        counted = [task for _, task in wanted[:budget]]
        tokens = self.inventories([t.name for t in counted]) if counted else {}
        for task in counted:
            self._counted[task.name] = now
            self._check(task, tokens[task.name])

    def _held(self, task: PeriodicTask, now: float) -> bool:
        """Whether the task's token fell due and its runner holds it (delivered, not yet
        acknowledged, so the broker's count leaves it out) until it reports the tick. Counting the
        quiet window from the due time, not from when the queues were first seen empty, keeps a
        runner that starts a tick a little late under load from looking like a lost token."""
        due = self._due.get(task.name, float("inf"))
        last_report = max(due, self._activity.get(task.name, float("-inf")))
        # A token its runner keeps for the next tick is held from its announcement on.
        if (due <= now or task.name in self._kept) and now < last_report + quiet_window_s(task):
            self._empty_since.pop(task.name, None)
            return True
        return False

    def _check(self, task: PeriodicTask, tokens: int) -> None:
        """Act on a task's count: a token seen ends any empty spell; no token and no activity for
        a quiet window is a lost token, re-seeded (a loss is seen within half a window, so the
        new token comes within about one period)."""
        now = self.monotonic()
        window = quiet_window_s(task)
        if self.hold_s > 0 and self._activity.get(task.name, float("-inf")) < self._led_at:
            # Nothing heard of the task since this process took the lead: a token its runner
            # keeps is out of the count, and is next reported when its tick runs.
            window += min(task.period_s, self.hold_s)
        if tokens > 0:
            self._empty_since.pop(task.name, None)
            return
        since = self._empty_since.setdefault(task.name, now)
        if self._activity.get(task.name, float("-inf")) >= since:
            # A runner holds the token (it reported in): start the quiet window again.
            self._empty_since[task.name] = now
            return
        if now - since < window:
            return
        following = task.schedule.first_after(self.clock())
        try:
            first = self.ledger.read(task.name) is None
        except _LEDGER_DOWN:
            first = False
        if first:
            log.info("task %s: first token, tick %s", task.name, following)
        else:
            log.warning("task %s: token lost; re-seeding tick %s", task.name, following)
        self.publish_token(Token(task.name, following, gen=self._gens.get(task.name, 0)))
        self.emit(task.name, "seeded" if first else "reseeded", due=following)
        self._empty_since.pop(task.name, None)


class Scheduler:
    """Every runner of this process's consumer group (on one Consumer) and the reconciler, each
    on its own thread and connection; with an override store, the runtime registry too (worker/scheduler/control.py:
    runners come and go as tasks are added, removed or moved to another group)."""

    def __init__(
        self,
        registry: Registry,
        url: str,
        *,
        names: Names | None = None,
        send: SendEvent | None = None,
        clock: Clock = time.time,
        ledger: Ledger | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        heartbeat_s: int = DEFAULT_HEARTBEAT_S,
        backoff: Backoff = Backoff(),
        overrides: OverrideStore | None = None,
        group: str = GROUPS[0],
        oneoffs: _Base | None = None,
        overlap: OverlapGuard | None = None,
        hold_s: float = 0.0,
    ) -> None:
        if group not in GROUPS:
            raise ValueError(f"group must be one of {', '.join(GROUPS)}, got {group!r}")
        self.url, self.group = url, group
        self.names = names or Names()
        # One ledger for the process (without a table: this process's memory).
        self.ledger = ledger if ledger is not None else MemoryLedger()
        self._runner_args: dict[str, Any] = {
            "names": self.names,
            "send": send,
            "clock": clock,
            "ledger": self.ledger,
            "lease_s": lease_s,
            "heartbeat_s": heartbeat_s,
            "backoff": backoff,
            "overlap": overlap,
            "hold_s": hold_s,
        }
        # This process's lifecycle events, counted for the metrics (broker_metrics).
        self.lifecycle = Lifecycle()
        self.runners: list[TaskRunner] = []
        # Every runner of the process on one connection (Consumer).
        self.consumer = Consumer(url, names=self.names, heartbeat_s=heartbeat_s)
        self._running: dict[str, TaskRunner] = {}
        self.reconciler = Reconciler(
            registry,
            url,
            names=self.names,
            clock=clock,
            heartbeat_s=heartbeat_s,
            ledger=self.ledger,
            hold_s=hold_s,
        )
        self.reconciler.lifecycle = self.lifecycle
        self.live = LiveRegistry(registry, overrides, self.apply)
        # The one-off runner (worker/scheduler/oneoff.py), when the process runs one-offs.
        self.oneoffs = oneoffs
        if oneoffs is not None:
            oneoffs.lifecycle = self.lifecycle
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stops: list[threading.Event] = []
        self._lock = threading.Lock()
        self._started = False
        self.apply(self.live.entries)

    def apply(self, entries: list[Entry]) -> None:
        """Run `entries` from now on: a runner for each task of this group, none for the others
        (a task moved to another group is left to that group's processes)."""
        with self._lock:
            mine = {e.task.name: e for e in entries if e.task.group == self.group}
            for name, runner in list(self._running.items()):
                if name not in mine:
                    # Its consumer goes: the queue's next consumer takes over.
                    self.consumer.remove(name)
                    del self._running[name]
                    self.runners.remove(runner)
            for name, entry in mine.items():
                if name in self._running:
                    self._running[name].apply(entry)
                    continue
                runner = TaskRunner(entry.task, self.url, **self._runner_args)
                runner.apply(entry)
                runner.lifecycle = self.lifecycle
                runner.refresh = self.live.refresh
                self._running[name] = runner
                self.runners.append(runner)
                self.consumer.add(runner)
            self.reconciler.apply(entries)

    def _spawn(
        self, name: str, target: Callable[[threading.Event], None], stop: threading.Event
    ) -> None:
        """A thread that serves until `stop` (set by stop(), or alone: its task left the group)."""
        if self.stop_event.is_set():
            return
        self._stops.append(stop)
        thread = threading.Thread(target=target, args=(stop,), name=f"sched-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def start(self) -> Scheduler:
        # The overrides first, so a paused or removed task runs no tick at start.
        self.live.refresh()
        with self._lock:
            self._started = True
        self._spawn("runners", self.consumer.serve, threading.Event())
        self._spawn("reconciler", self.reconciler.serve, threading.Event())
        if self.live.store is not None:
            prompts = Prompts(self.url, self.names, self.live, self.reconciler.heartbeat_s)
            self._spawn("registry", prompts.serve, threading.Event())
        if self.oneoffs is not None:
            self._spawn("oneoffs", self.oneoffs.serve, threading.Event())  # type: ignore[attr-defined]
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self.stop_event.set()
            for stop in self._stops:
                stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
