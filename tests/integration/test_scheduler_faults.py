"""Issue 16's faults, each against several real scheduler processes on a real rabbitmq-server
sharing one tick ledger (moto's DynamoDB): a runner killed between its run and its next token, a
spare token outliving a runner change, a runner frozen past the heartbeat, and late tokens. Each
counts ticks run twice, overlapping runs and stale runs; all must be zero.

Periods, heartbeats and leases are short (200 ms, 1 s, 1 s) so the four take seconds. Two more:
spare tokens (old, current and next ticks) thrown at two schedulers sharing the ledger, and a
whole-broker restart with a run in flight under three processes."""

from __future__ import annotations

import itertools
import signal
import time

import boto3
import pika
import pytest

from sluice.scheduling.registry import PeriodicTask, Registry
from sluice.scheduling.schedule import Every
from tests.integration.fleet import Fleet, overlaps, stale, twice
from tests.integration.scheduling import Recorder
from worker.scheduler.ledger import TableLedger
from worker.scheduler.runner import Scheduler, Token

PERIOD = 0.2


FAST = {"SLUICE_SCHEDULER_LEASE_S": "1", "SLUICE_SCHEDULER_HEARTBEAT_S": "1"}


def fleet_of(rabbit, names, tmp_path, env: dict[str, str]):
    """Fleet(duration) on the test's broker and names, a task every PERIOD, with `env`."""

    def make(duration: float = 0.05) -> Fleet:
        return Fleet(
            rabbit.url, names.prefix, tmp_path / "runs.log",
            period=PERIOD, duration=duration, env=env,
        )  # fmt: skip

    return make


@pytest.fixture
def fleet(rabbit, names, ledger_env, tmp_path, tap):
    yield fleet_of(rabbit, names, tmp_path, {**ledger_env, **FAST})
    # Every tick's token went through the hatchery (tests/integration/test_scheduler_hold.py runs
    # these faults again with runners keeping their deliveries across ticks).
    assert not [e for e in tap.of("scheduled") if e.get("held")]


def report(runs, period: float = PERIOD) -> dict[str, object]:
    return {
        "runs": len(runs),
        "twice": twice(runs),
        "overlaps": overlaps(runs),
        "stale": [(r.key, round(r.lateness_s, 3)) for r in stale(runs, period)],
    }


def test_runners_killed_after_a_run_before_the_next_token_run_no_tick_twice(fleet):
    # Given scheduler processes that die (SIGKILL) right after their third run ends, before
    # they record the tick or publish the next token, lined up behind each other, and a fourth
    # that lives
    with fleet() as f:
        killers = [f.start(SCHED_KILL_AFTER_END="3")]
        f.wait_runs(1, 20)
        for _ in range(2):
            killers.append(f.start(SCHED_KILL_AFTER_END="3"))
            time.sleep(1.0)  # its consumer is registered: the next in line
        survivor = f.start()
        # When the first two have died (and maybe the third) and the survivor ran for a while
        f.wait(lambda: sum(p.poll() is not None for p in killers) >= 2, 30, "two deaths")
        f.wait_runs(8, 30, pid=survivor.pid)
    runs = f.runs()
    # Then no tick ran twice, no runs overlapped and none ran stale
    print(report(runs))
    assert report(runs) == {**report(runs), "twice": [], "overlaps": 0, "stale": []}
    assert sum(p.returncode == -signal.SIGKILL for p in killers) >= 2


def test_a_spare_token_runs_no_tick_twice_when_the_runner_changes(fleet, tap):
    # Given a leader (reconciler only) and two runner processes; the first beats the broker's
    # heartbeat every 10 s, so the broker keeps its token with it while it is paused below (at
    # 1 s, a leader slowed down past the heartbeat's timeout saw the broker hand the token to the
    # standby instead, and no spare was ever seeded)
    with fleet(duration=0.1) as f:
        f.start("leader")
        runner = f.start("runner", SLUICE_SCHEDULER_HEARTBEAT_S="10")
        f.wait_runs(3, 20, pid=runner.pid)
        standby = f.start("runner")
        time.sleep(1.0)  # the standby's consumer is registered
        # When the active runner pauses in the middle of a run (the leader seeds a spare token).
        # Mid-run it holds its token, delivered and unacknowledged, out of the broker's count.
        # Paused at a random moment, it failed twice in full runs under load ("no reseeded event
        # in 20 s", the leader logging nothing); our reading, not caught in the act: paused
        # between its next token's confirm and its ack, its one unacknowledged delivery keeps the
        # next token ready in the processor queue, the count sees a token, and no spare is due.
        f.wait(lambda: (r := f.running()) is not None and r.pid == runner.pid, 10, "a run")
        runner.send_signal(signal.SIGSTOP)
        # (the reconciler waits out the quiet window from the token's due time, then once more
        # with the queues empty: well under a second, but a loaded CI machine once took over 5 s)
        spare = round(tap.wait_for("reseeded", timeout=20)["due"] * 1000)
        time.sleep(0.5)
        runner.send_signal(signal.SIGCONT)
        # and is killed while it runs the spare's tick (the standby takes over, spare and all)
        f.wait(lambda: (r := f.running()) is not None and r.key >= spare, 5, "the spare's tick")
        runner.send_signal(signal.SIGKILL)
        runner.wait(5)
        f.wait_runs(10, 20, pid=standby.pid)
        runs = f.runs()
    # Then no tick ran twice, no runs overlapped and none ran stale
    print(report(runs))
    assert report(runs) == {**report(runs), "twice": [], "overlaps": 0, "stale": []}


def test_a_runner_frozen_past_the_heartbeat_is_fenced_and_does_not_stall_the_task(fleet, tap):
    # Given three scheduler processes; the task's run takes half its period
    with fleet(duration=0.1) as f:
        first = f.start()
        f.wait_runs(2, 20, pid=first.pid)
        f.start()
        f.start()
        time.sleep(1.0)
        # When the active runner is frozen in the middle of a run, for 6 s (6 heartbeats: the
        # broker drops it after about two, the others take over once its 1 s lease ends; 4 s
        # left too few runs after that on a loaded machine, 3 once in a full run at load 6)
        f.wait(lambda: (r := f.running()) is not None and r.pid == first.pid, 10, "a run")
        first.send_signal(signal.SIGSTOP)
        frozen_at = time.time()
        frozen = f.running()
        assert frozen is not None
        time.sleep(6.0)
        first.send_signal(signal.SIGCONT)
        woke_at = time.time()
        time.sleep(1.0)
        runs = f.runs()
    # Then another process ran the task while it was frozen (no 45 s stall)
    during = [r for r in runs if frozen_at < r.started < woke_at and r.pid != first.pid]
    assert len(during) >= 4, f"stalled: {len(during)} runs in 6 s"
    # and no tick ran twice, none stale, and no run overlapped another, except the remainder of
    # the frozen run itself (code already running cannot be stopped; its completion is fenced)
    fenced = {(frozen.key, frozen.pid)}
    assert twice(runs) == []
    assert stale(runs, PERIOD) == []
    assert overlaps(runs, exclude=fenced) == 0
    # and the woken runner recorded and published nothing for it: no success, no second token
    # (ticks after it run once each, one slot after the other), no run of its own
    assert not [e for e in tap.of("succeeded") if round(e["due"] * 1000) == frozen.key]
    assert not [r for r in runs if r.pid == first.pid and r.started > woke_at]
    after = sorted(r.key for r in runs if r.started > woke_at)
    assert len(after) >= 3
    # A slot between them may go unrun only as a reported `missed` tick (only the latest due tick
    # runs: a runner starting late on a loaded machine skips the one it is late for); a full CI
    # run once had such a gap, which the old check (every slot run) failed on. A slot neither run
    # nor reported would be a lost tick.
    step = round(PERIOD * 1000)
    reported = [
        (round(e["due"] * 1000) - e.get("missed", 1) * step, round(e["due"] * 1000))
        for e in tap.of("missed")
    ]
    gaps = [s for a, b in itertools.pairwise(after[1:]) for s in range(a + step, b, step)]
    assert [s for s in gaps if not any(lo <= s <= hi for lo, hi in reported)] == [], (
        after,
        reported,
    )


def test_tokens_late_after_an_outage_run_only_the_latest_due_tick(fleet):
    # Given three scheduler processes running the task
    with fleet() as f:
        procs = [f.start()]
        f.wait_runs(2, 20)
        procs += [f.start(), f.start()]
        time.sleep(1.0)
        # When all of them stop for 2 s (a stopped VM, a partition) and come back
        for proc in procs:
            proc.send_signal(signal.SIGSTOP)
        time.sleep(2.0)
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
        woke_at = time.time()
        f.wait(lambda: len([r for r in f.runs() if r.started > woke_at]) >= 5, 20, "5 runs")
        runs = f.runs()
    # Then the first run after the outage was the latest due tick, not the token's own old one
    print(report(runs))
    assert report(runs) == {**report(runs), "twice": [], "overlaps": 0, "stale": []}


def test_spare_tokens_never_run_a_tick_twice(rabbit, names, ledger_env, tap):
    # Given two schedulers sharing the tick ledger, running one task every 200 ms
    ddb = boto3.client(
        "dynamodb",
        region_name=ledger_env["AWS_REGION"],
        endpoint_url=ledger_env["AWS_ENDPOINT_URL"],
    )
    ledger = TableLedger(ddb, ledger_env["SLUICE_COORDINATION_TABLE"], names.prefix)
    rec = Recorder(duration_s=0.05)
    registry = Registry([PeriodicTask("spares", Every(PERIOD), action=rec)])
    with (
        Scheduler(registry, rabbit.url, names=names, ledger=ledger, lease_s=1),
        Scheduler(registry, rabbit.url, names=names, ledger=ledger, lease_s=1),
    ):
        rec.wait_for(3, timeout=15)
        # When 30 spare tokens arrive over 3 s: for the tick due now, the one before, an old one
        # and the next one, straight into the processor queue
        conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
        ch = conn.channel()
        for i in range(30):
            now = Every(PERIOD).last_at_or_before(time.time())
            due = now + PERIOD * (0, -1, -20, 1)[i % 4]
            ch.basic_publish(names.processor_exchange, "spares", Token("spares", due).encode())
            time.sleep(0.1)
        conn.close()
        time.sleep(1.0)
        runs = rec.completed()
    # Then no tick ran twice, runs never overlapped, and none ran a stale tick
    dues = [r.due for r in runs]
    assert len(dues) == len(set(dues)), "a tick ran twice"
    assert all(a.ended is not None and a.ended <= b.started for a, b in itertools.pairwise(runs))
    assert all(r.started - r.due < PERIOD + 0.1 for r in runs)
    assert len(tap.of("duplicate", "spares")) >= 20  # the spares were dropped, not run


@pytest.mark.slow
def test_a_broker_restart_with_a_run_in_flight_runs_no_tick_twice(rabbit, fleet):
    # Given three scheduler processes; the task's run takes half its period
    with fleet(duration=0.1) as f:
        f.start()
        f.wait_runs(2, 20)
        f.start()
        f.start()
        time.sleep(1.0)
        # When the broker restarts (the whole node, with its data) while a run is in flight
        f.wait(lambda: f.running() is not None, 10, "a run")
        rabbit.restart()
        up_at = time.time()
        # and the task has run for a while after
        f.wait(lambda: len([r for r in f.runs() if r.started > up_at]) >= 8, 30, "8 runs")
        runs = f.runs()
    # Then no tick ran twice, no runs overlapped and none ran stale
    print(report(runs))
    assert report(runs) == {**report(runs), "twice": [], "overlaps": 0, "stale": []}
