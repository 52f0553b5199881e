"""The Consumer's bookkeeping of publisher confirms and of its connection's epoch, without a
broker: pika's own frame classes stand in for what RabbitMQ sends (confirm.select numbers a
channel's publishes from 1; Basic.Ack/Nack carry that number, `multiple` covering every earlier
one; a mandatory message that cannot be routed comes back as Basic.Return before its Ack)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pika
import pika.exceptions
import pytest
from pika import spec

from sluice.scheduling.names import Names
from worker.scheduler.connection import IDLE_WAKE_S
from worker.scheduler.runner import COALESCE_S, Consumer


class Loop:
    """The connection, as far as the Consumer's requests go: callbacks run when `run` is called
    (the I/O thread's turn), publishes recorded with their properties."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []
        self.published: list[tuple[str, str, Any]] = []
        self.acked: list[int] = []

    def add_callback_threadsafe(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def run(self) -> None:
        while self.callbacks:
            self.callbacks.pop(0)()

    def basic_publish(self, exchange: str, key: str, body: bytes, props: Any, **_: Any) -> None:
        self.published.append((exchange, key, props))

    def basic_ack(self, tag: int) -> None:
        self.acked.append(tag)


@pytest.fixture
def wired() -> tuple[Consumer, Loop]:
    consumer = Consumer("amqp://unused", names=Names())
    loop = Loop()
    consumer._connection = loop  # type: ignore[assignment]
    consumer._work = consumer._consume = consumer._control = loop
    consumer.epoch = 1
    return consumer, loop


def confirm(method: Any) -> SimpleNamespace:
    return SimpleNamespace(method=method)


def publish_in_background(consumer: Consumer, pool: ThreadPoolExecutor, n: int) -> list[Any]:
    """Runner i publishes with routing key `t<i>` (the loop's order numbers them)."""
    props = [pika.BasicProperties() for _ in range(n)]
    return [pool.submit(consumer.publish, 1, "x", f"t{i}", b"{}", props[i]) for i in range(n)]


def wait_for_publishes(loop: Loop, n: int) -> None:
    deadline = threading.Event()
    for _ in range(200):
        loop.run()
        if len(loop.published) >= n:
            return
        deadline.wait(0.01)
    raise AssertionError(f"{len(loop.published)} of {n} publishes reached the loop")


def test_publishes_wait_for_their_own_confirm_and_one_multiple_ack_releases_all_before_it(wired):
    consumer, loop = wired
    with ThreadPoolExecutor(3) as pool:
        # Given three runners each waiting for its token's confirm (pipelined on one channel)
        waits = publish_in_background(consumer, pool, 3)
        wait_for_publishes(loop, 3)
        assert [p[2].message_id for p in loop.published] == ["1", "2", "3"]
        # When the broker confirms the second alone
        consumer._on_confirm(confirm(spec.Basic.Ack(delivery_tag=2, multiple=False)))
        # Then only that runner goes on
        second = waits[int(loop.published[1][1][1:])]
        assert second.result(1) is None
        assert sum(w.done() for w in waits) == 1
        # And when it confirms up to the third with multiple=True, the first and third go on too
        consumer._on_confirm(confirm(spec.Basic.Ack(delivery_tag=3, multiple=True)))
        assert all(w.result(1) is None for w in waits)
    assert consumer._unconfirmed == {}


def test_a_nacked_or_returned_publish_raises_in_its_runner_alone(wired):
    consumer, loop = wired
    with ThreadPoolExecutor(3) as pool:
        waits = publish_in_background(consumer, pool, 3)
        wait_for_publishes(loop, 3)
        # Given the broker returns the first (unroutable, mandatory) and nacks the second
        consumer._on_return(None, None, loop.published[0][2], b"{}")
        consumer._on_confirm(confirm(spec.Basic.Nack(delivery_tag=2, multiple=False)))
        # And acks all three (the return's own ack follows it)
        consumer._on_confirm(confirm(spec.Basic.Ack(delivery_tag=3, multiple=True)))
        # Then each runner learns its own outcome
        first, second, third = (waits[int(key[1:])] for _, key, _ in loop.published)
        with pytest.raises(pika.exceptions.UnroutableError):
            first.result(1)
        with pytest.raises(pika.exceptions.NackError):
            second.result(1)
        assert third.result(1) is None


def test_requests_for_a_connection_that_is_gone_are_refused_never_sent_on_the_next(wired):
    consumer, loop = wired
    # Given a delivery received on connection 1, and the Consumer since reconnected (epoch 2)
    consumer.epoch = 2
    # When its runner acks it or publishes its next token
    consumer.ack(1, 7)
    with pytest.raises(pika.exceptions.StreamLostError):
        consumer.publish(1, "x", "t", b"{}", pika.BasicProperties())
    loop.run()
    # Then nothing reaches the new connection (tag 7 there would be another message)
    assert loop.acked == [] and loop.published == []
    # while a request of the current connection goes through
    consumer.ack(2, 7)
    loop.run()
    assert loop.acked == [7]


def test_closing_fails_every_runner_still_waiting_for_a_confirm(wired):
    consumer, loop = wired
    with ThreadPoolExecutor(2) as pool:
        waits = publish_in_background(consumer, pool, 2)
        wait_for_publishes(loop, 2)
        # When the connection goes before the broker confirmed either
        consumer._connection = None  # closed already: nothing to close
        consumer._close()
        # Then both runners learn it (their tokens come back unacked on the next connection)
        for wait in waits:
            with pytest.raises(pika.exceptions.StreamLostError):
                wait.result(1)


class Clock:
    """The runner module's `time` in the pause test: a clock that moves only when a turn takes
    time, so that the test does not depend on how fast the machine runs it (a real clock made the
    busy case fail once in CI: a loaded host took over COALESCE_S for a turn that takes none)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Turns:
    """pika's loop as the I/O thread's turn sees it: each turn takes `takes_s` on `clock`."""

    def __init__(self, clock: Clock, takes_s: float) -> None:
        self.clock = clock
        self.takes_s = takes_s
        self.limits: list[float] = []

    def process_data_events(self, time_limit: float) -> None:
        self.limits.append(time_limit)
        self.clock.now += self.takes_s


@pytest.mark.parametrize(
    ("active", "takes_s", "pauses"),
    [
        (5, 0.0, True),  # busy: several ticks under way, events coming in a stream
        (5, COALESCE_S * 0.9, True),  # busy, a turn just under the pause's length
        (1, 0.0, False),  # one task's chain: a pause would only delay it
        (5, COALESCE_S * 5, False),  # events sparse: the turn waited for them
    ],
)
def test_the_io_thread_pauses_between_turns_only_while_busy(monkeypatch, active, takes_s, pauses):
    # Given a Consumer with `active` ticks under way whose loop turns take `takes_s`
    consumer = Consumer("amqp://unused", names=Names())
    clock = Clock()
    monkeypatch.setattr("worker.scheduler.runner.time", clock)
    turns = Turns(clock, takes_s)
    consumer._connection = turns  # type: ignore[assignment]
    consumer._active = active
    # When the I/O thread takes a turn
    consumer._turn()
    # Then it served the connection (waiting up to IDLE_WAKE_S for something to come), and
    # paused before the next turn only when busy
    assert turns.limits == [IDLE_WAKE_S]
    assert clock.slept == ([COALESCE_S] if pauses else [])
