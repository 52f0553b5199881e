"""The runtime registry in a scheduler process: read the overrides, apply them, listen for prompts.

The overrides live in the coordination table (sluice/scheduling/overrides.py); a message on the
broker's registry exchange (fanout) only prompts every process to read them at once. Each process
also re-reads them every REREAD_S seconds and whenever a token of a newer schedule generation
reaches one of its runners, so a lost prompt, a broker restart or a process that started later
delays a change by seconds at most, never loses it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable

import pika
import pika.exceptions
from botocore.exceptions import BotoCoreError, ClientError

from sluice.scheduling.names import Names
from sluice.scheduling.overrides import REREAD_S, Entry, OverrideStore, effective
from sluice.scheduling.registry import Registry
from worker.scheduler.connection import _BROKER_DOWN, _OPENING, _connect, reconnecting

log = logging.getLogger("sluice.scheduler")
Apply = Callable[[list[Entry]], None]


class LiveRegistry:
    """The effective registry of this process: the declared tasks with the stored overrides."""

    def __init__(self, declared: Registry, store: OverrideStore | None, apply: Apply) -> None:
        self.declared, self.store, self._apply = declared, store, apply
        self.version = -1
        self.entries = effective(declared, {})
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Read the overrides and apply them if they changed; False when the table could not be
        read (the last ones read stay in force)."""
        if self.store is None:
            return True
        with self._lock:
            try:
                current = self.store.read()
            except (BotoCoreError, ClientError) as exc:
                log.error("runtime registry not read (%s); keeping version %s", exc, self.version)
                return False
            if current.version == self.version:
                return True
            self.entries = effective(self.declared, current.tasks)
            self.version = current.version
            log.info(
                "runtime registry version %s: %s",
                current.version,
                ", ".join(f"{e.task.name} ({e.origin}, {e.state})" for e in self.entries),
            )
            self._apply(self.entries)
            return True


class Prompts:
    """Consumes the registry exchange on its own connection (an exclusive queue per process) and
    re-reads the overrides on every prompt, and every REREAD_S seconds without one."""

    def __init__(self, url: str, names: Names, live: LiveRegistry, heartbeat_s: int) -> None:
        self.url, self.names, self.live, self.heartbeat_s = url, names, live, heartbeat_s
        self.reread_s = REREAD_S
        self._last = time.monotonic()  # when the overrides were last re-read on a prompt or by time
        self._connection: pika.BlockingConnection | None = None

    def serve(self, stop: threading.Event) -> None:
        # Any AMQP error, not only the broker going away (a consumer the broker cancelled too):
        # the prompts are a hint, a new connection costs nothing.
        broker_down = (*_BROKER_DOWN, pika.exceptions.AMQPError)
        reconnecting(
            stop,
            "registry prompts",
            self._session,
            self._close,
            ledger_wait_s=1.0,  # LiveRegistry.refresh waits out the table itself
            broker_down=broker_down,
        )

    def _reread_if_due(self) -> None:
        if time.monotonic() - self._last >= self.reread_s:
            self.live.refresh()
            self._last = time.monotonic()

    def _session(self, stop: threading.Event, connected: Callable[[], None]) -> None:
        # While the broker is away, the overrides are still re-read by time.
        self._reread_if_due()
        with _OPENING:
            self._connection = _connect(self.url, self.heartbeat_s)
        channel = self._connection.channel()
        channel.exchange_declare(self.names.registry_exchange, "fanout", durable=True)
        queue = self.names.listener(f"registry-{uuid.uuid4().hex[:12]}")
        channel.queue_declare(queue, exclusive=True, auto_delete=True)
        channel.queue_bind(queue, self.names.registry_exchange)
        # Prompts sent while this process was cut off are lost: read what they announced.
        self.live.refresh()
        connected()
        for method, _, _ in channel.consume(queue, auto_ack=True, inactivity_timeout=0.1):
            if stop.is_set():
                break
            if method is not None:
                self.live.refresh()
                self._last = time.monotonic()
            else:
                self._reread_if_due()

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()
