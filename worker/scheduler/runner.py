"""The broker scheduler: one runner per task, one reconciler, lifecycle events on the control exchange.

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
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pika
import pika.exceptions
from botocore.exceptions import BotoCoreError, ClientError
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from sluice.envelope import Event
from sluice.errors import BusinessError, TransientError
from sluice.scheduling.names import Names, expiration_ms, quiet_window_s
from sluice.scheduling.overrides import Entry, OverrideStore
from sluice.scheduling.registry import GROUPS, OVERLAP, PeriodicTask, Registry, Tick, Token
from sluice.scheduling.schedule import latest_due, next_due
from sluice.settings import SchedulerSettings
from worker.scheduler.broker_metrics import Lifecycle
from worker.scheduler.control import LiveRegistry, Prompts
from worker.scheduler.ledger import Claim, Ledger, MemoryLedger
from worker.scheduler.overlap import UNKNOWN, OverlapGuard, Overlapping
from worker.scheduler.topology import declare

log = logging.getLogger("sluice.scheduler")
Clock = Callable[[], float]
SendEvent = Callable[[Event], Any]

# Connection errors that mean "the broker went away": reconnect, never crash the process.
_BROKER_DOWN: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    # A handshake that timed out (a broker too busy to answer): pika's connector raises its own.
    AMQPConnectorException,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    ConnectionError,
    OSError,
)
# Errors of the tick ledger (DynamoDB): no tick runs unclaimed, so the runner waits them out.
_LEDGER_DOWN: tuple[type[BaseException], ...] = (BotoCoreError, ClientError)
_DEFAULTS = SchedulerSettings.model_fields
# The lifecycle events that announce a task's next token (and carry when it falls due).
_TOKEN_EVENTS = frozenset({"scheduled", "seeded", "reseeded", "rescheduled", "failed"})
DEFAULT_LEASE_S: float = _DEFAULTS["lease_s"].default
DEFAULT_HEARTBEAT_S: int = _DEFAULTS["heartbeat_s"].default
# How often an idle runner wakes to see whether it should stop (a delivery wakes it at once, and
# pika keeps the heartbeats while it waits). Every runner is a thread: at 20 wakes a second, a
# thousand idle runners spent more than a core (bench/scheduler_bench.py, many tasks).
IDLE_WAKE_S = 1.0


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


def _connect(url: str, heartbeat_s: int) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    # A frozen process's connection is closed after about two missed heartbeats: the bound on
    # how long it can hold its task's token (and stall the task).
    params.heartbeat = heartbeat_s
    params.blocked_connection_timeout = 30
    params.socket_timeout = 5
    try:
        return pika.BlockingConnection(params)
    except ValueError as exc:  # pika: the socket closed while the connection was being set up
        raise pika.exceptions.AMQPConnectionError(repr(exc)) from exc


# Connections this process opens (and declares on) at once. Every runner has its own: a thousand
# starting together, or reconnecting after a broker restart, timed the broker's handshakes out
# (bench/scheduler_bench.py, many tasks); in turns, each is quick.
_OPENING = threading.BoundedSemaphore(8)


@dataclass
class _Channels:
    connection: pika.BlockingConnection
    work: Any  # confirms on: tokens and dead-lettered ticks
    control: Any  # no confirms: lifecycle events are information, not state


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
            pika.BasicProperties(content_type="application/json", delivery_mode=1),
        )

    def publish_token(self, token: Token, delay: float | None = None) -> None:
        """A task's token, through its hatchery for `delay` seconds (default: until its tick is
        due), confirmed by the broker before this returns."""
        assert self._ch is not None
        if delay is None:
            delay = token.due - self.clock()
        props = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/json",
            expiration=expiration_ms(delay) if delay > 0 else None,
        )
        # A tick already due skips the hatchery: waiting out a zero TTL adds only latency.
        exchange = self.names.scheduler_exchange if delay > 0 else self.names.processor_exchange
        self._ch.work.basic_publish(exchange, token.task, token.encode(), props, mandatory=True)

    def inventory(self, task: str) -> int:
        """Tokens of `task` waiting in its hatchery or ready in its processor queue."""
        assert self._ch is not None
        total = 0
        for queue in (self.names.hatchery(task), self.names.processor(task)):
            ok = self._ch.work.queue_declare(queue, passive=True)
            total += ok.method.message_count
        return total


@dataclass
class _Inflight:
    """A run this process started: the token's due time, the tick it runs, its fence."""

    token_due: float
    tick: Tick
    fence: int
    future: Future[bool]


class TaskRunner(_Base):
    """Consumes one task's processor queue and runs its ticks, one at a time, each claimed first
    in the tick ledger (worker/scheduler/ledger.py)."""

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
    ) -> None:
        super().__init__(url, names, clock, heartbeat_s)
        self.task = task
        # Skips an event task's tick while its previous tick's run still runs (overlap.py).
        self.overlap = overlap
        self.backoff = backoff
        self.send = send
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self.lease_s = lease_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tick-{task.name}")
        self._inflight: _Inflight | None = None
        # Until when (monotonic: it runs on while the process is frozen) this runner's lease is
        # surely held: an event is sent only within it.
        self._lease_end = float("-inf")
        # The runtime registry's say (worker/scheduler/control.py): the schedule's generation,
        # paused, removed; `refresh` re-reads it when a token of a newer generation arrives.
        self.gen, self.paused, self.disabled = 0, False, False
        self.refresh: Callable[[], object] | None = None

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
        assert self._ch is not None
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
        self._ch.work.basic_ack(method.delivery_tag)
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
        """Consume until `stop` is set, reconnecting whenever the broker goes away."""
        backoff = 0.2
        while not stop.is_set():
            try:
                ch = self._open([self.task])
                ch.work.basic_qos(prefetch_count=1)
                backoff = 0.2
                for method, props, body in ch.work.consume(
                    self.names.processor(self.task.name), inactivity_timeout=IDLE_WAKE_S
                ):
                    if stop.is_set():
                        break
                    if method is not None:
                        self._handle(method, props, body)
            except _BROKER_DOWN as exc:
                log.warning("runner %s: broker unavailable (%s); reconnecting", self.task.name, exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            except _LEDGER_DOWN as exc:
                # The token goes back (the connection closes unacked): no tick runs unclaimed.
                log.error("runner %s: tick ledger unavailable (%s); retrying", self.task.name, exc)
                stop.wait(1.0)
            finally:
                self._close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _handle(self, method: Any, props: Any, body: bytes) -> None:
        assert self._ch is not None
        ch = self._ch.work
        name = self.task.name
        try:
            token = Token.decode(body)
        except ValueError:
            log.error("runner %s: unreadable token %r dead-lettered", name, body[:200])
            ch.basic_reject(method.delivery_tag, requeue=False)
            return
        token_due = token.due
        if token.redrive:
            self._redrive(method, token)
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
            ch.basic_ack(method.delivery_tag)
            return
        tick_ms, now_ms = round(due * 1000), round(now * 1000)
        lease_ms = round(self.lease_s * 1000)
        claimed = self.ledger.claim(name, tick_ms, now_ms, lease_ms, self.holder)
        if claimed is None:
            self._drop(method, due, self.ledger.read(name))
            return
        self._lease_end = time.monotonic() + self.lease_s
        fence, last = claimed.fence, claimed.previous
        latest = self.task.schedule.last_at_or_before(self.clock())
        if latest > due:
            # The claim took so long (a slow ledger, a paused process) that a later tick fell
            # due meanwhile: only the latest due tick runs, so this one is given up, not run late.
            self.ledger.finish(name, fence, "done")
            self.emit(name, "missed", due=due, missed=missed + 1)
            self.publish_token(Token(name, latest, gen=self.gen))
            ch.basic_ack(method.delivery_tag)
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
        self.emit(name, "started", due=due, lateness_s=now - due, attempt=attempt, fence=fence)
        future = self._pool.submit(self._act, tick)
        inflight = self._inflight = _Inflight(token_due, tick, fence, future)
        self._complete(method, inflight, resumed=False)

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
        assert self._ch is not None
        name = self.task.name
        self.emit(name, "duplicate", due=due, claimed=last.tick / 1000 if last else None)
        if self.inventory(name) == 0:
            after = self.clock()
            if last is not None and last.live(round(after * 1000)):
                after = max(after, last.until_ms / 1000)  # let the live claim end first
            self._schedule_after(after)
        self._ch.work.basic_ack(method.delivery_tag)

    def _complete(self, method: Any, inflight: _Inflight, *, resumed: bool) -> None:
        assert self._ch is not None
        ch = self._ch.work
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
            ch.basic_ack(method.delivery_tag)
            return
        if outcome == "succeeded":
            self.emit(name, "succeeded", due=tick.due, duration_s=took)
        elif outcome == "missed":
            self.emit(name, "missed", due=tick.due, missed=1)
        elif outcome == "skipped":
            self._skipped(tick, inflight.future)
        elif outcome == "business":
            log.warning("task %s tick %s failed (business): %s", name, tick.due_iso, error)
            self.emit(name, "failed", due=tick.due, error_class="business", error=error)
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
            )
            ch.basic_ack(method.delivery_tag)
            return
        else:
            self.emit(
                name,
                "failed",
                due=tick.due,
                error_class="transient",
                error=error,
                attempt=tick.attempt,
            )
            self._dead_letter(tick, error)
        self._schedule_after(tick.due)
        ch.basic_ack(method.delivery_tag)

    def _wait(self, inflight: _Inflight) -> tuple[str, str]:
        """Wait for the run; meanwhile keep the connection alive and renew the lease."""
        assert self._ch is not None
        tick, future = inflight.tick, inflight.future
        beat = min(quiet_window_s(self.task) / 2, self.lease_s / 3)
        self._ch.connection.process_data_events(time_limit=0)  # sends `started` (or `resumed`)
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
                self._ch.connection.process_data_events(time_limit=0)
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
        assert self._ch is not None
        ch, name = self._ch.work, self.task.name
        last = self.ledger.read(name)
        now = self.clock()
        busy = self._inflight is not None and not self._settle(self._inflight)
        if busy or (last is not None and last.live(round(now * 1000))):
            wait = last.until_ms / 1000 - now if last is not None else 0.0
            self.publish_token(token, max(wait, 0.1))
            ch.basic_ack(method.delivery_tag)
            return
        tick = Tick(name, token.due, token.attempt)
        self._lease_end = time.monotonic() + self.lease_s
        self.emit(name, "started", due=tick.due, lateness_s=now - tick.due, redrive=True)
        run = self._pool.submit(self._act, tick, latest_only=False)
        inflight = _Inflight(token.due, tick, 0, run)
        started = self.clock()
        outcome, error = self._wait(inflight)
        if outcome == "succeeded":
            self.emit(name, "succeeded", due=tick.due, duration_s=self.clock() - started)
        elif outcome == "skipped":
            self._skipped(tick, inflight.future)
        elif outcome == "business":
            self.emit(name, "failed", due=tick.due, error_class="business", error=error)
        else:
            self.emit(name, "failed", due=tick.due, error_class="transient", error=error)
            self._dead_letter(tick, error, reason="redrive-failed")
        ch.basic_ack(method.delivery_tag)

    def _skipped(self, tick: Tick, run: Future[bool]) -> None:
        """Report a tick skipped because its task's previous run still runs (overlap.py)."""
        exc = run.exception()
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
        self.emit(tick.task, "skipped", due=tick.due, running=previous, reason=verdict.reason)

    def _dead_letter(self, tick: Tick, error: str, reason: str = "retry-limit") -> None:
        assert self._ch is not None
        log.error(
            "task %s tick %s dead-lettered after %s attempts (%s)",
            tick.task,
            tick.due_iso,
            tick.attempt,
            reason,
        )
        headers = {"reason": reason, "task": tick.task, "attempts": tick.attempt}
        self._ch.work.basic_publish(
            self.names.dead_exchange,
            tick.task,
            Token(tick.task, tick.due).encode(),
            pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                content_type="application/json",
                headers={**headers, "error": error[:500]},
            ),
        )
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
        # When (monotonic) each task's token falls due, from the events that announce a token.
        self._due: dict[str, float] = {}

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

    def serve(self, stop: threading.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            try:
                self._changed.clear()
                tasks = self._tasks
                tick = self._interval(tasks)
                ch = self._open(tasks)
                # Only the leader publishes a re-timed task's token, for changes it applied
                # while leading (a process that takes the lead later leaves an older token to
                # be dropped on arrival and replaced).
                self._retimed.clear()
                if not self._lead(ch):
                    self._close()
                    stop.wait(max(tick, 0.5))
                    continue
                backoff = 0.2
                self._empty_since.clear()
                while not stop.is_set():
                    if self._changed.is_set():
                        self._changed.clear()
                        tasks = self._tasks
                        tick = self._interval(tasks)
                        declare(ch.work, self.names, tasks)  # an added task's queues
                        self._retime()
                    for task in tasks:
                        self._check(task)
                    ch.connection.process_data_events(time_limit=tick)
            except _BROKER_DOWN as exc:
                log.warning("reconciler: broker unavailable (%s); reconnecting", exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                self._close()

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
        events.queue_bind(listen, self.names.control_exchange, routing_key="#")
        events.basic_consume(listen, self._on_event, auto_ack=True)
        return True

    def _check(self, task: PeriodicTask) -> None:
        now = self.monotonic()
        window = quiet_window_s(task)
        due = self._due.get(task.name, float("inf"))
        if due <= now < max(due, self._activity.get(task.name, float("-inf"))) + window:
            # Its token fell due: its runner holds it (delivered, not yet acknowledged, so the
            # broker's count leaves it out) until it reports the tick. Counting the quiet window
            # from the due time, not from when the queues were first seen empty, keeps a runner
            # that starts a tick a little late under load from looking like a lost token.
            self._empty_since.pop(task.name, None)
            return
        if self.inventory(task.name) > 0:
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
    """Every runner of this process's consumer group and the reconciler, each on its own thread
    and connection; with an override store, the runtime registry too (worker/scheduler/control.py:
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
        }
        # This process's lifecycle events, counted for the metrics (broker_metrics).
        self.lifecycle = Lifecycle()
        self.runners: list[TaskRunner] = []
        self._running: dict[str, tuple[TaskRunner, threading.Event]] = {}
        self.reconciler = Reconciler(
            registry,
            url,
            names=self.names,
            clock=clock,
            heartbeat_s=heartbeat_s,
            ledger=self.ledger,
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
            for name, (runner, stop) in list(self._running.items()):
                if name not in mine:
                    stop.set()  # its consumer goes: the queue's next consumer takes over
                    del self._running[name]
                    self.runners.remove(runner)
            for name, entry in mine.items():
                if name in self._running:
                    self._running[name][0].apply(entry)
                    continue
                runner = TaskRunner(entry.task, self.url, **self._runner_args)
                runner.apply(entry)
                runner.lifecycle = self.lifecycle
                runner.refresh = self.live.refresh
                self._running[name] = (runner, threading.Event())
                self.runners.append(runner)
                if self._started:
                    self._spawn(name, runner.serve, self._running[name][1])
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
            for name, (runner, stop) in self._running.items():
                self._spawn(name, runner.serve, stop)
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
