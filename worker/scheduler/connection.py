"""The scheduler's connections to the broker: how one is opened, which errors mean the broker
(or the tick ledger's table) is unavailable, and the loop every long-lived part of the scheduler
runs its connection in, so that none of their threads dies of either."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pika
import pika.exceptions
from botocore.exceptions import BotoCoreError, ClientError
from pika.adapters.utils.connection_workflow import AMQPConnectorException

log = logging.getLogger("sluice.scheduler")

# Connection errors that mean "the broker went away": reconnect, never crash the process.
_BROKER_DOWN: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    # A handshake that timed out (a broker too busy to answer): pika's connector raises its own.
    AMQPConnectorException,
    # A channel closed by the broker, and a publish it refused or could not route (pika's
    # NackError and UnroutableError are channel errors too).
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    ConnectionError,
    OSError,
)
# Errors of the tick ledger (DynamoDB): no tick runs unclaimed, so the runner waits them out.
_LEDGER_DOWN: tuple[type[BaseException], ...] = (BotoCoreError, ClientError)


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


# How long a connection's loop waits at most before it looks whether it should stop (a delivery
# wakes it at once, and pika keeps the heartbeats while it waits).
IDLE_WAKE_S = 1.0


def serve_for(connection: pika.BlockingConnection, seconds: float, stop: threading.Event) -> None:
    """Serve the connection's events for `seconds`, or until `stop` is set (seen within
    IDLE_WAKE_S). A loop that waited out its whole pause (the reconciler's is up to 5 s, the
    one-off sweep's 10 s) held a stopping process that long past its grace: Scheduler.stop
    waits for each thread, and EB's supervisor waits for the process."""
    end = time.monotonic() + seconds
    while not stop.is_set():
        left = end - time.monotonic()
        if left <= 0:
            return
        connection.process_data_events(time_limit=min(left, IDLE_WAKE_S))


# Connections this process opens (and declares on) at once: its runners' Consumer, the
# reconciler, the one-off runner, the registry's prompts (and a TaskRunner serving alone).
_OPENING = threading.BoundedSemaphore(8)


def reconnecting(
    stop: threading.Event,
    what: str,
    session: Callable[[threading.Event, Callable[[], None]], None],
    close: Callable[[], None],
    *,
    ledger_wait_s: float,
    broker_down: tuple[type[BaseException], ...] = _BROKER_DOWN,
) -> None:
    """Run `session` (one connection's work; it calls `connected()` once set up) until `stop`,
    and again after the broker fails or refuses a publish (`broker_down`; backing off from
    0.2 s, doubling up to 1 s; reset once connected) or the table does (`ledger_wait_s`);
    `close` runs after each. Every long-lived part of the scheduler (the Consumer, the
    reconciler, the one-off runner and sweep, the registry's prompts) loops on it, so none of
    their threads dies of the broker or the table."""
    backoff = [0.2]

    def connected() -> None:
        backoff[0] = 0.2

    while not stop.is_set():
        try:
            session(stop, connected)
        except broker_down as exc:
            log.warning("%s: broker unavailable (%r); reconnecting", what, exc)
            stop.wait(backoff[0])
            backoff[0] = min(backoff[0] * 2, 1.0)
        except _LEDGER_DOWN as exc:
            log.error("%s: table unavailable (%s); retrying", what, exc)
            stop.wait(ledger_wait_s)
        finally:
            close()
