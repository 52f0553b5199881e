"""The Consumer's bookkeeping of publisher confirms and of its connection's epoch, without a
broker: pika's own frame classes stand in for what RabbitMQ sends (confirm.select numbers a
channel's publishes from 1; Basic.Ack/Nack carry that number, `multiple` covering every earlier
one; a mandatory message that cannot be routed comes back as Basic.Return before its Ack)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pika
import pika.exceptions
import pytest
from pika import spec

from sluice.scheduling.names import Names
from sluice.scheduling.registry import PeriodicTask, Token
from sluice.scheduling.schedule import Every
from worker.scheduler.connection import IDLE_WAKE_S
from worker.scheduler.runner import (
    COALESCE_S,
    CYCLE_LEAD_S,
    REQUEUE_S,
    Consumer,
    TaskRunner,
)

CONTROL = Names().control_exchange


class Loop:
    """The connection, as far as the Consumer's requests go: callbacks run when `run` is called
    (the I/O thread's turn), publishes recorded with their properties."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []
        self.published: list[tuple[str, str, Any]] = []
        self.bodies: list[bytes] = []
        self.acked: list[int] = []
        self.nacked: list[tuple[int, bool]] = []
        self.later: list[tuple[float, Any]] = []

    def add_callback_threadsafe(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def run(self) -> None:
        while self.callbacks:
            self.callbacks.pop(0)()

    def basic_publish(self, exchange: str, key: str, body: bytes, props: Any, **_: Any) -> None:
        self.published.append((exchange, key, props))
        self.bodies.append(body)

    def basic_ack(self, tag: int) -> None:
        self.acked.append(tag)

    def basic_nack(self, tag: int, requeue: bool) -> None:
        self.nacked.append((tag, requeue))

    def call_later(self, delay: float, callback: Any) -> None:
        self.later.append((delay, callback))


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
    """Runner i publishes with routing key `t<i>` (the loop's order numbers them) and waits for
    its confirm."""

    def publish(i: int) -> None:
        consumer.send(1, "x", f"t{i}", b"{}", pika.BasicProperties()).result(5)

    return [pool.submit(publish, i) for i in range(n)]


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
        consumer.send(1, "x", "t", b"{}", pika.BasicProperties()).result(1)
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


def test_an_ack_waits_for_its_sends_confirms_without_holding_its_handler(wired):
    consumer, loop = wired
    # Given a runner's next token sent and not yet confirmed
    sent = consumer.send(1, "x", "t", b"{}", pika.BasicProperties())
    loop.run()
    # When it asks for its delivery's ack after that send
    consumer.ack(1, 7, [sent], "t")
    loop.run()
    # Then the call returned, nothing is acked yet, and the delivery still counts as under way
    assert loop.acked == [] and consumer._active == 1
    # and once the broker confirms the token, the delivery is acked
    consumer._on_confirm(confirm(spec.Basic.Ack(delivery_tag=1, multiple=False)))
    loop.run()
    assert loop.acked == [7] and consumer._active == 0


@pytest.mark.parametrize("refusal", ["nack", "return", "lost"])
def test_an_ack_whose_send_is_refused_gives_the_delivery_back_later(wired, refusal):
    consumer, loop = wired
    # Given a delivery whose next token and dead-lettered tick were both sent
    token = consumer.send(1, "x", "t", b"{}", pika.BasicProperties())
    dead = consumer.send(1, "dead", "t", b"{}", pika.BasicProperties())
    loop.run()
    consumer.ack(1, 7, [token, dead], "t")
    # When the broker confirms the dead-lettered tick but refuses the token
    consumer._on_confirm(confirm(spec.Basic.Ack(delivery_tag=2, multiple=False)))
    if refusal == "nack":
        consumer._on_confirm(confirm(spec.Basic.Nack(delivery_tag=1, multiple=False)))
    elif refusal == "return":
        consumer._on_return(None, None, loop.published[0][2], b"{}")
    else:
        consumer._connection = None  # closed already: nothing to close
        consumer._close()
    loop.run()
    # Then the delivery is never acked and no longer counts as under way
    assert loop.acked == [] and consumer._active == 0
    if refusal == "lost":
        # its connection is gone: the token comes back with the next one, nothing to ask
        assert loop.later == []
        return
    # and it goes back to its queue REQUEUE_S later (redelivered at once, it would spin)
    [(delay, requeue)] = loop.later
    assert delay == REQUEUE_S
    requeue()
    assert loop.nacked == [(7, True)]


def test_a_runner_is_done_with_a_tick_before_its_next_token_is_confirmed(wired):
    consumer, loop = wired
    # Given a task's runner on the Consumer (a tick's action records it ran)
    ran: list[float] = []
    task = PeriodicTask("t", Every(60.0), action=lambda tick: ran.append(tick.due))
    runner = TaskRunner(task, "amqp://unused", names=Names())
    runner.link = consumer
    due = task.schedule.last_at_or_before(time.time())
    method = SimpleNamespace(delivery_tag=7)
    # When its handler takes the tick's token and the broker has confirmed nothing yet
    with ThreadPoolExecutor(1) as handler:
        handled = handler.submit(
            runner.deliver, 1, method, SimpleNamespace(headers=None), Token("t", due).encode()
        )
        for _ in range(200):
            loop.run()
            if handled.done():
                break
            time.sleep(0.01)
        # Then the handler is free once the tick ran and the next token is sent, unacked
        assert handled.done(), "the handler still waits for the broker"
        handled.result()
    loop.run()
    assert ran == [due]
    tokens = [(key, props) for exchange, key, props in loop.published if exchange != CONTROL]
    assert [key for key, _ in tokens] == ["t"] and loop.acked == []
    # and the old token is acked when the new one is confirmed
    seq = int(tokens[0][1].message_id)
    consumer._on_confirm(confirm(spec.Basic.Ack(delivery_tag=seq, multiple=False)))
    loop.run()
    assert loop.acked == [7]


# --- a runner that keeps its delivery across ticks (TaskRunner.hold_s) ----------------------------

PERIOD = 0.2


class Kept:
    """A runner of a 200 ms task with a hold, wired to the Consumer: what it sent, when it ran."""

    def __init__(self, consumer: Consumer, loop: Loop, hold_s: float = 30.0) -> None:
        self.consumer, self.loop = consumer, loop
        self.ran: list[tuple[float, float]] = []  # (due, started)
        self.task = PeriodicTask(
            "t", Every(PERIOD), action=lambda tick: self.ran.append((tick.due, time.time()))
        )
        self.runner = TaskRunner(self.task, "amqp://unused", names=Names(), hold_s=hold_s)
        self.runner.link = consumer

    def deliver(self, token: Token, *, redelivered: bool = False, tag: int = 7) -> Any:
        method = SimpleNamespace(delivery_tag=tag, redelivered=redelivered)
        self.consumer._dispatch(
            self.runner, 1, method, SimpleNamespace(headers=None), token.encode()
        )
        self.settle()
        return method

    def settle(self) -> None:
        """Until the Consumer's handlers are idle, serving the loop meanwhile."""
        for _ in range(300):
            self.loop.run()
            time.sleep(0.005)
            idle = self.consumer.handlers._work_queue.empty() and not self.runner._serial.locked()
            if idle and not self.loop.callbacks:
                return
        raise AssertionError("the handler did not finish")

    def tokens(self) -> list[tuple[Token, Any]]:
        return [
            (Token.decode(body), props)
            for (exchange, _, props), body in zip(
                self.loop.published, self.loop.bodies, strict=True
            )
            if exchange != CONTROL
        ]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [
            json.loads(body)
            for (exchange, key, _), body in zip(self.loop.published, self.loop.bodies, strict=True)
            if exchange == CONTROL and key == f"t.{name}"
        ]

    def fire(self) -> None:
        """The connection's timer, at its time (pika's call_later)."""
        delay, fire = self.loop.later.pop(0)
        time.sleep(delay)
        fire()
        self.settle()


def test_a_kept_delivery_runs_the_next_ticks_on_time_with_no_token_sent_or_acked(wired):
    consumer, loop = wired
    k = Kept(consumer, loop)
    due = k.task.schedule.first_after(time.time())
    time.sleep(max(due - time.time(), 0))
    # Given a runner with a 30 s hold takes its task's token as it falls due
    k.deliver(Token("t", due))
    # When the next ticks fall due
    for _ in range(3):
        assert len(loop.later) == 1, loop.later
        k.fire()
    # Then each ran at its time, from the one delivery, neither acked nor replaced by a token
    assert [d for d, _ in k.ran] == pytest.approx([due + i * PERIOD for i in range(4)])
    assert all(0 <= started - d < PERIOD / 2 for d, started in k.ran[1:]), k.ran
    assert (k.tokens(), loop.acked) == ([], [])
    # and each announced its next tick as kept (what the reconciler reads)
    assert [e["due"] for e in k.events("scheduled")] == pytest.approx(
        [due + i * PERIOD for i in range(1, 5)]
    )
    assert all(e["held"] for e in k.events("scheduled"))


@pytest.mark.parametrize("why", ["redelivered", "hold over"])
def test_a_delivery_not_kept_sends_its_next_token_ahead_and_is_acked_once_confirmed(wired, why):
    consumer, loop = wired
    # Given a runner whose delivery is a redelivery (its count starts again through the
    # hatchery), or whose hold ends before the next tick
    k = Kept(consumer, loop, hold_s=30.0 if why == "redelivered" else 0.001)
    due = k.task.schedule.last_at_or_before(time.time())
    # When it has run the tick
    k.deliver(Token("t", due), redelivered=why == "redelivered")
    # Then the next tick's token went to the hatchery, to land ahead of its tick by up to
    # CYCLE_LEAD_S (half the wait here), and nothing waits on a timer
    ((token, props),) = k.tokens()
    assert token.due == pytest.approx(due + PERIOD) and loop.later == []
    wait_ms = (token.due - k.ran[0][1]) * 1000
    assert wait_ms - min(CYCLE_LEAD_S * 1000, wait_ms / 2) - 20 <= int(props.expiration)
    assert int(props.expiration) <= wait_ms / 2 + 1
    # and the delivery is acked once that token is confirmed
    assert loop.acked == []
    consumer._on_confirm(confirm(spec.Basic.Ack(delivery_tag=1, multiple=False)))
    loop.run()
    assert loop.acked == [7]
    assert not k.events("scheduled")[0].get("held")


def test_a_token_that_lands_ahead_of_its_tick_is_kept_until_then(wired):
    consumer, loop = wired
    k = Kept(consumer, loop)
    # Given a token for a tick 0.2-0.4 s away (sent ahead through the hatchery)
    due = k.task.schedule.first_after(time.time() + PERIOD)
    # When it is delivered
    k.deliver(Token("t", due))
    # Then nothing runs before its tick: it is kept, and runs when the tick falls due
    assert k.ran == [] and loop.acked == []
    assert [e["held"] for e in k.events("scheduled")] == [True]
    k.fire()
    assert [d for d, _ in k.ran] == [due]
    assert 0 <= k.ran[0][1] - due < PERIOD / 2


def test_a_graceful_stop_hands_a_kept_delivery_back_as_the_next_ticks_token(wired):
    consumer, loop = wired
    k = Kept(consumer, loop)
    due = k.task.schedule.last_at_or_before(time.time())
    k.deliver(Token("t", due))
    assert len(loop.later) == 1
    # When the process stops while the runner keeps its delivery for the next tick
    k.runner.release()
    loop.run()
    # Then the next tick's token goes to the hatchery, the delivery is acked once it is confirmed
    ((token, _),) = k.tokens()
    assert token.due == pytest.approx(due + PERIOD)
    consumer._on_confirm(confirm(spec.Basic.Ack(delivery_tag=1, multiple=False)))
    loop.run()
    assert loop.acked == [7]
    # and the timer that fires afterwards runs nothing
    consumer.stopping.set()
    k.fire()
    assert [d for d, _ in k.ran] == [due]


def test_a_token_older_than_the_last_claimed_tick_reports_only_the_ticks_missed_since(wired):
    consumer, loop = wired
    k = Kept(consumer, loop)
    # Given the ledger's last claim is a tick whose ms, read back as seconds, fall just short of
    # the tick (one in five at 200 ms), finished, and three ticks have fallen due since
    now = time.time()
    last = next(
        t
        for t in (k.task.schedule.last_at_or_before(now - i * PERIOD) for i in range(3, 50))
        if round(k.task.schedule.first_after(round(t * 1000) / 1000) * 1000) <= round(t * 1000)
    )
    ledger = k.runner.ledger
    claimed = ledger.claim("t", round(last * 1000), round(last * 1000), 1000, "before")
    assert claimed is not None
    ledger.finish("t", claimed.fence, "done")
    # When a token for a tick long before it arrives (a kept delivery given back, a spare)
    k.deliver(Token("t", last - 20 * PERIOD), redelivered=True)
    # Then the tick run is the latest due, and only the ticks between the claim and it are missed
    (due, _), *_ = k.ran
    (event,) = k.events("missed")
    assert event["missed"] == round((due - last) / PERIOD) - 1


def test_a_kept_tick_that_fell_due_while_the_process_stopped_is_handed_on_not_skipped(wired):
    consumer, loop = wired
    k = Kept(consumer, loop)
    due = k.task.schedule.last_at_or_before(time.time())
    k.deliver(Token("t", due))
    # When the stop reaches the runner only after the kept tick fell due (its timer ran nothing:
    # the process was stopping; the I/O thread notices a stop within a second)
    consumer.stopping.set()
    time.sleep(max(due + PERIOD - time.time(), 0) + 0.05)
    k.runner.release()
    loop.run()
    # Then the token handed on is for that tick, due at once: the next runner runs it or
    # reports it missed, where the tick after it would have lost it without a word
    ((token, props),) = k.tokens()
    assert token.due == pytest.approx(due + PERIOD)
    assert props.expiration in (None, "0")  # due now: straight to the processor queue
