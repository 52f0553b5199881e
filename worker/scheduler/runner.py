"""The broker scheduler: one runner per task, one reconciler, lifecycle events on the control exchange.

Runner (any number of processes; the processor queue's single active consumer picks one):
receive the task's token, run the tick, publish the next token (due on the grid, not counted from
the end of the run), then ack. The token is the only message of its task, so runs never overlap.
Reconciler (one leader, chosen by an exclusive queue): a task whose token is nowhere to be seen
and which shows no activity for a quiet window gets a new token; runners drop any token for a
tick they have already run, so a re-seed can never make two runs of one tick.
"""

from __future__ import annotations

import contextlib
import json
import logging
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

from sluice.envelope import Event
from sluice.errors import BusinessError
from sluice.scheduling.names import Names, expiration_ms, quiet_window_s
from sluice.scheduling.registry import PeriodicTask, Registry, Tick
from sluice.scheduling.schedule import next_due
from sluice.settings import SchedulerSettings
from worker.scheduler.topology import declare

log = logging.getLogger("sluice.scheduler")
Clock = Callable[[], float]
SendEvent = Callable[[Event], Any]

# Connection errors that mean "the broker went away": reconnect, never crash the process.
_BROKER_DOWN: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    ConnectionError,
    OSError,
)


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


def _connect(url: str) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    params.heartbeat = 20
    params.blocked_connection_timeout = 30
    params.socket_timeout = 5
    return pika.BlockingConnection(params)


def _encode_token(task: str, due: float) -> bytes:
    return json.dumps({"v": 1, "task": task, "due": due}, separators=(",", ":")).encode()


@dataclass
class _Channels:
    connection: pika.BlockingConnection
    work: Any  # confirms on: tokens and dead-lettered ticks
    control: Any  # no confirms: lifecycle events are information, not state


class _Base:
    def __init__(self, url: str, names: Names, clock: Clock) -> None:
        self.url, self.names, self.clock = url, names, clock
        self._ch: _Channels | None = None

    def _open(self, tasks: list[PeriodicTask]) -> _Channels:
        connection = _connect(self.url)
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
        assert self._ch is not None
        self._ch.control.basic_publish(
            self.names.control_exchange,
            f"{task}.{event}",
            json.dumps(body, separators=(",", ":")).encode(),
            pika.BasicProperties(content_type="application/json", delivery_mode=1),
        )

    def publish_token(self, task: str, due: float) -> None:
        """The task's token for tick `due`, confirmed by the broker before this returns."""
        assert self._ch is not None
        delay = due - self.clock()
        props = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type="application/json",
            expiration=expiration_ms(delay) if delay > 0 else None,
        )
        # A tick already due skips the hatchery: waiting out a zero TTL adds only latency.
        exchange = self.names.scheduler_exchange if delay > 0 else self.names.processor_exchange
        self._ch.work.basic_publish(exchange, task, _encode_token(task, due), props, mandatory=True)

    def inventory(self, task: str) -> int:
        """Tokens of `task` waiting in its hatchery or ready in its processor queue."""
        assert self._ch is not None
        total = 0
        for queue in (self.names.hatchery(task), self.names.processor(task)):
            ok = self._ch.work.queue_declare(queue, passive=True)
            total += ok.method.message_count
        return total


class TaskRunner(_Base):
    """Consumes one task's processor queue and runs its ticks, one at a time."""

    def __init__(
        self,
        task: PeriodicTask,
        url: str,
        *,
        names: Names,
        send: SendEvent | None = None,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(url, names, clock)
        self.task = task
        self.send = send
        # The last tick this process finished: a token for it or an earlier tick is a duplicate.
        self.last_done: float | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tick-{task.name}")
        self._inflight: tuple[float, Future[None]] | None = None

    def _act(self, tick: Tick) -> None:
        if self.task.action is not None:
            self.task.action(tick)
            return
        if self.send is None:
            raise BusinessError(f"task {self.task.name} sends events but no sender is configured")
        self.send(self.task.tick_event(tick))

    def serve(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, reconnecting whenever the broker goes away."""
        backoff = 0.2
        while not stop.is_set():
            try:
                ch = self._open([self.task])
                ch.work.basic_qos(prefetch_count=1)
                backoff = 0.2
                for method, props, body in ch.work.consume(
                    self.names.processor(self.task.name), inactivity_timeout=0.05
                ):
                    if stop.is_set():
                        break
                    if method is not None:
                        self._handle(method, props, body)
            except _BROKER_DOWN as exc:
                log.warning("runner %s: broker unavailable (%s); reconnecting", self.task.name, exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                self._close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _handle(self, method: Any, props: Any, body: bytes) -> None:
        assert self._ch is not None
        ch = self._ch.work
        name = self.task.name
        try:
            due = float(json.loads(body)["due"])
        except (ValueError, KeyError, TypeError):
            log.error("runner %s: unreadable token %r dead-lettered", name, body[:200])
            ch.basic_reject(method.delivery_tag, requeue=False)
            return
        if self.last_done is not None and due <= self.last_done:
            # Already run here: this is a re-seeded copy, or the ack of the run got lost.
            if self.inventory(name) == 0:
                self._schedule_after(due)
            self.emit(name, "duplicate", due=due)
            ch.basic_ack(method.delivery_tag)
            return
        if method.redelivered and self.inventory(name) > 0:
            # A successor exists, so the run of this token finished in a process that died
            # before acking it: running it again would run the tick twice.
            self.emit(name, "duplicate", due=due)
            ch.basic_ack(method.delivery_tag)
            return
        attempt = int((props.headers or {}).get("x-delivery-count", 0)) + 1
        tick = Tick(name, due, attempt)
        started = self.clock()
        resuming = self._inflight is not None and self._inflight[0] == due
        self.emit(
            name, "resumed" if resuming else "started", due=due, lateness_s=started - due,
            attempt=attempt,
        )  # fmt: skip
        outcome, error = self._run(tick)
        took = self.clock() - started
        retry = outcome == "transient" and attempt < self.task.max_attempts
        if not retry:
            # Recorded before anything can fail on the broker side: if the connection drops
            # from here on, the redelivered token only gets its successor, never a second run.
            self.last_done = due
        if outcome == "succeeded":
            self.emit(name, "succeeded", due=due, duration_s=took)
        elif outcome == "business":
            log.warning("task %s tick %s failed (business): %s", name, tick.due_iso, error)
            self.emit(name, "failed", due=due, error_class="business", error=error)
        elif retry:
            self.emit(name, "failed", due=due, error_class="transient", error=error, retry=True)
            ch.basic_nack(method.delivery_tag, requeue=True)
            return
        else:
            self._dead_letter(tick, error)
        self._schedule_after(due)
        ch.basic_ack(method.delivery_tag)

    def _run(self, tick: Tick) -> tuple[str, str]:
        """Run the tick in the action thread; keep the connection and the heartbeats alive."""
        assert self._ch is not None
        # A run cut off from the broker (connection lost mid-run) keeps going in the pool; when
        # its token comes back, wait for that run instead of starting the tick a second time.
        if self._inflight is not None and self._inflight[0] == tick.due:
            future = self._inflight[1]
        else:
            future = self._pool.submit(self._act, tick)
            self._inflight = (tick.due, future)
        outcome = self._wait(tick, future)
        self._inflight = None
        return outcome

    def _wait(self, tick: Tick, future: Future[None]) -> tuple[str, str]:
        assert self._ch is not None
        beat = quiet_window_s(self.task) / 2
        while True:
            try:
                # Wakes the moment the run ends; between beats pika is not serviced, which is
                # fine: a beat (<= 5 s) is far inside the AMQP heartbeat timeout.
                future.result(timeout=beat)
                return "succeeded", ""
            except FuturesTimeout:
                if future.done():  # the action itself raised TimeoutError: transient
                    return "transient", repr(future.exception())
                # Tells the reconciler the token is held, not lost, however long the run takes.
                self._ch.connection.process_data_events(time_limit=0)
                self.emit(self.task.name, "running", due=tick.due)
            except BusinessError as exc:
                return "business", repr(exc)
            except Exception as exc:  # unclassified failures count as transient
                return "transient", repr(exc)

    def _dead_letter(self, tick: Tick, error: str) -> None:
        assert self._ch is not None
        log.error(
            "task %s tick %s dead-lettered after %s attempts", tick.task, tick.due_iso, tick.attempt
        )
        self._ch.work.basic_publish(
            self.names.dead_exchange,
            tick.task,
            _encode_token(tick.task, tick.due),
            pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                content_type="application/json",
                headers={"reason": "retry-limit", "attempts": tick.attempt, "error": error[:500]},
            ),
        )
        self.emit(tick.task, "dead_lettered", due=tick.due, attempts=tick.attempt, error=error)

    def _schedule_after(self, due: float) -> None:
        following, missed = next_due(self.task.schedule, due, self.clock())
        self.publish_token(self.task.name, following)
        self.emit(self.task.name, "scheduled", due=following, missed=missed)


class Reconciler(_Base):
    """Keeps exactly one token per task: seeds missing tokens while it holds the leader lock."""

    def __init__(self, registry: Registry, url: str, *, names: Names, clock: Clock = time.time):
        super().__init__(url, names, clock)
        self.registry = registry
        self._activity: dict[str, float] = {}
        self._empty_since: dict[str, float] = {}

    def _on_event(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        task = method.routing_key.split(".", 1)[0]
        self._activity[task] = time.monotonic()

    def serve(self, stop: threading.Event) -> None:
        backoff = 0.2
        tasks = list(self.registry)
        tick = min(quiet_window_s(t) for t in tasks) / 2 if tasks else 1.0
        while not stop.is_set():
            try:
                ch = self._open(tasks)
                if not self._lead(ch):
                    self._close()
                    stop.wait(max(tick, 0.5))
                    continue
                backoff = 0.2
                self._empty_since.clear()
                while not stop.is_set():
                    for task in tasks:
                        self._check(task)
                    ch.connection.process_data_events(time_limit=tick)
            except _BROKER_DOWN as exc:
                log.warning("reconciler: broker unavailable (%s); reconnecting", exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                self._close()

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
        now = time.monotonic()
        if self.inventory(task.name) > 0:
            self._empty_since.pop(task.name, None)
            return
        since = self._empty_since.setdefault(task.name, now)
        if self._activity.get(task.name, float("-inf")) >= since:
            # A runner holds the token (it reported in): start the quiet window again.
            self._empty_since[task.name] = now
            return
        if now - since < quiet_window_s(task):
            return
        following = task.schedule.first_after(self.clock())
        log.warning("task %s: token lost; re-seeding tick %s", task.name, following)
        self.publish_token(task.name, following)
        self.emit(task.name, "reseeded", due=following)
        self._empty_since.pop(task.name, None)


class Scheduler:
    """Every runner and the reconciler of one process, each on its own thread and connection."""

    def __init__(
        self,
        registry: Registry,
        url: str,
        *,
        names: Names | None = None,
        send: SendEvent | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.names = names or Names()
        self.runners = [
            TaskRunner(t, url, names=self.names, send=send, clock=clock) for t in registry
        ]
        self.reconciler = Reconciler(registry, url, names=self.names, clock=clock)
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Scheduler:
        for name, target in [(r.task.name, r.serve) for r in self.runners] + [
            ("reconciler", self.reconciler.serve)
        ]:
            thread = threading.Thread(
                target=target, args=(self.stop_event,), name=f"sched-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout)

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
