"""The concurrency semaphore against moto: limits, arrival order, races, reclaim, release."""

from __future__ import annotations

import threading

import boto3
import pytest

from adapters.slots import Slots, scope
from tests.lambdas.conftest import REGION, Atomic

S = scope("wf")
ARN = "arn:aws:lambda:eu-west-1:123456789012:function:wf:1/durable-execution/{}/x"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def slots(aws, clock) -> Slots:
    return Slots(aws.ddb, aws.coordination, clock=clock)


def alive(_: str) -> bool:
    return True


def acquire(slots: Slots, run: str, arrival: int, *, limit: int = 2, is_running=alive, lease=60):
    return slots.try_acquire(
        S,
        run,
        arn=ARN.format(run),
        arrival_ms=arrival,
        limit=limit,
        lease_s=lease,
        is_running=is_running,
    )


def queue(slots: Slots, *runs: str) -> None:
    for i, run in enumerate(runs):
        slots.enqueue(S, run, arn=ARN.format(run), arrival_ms=1000 + i)


def test_no_more_than_the_limit_hold_a_slot_and_the_rest_wait_queued(slots):
    queue(slots, "a", "b", "c")
    assert acquire(slots, "a", 1000)
    assert acquire(slots, "b", 1001)
    assert not acquire(slots, "c", 1002)
    assert sorted(slots.holders(S)[0]) == ["a", "b"]
    assert [w["run"] for w in slots.waiters(S)] == ["c"]


def test_a_later_arrival_does_not_overtake_an_earlier_one(slots):
    queue(slots, "a", "b", "c", "d")
    assert acquire(slots, "a", 1000, limit=1)
    # When a frees its slot, d and c poll before b: the slot is b's, the earliest waiter
    slots.release(S, "a")
    assert not acquire(slots, "d", 1003, limit=1)
    assert not acquire(slots, "c", 1002, limit=1)
    assert acquire(slots, "b", 1001, limit=1)


def test_acquire_and_release_are_idempotent(slots):
    queue(slots, "a")
    assert acquire(slots, "a", 1000)
    assert acquire(slots, "a", 1000)  # a retried poll
    assert slots.release(S, "a", arrival_ms=1000)
    assert not slots.release(S, "a", arrival_ms=1000)
    assert slots.holders(S)[0] == {}


def test_release_of_a_run_that_never_got_a_slot_leaves_the_queue(slots):
    queue(slots, "a", "b")
    assert acquire(slots, "a", 1000, limit=1)
    assert not slots.release(S, "b", arrival_ms=1001)
    assert slots.waiters(S) == []


def test_racing_runs_never_exceed_the_limit(aws, clock):
    # Given 12 runs queued for 3 slots, polling from 12 threads at once, each with its client
    limit, runs = 3, [f"r{i:02d}" for i in range(12)]
    queue(Slots(aws.ddb, aws.coordination, clock=clock), *runs)
    max_seen, lock, done = [0], threading.Lock(), []

    def worker(i: int, run: str) -> None:
        ddb = Atomic(boto3.client("dynamodb", region_name=REGION))
        mine = Slots(ddb, aws.coordination, clock=clock)
        while not acquire(mine, run, 1000 + i, limit=limit):
            pass
        with lock:
            holders = len(mine.holders(S)[0])
            max_seen[0] = max(max_seen[0], holders)
            done.append(run)
        mine.release(S, run, arrival_ms=1000 + i)

    threads = [threading.Thread(target=worker, args=(i, r)) for i, r in enumerate(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # Then every run got its slot, never more than 3 at once
    assert sorted(done) == runs
    assert max_seen[0] <= limit


def test_the_slot_of_a_killed_run_is_reclaimed(aws, clock):
    # Given a holder whose execution was stopped (it never released) and a run waiting
    slots = Slots(aws.ddb, aws.coordination, clock=clock, check_after_s=0)
    queue(slots, "killed", "next")
    assert acquire(slots, "killed", 1000, limit=1)
    assert not acquire(slots, "next", 1001, limit=1)
    # When Lambda says the holder's execution is no longer running
    gone = {ARN.format("killed")}
    # Then the waiter takes the slot and the killed run no longer holds it
    assert acquire(slots, "next", 1001, limit=1, is_running=lambda arn: arn not in gone)
    assert list(slots.holders(S)[0]) == ["next"]


def test_a_holder_past_its_lease_loses_its_slot(slots, clock):
    queue(slots, "old", "next")
    assert acquire(slots, "old", 1000, limit=1, lease=30)
    clock.now += 31
    assert acquire(slots, "next", 1001, limit=1)


def test_a_young_holder_is_not_asked_about(slots):
    # Checking costs a GetDurableExecution call: holders younger than a minute are kept
    queue(slots, "a", "b")
    assert acquire(slots, "a", 1000, limit=1)

    def never(arn: str) -> bool:
        raise AssertionError("asked")

    assert not acquire(slots, "b", 1001, limit=1, is_running=never)


def test_a_dead_waiter_ahead_does_not_block_the_queue(aws, clock):
    # Given a waiter that stopped polling long ago and whose execution is gone
    slots = Slots(aws.ddb, aws.coordination, clock=clock, stale_waiter_s=60)
    queue(slots, "dead", "live")
    clock.now += 61
    # Then the run behind it takes the free slot
    gone = {ARN.format("dead")}
    assert acquire(slots, "live", 1001, limit=1, is_running=lambda arn: arn not in gone)
    assert slots.waiters(S) == []


def test_a_waiter_whose_item_vanished_is_queued_again(slots):
    queue(slots, "a", "b")
    assert acquire(slots, "a", 1000, limit=1)
    slots.client.delete_item(
        TableName=slots.name, Key={"pk": {"S": S}, "sk": {"S": slots.waiters(S)[0]["sk"]}}
    )
    assert not acquire(slots, "b", 1001, limit=1)
    assert [w["run"] for w in slots.waiters(S)] == ["b"]
