"""The broker scheduler against a real rabbitmq-server: precision, drift, overlap, failures."""

from __future__ import annotations

import itertools
import logging
import signal
import threading
import time

import pika
import pytest

from devtools.rabbitmq import RabbitNode
from sluice.errors import BusinessError, TransientError
from sluice.scheduling.names import Names
from sluice.scheduling.registry import PeriodicTask, Registry, Tick, Token
from sluice.scheduling.schedule import Every
from tests.integration.fleet import Fleet, twice
from tests.integration.scheduling import Recorder, grid_steps, lateness_ms
from worker.scheduler.ledger import MemoryLedger
from worker.scheduler.runner import Scheduler


def scheduler(rabbit: RabbitNode, names: Names, *tasks: PeriodicTask) -> Scheduler:
    return Scheduler(Registry(tasks), rabbit.url, names=names)


def queue_depth(rabbit: RabbitNode, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def waiting_tokens(rabbit: RabbitNode, names: Names, task: str) -> list[Token]:
    """The task's tokens in its hatchery and processor queues, read and given back (a token
    between the two, being dead-lettered, is read once it has arrived)."""
    deadline = time.monotonic() + 5
    while True:
        conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
        try:
            channel = conn.channel()
            tokens = []
            while (got := channel.basic_get(names.hatchery(task), auto_ack=False))[0] is not None:
                tokens.append(Token.decode(got[2]))
            # (a queue with a single active consumer refuses basic.get: consumed for a moment)
            channel.basic_consume(
                names.processor(task),
                lambda _ch, _m, _p, body, found=tokens: found.append(Token.decode(body)),
            )
            conn.process_data_events(time_limit=0.3)
        finally:
            conn.close()  # unacknowledged: every one goes back
        if tokens or time.monotonic() > deadline:
            return tokens
        time.sleep(0.05)


def assert_on_grid(runs, period: float) -> None:
    """Consecutive runs are whole periods apart; a slot is skipped only when a stall of the
    machine made its run start after the next slot (rare, and reported as missed)."""
    steps = grid_steps(runs, period)
    assert min(steps) >= 1
    assert steps.count(1) >= 0.9 * len(steps), steps


def assert_once_each(runs) -> None:
    dues = [r.due for r in runs]
    assert len(dues) == len(set(dues)), "a tick ran twice"


@pytest.mark.slow
def test_ticks_at_100ms_arrive_with_bounded_lateness(rabbit, names, record_property):
    # Given a task due every 100 ms that does nothing
    rec = Recorder()
    with scheduler(rabbit, names, PeriodicTask("precise", Every(0.1), action=rec)):
        # When it runs for at least 200 ticks
        runs = rec.wait_for(205, timeout=40)[:205]
    # Then every tick ran once, on consecutive grid slots, and lateness is small
    stats = lateness_ms(runs[5:])  # the first ticks include connection warm-up
    record_property("lateness", stats)
    print(f"\nscheduler lateness at 100 ms over {stats['n']} ticks: {stats}")
    assert_once_each(runs)
    assert_on_grid(runs, 0.1)
    assert stats["p50_ms"] < 30
    assert stats["p99_ms"] < 200


@pytest.mark.slow
def test_a_task_taking_60_percent_of_its_period_does_not_drift(rabbit, names):
    # Given a task due every 100 ms that works for 60 ms
    rec = Recorder(duration_s=0.06)
    with scheduler(rabbit, names, PeriodicTask("sixty", Every(0.1), action=rec)):
        # When it runs 60 cycles
        runs = rec.wait_for(60, timeout=30)[:60]
    # Then no tick is skipped and the 60th starts as close to its slot as the first ones did:
    # the next cycle counts from the grid, not from the end of the previous run
    assert_on_grid(runs, 0.1)
    # (a cycle counted from the end of the run would be 60 ms later each time: 3.6 s by now)
    first = lateness_ms(runs[5:15])["p50_ms"]
    last = lateness_ms(runs[-10:])["p50_ms"]
    assert last - first < 30


def test_a_task_taking_150_percent_of_its_period_never_overlaps(rabbit, names, tap):
    # Given a task due every 100 ms that works for 150 ms
    rec = Recorder(duration_s=0.15)
    with scheduler(rabbit, names, PeriodicTask("slow", Every(0.1), action=rec)):
        # When it runs 15 times
        runs = rec.wait_for(15, timeout=20)[:15]
    # Then each run starts after the previous one ended
    for before, after in itertools.pairwise(runs):
        assert before.ended is not None
        assert after.started >= before.ended
    # and stays on the grid: runs go to whole slots, the overrun ones are reported missed
    assert_once_each(runs)
    assert all(step >= 1 for step in grid_steps(runs, 0.1))
    assert any(e["missed"] >= 1 for e in tap.of("scheduled", "slow"))


def test_lifecycle_events_follow_each_tick(rabbit, names, tap):
    # Given a task due every 100 ms
    rec = Recorder()
    with scheduler(rabbit, names, PeriodicTask("told", Every(0.1), action=rec)):
        rec.wait_for(3, timeout=10)
        time.sleep(0.05)
    # Then its ticks were announced as scheduled, started and succeeded on the control exchange
    due = rec.completed()[1].due
    kinds = [e["event"] for e in tap.events if e["task"] == "told" and e.get("due") == due]
    assert kinds[:3] == ["scheduled", "started", "succeeded"]


def test_a_stop_mid_run_lets_the_run_finish_and_hands_its_token_on(rabbit, names, tap):
    # Given a task due every 0.5 s whose run takes 0.4 s
    rec = Recorder(duration_s=0.4)
    sched = scheduler(rabbit, names, PeriodicTask("stopped", Every(0.5), action=rec)).start()
    try:
        # When the process is stopped while a run is under way
        rec.wait_for(1, timeout=10)
        deadline = time.monotonic() + 10
        while not (rec.runs and rec.runs[-1].ended is None):
            assert time.monotonic() < deadline, "no run under way"
            time.sleep(0.005)
        under_way = rec.runs[-1]
    finally:
        sched.stop()
    # Then the run finished and its outcome went out before the connection closed
    assert under_way.ended is not None
    deadline = time.monotonic() + 5
    while not [e for e in tap.of("succeeded", "stopped") if e["due"] == under_way.due]:
        assert time.monotonic() < deadline, "the stopped run's outcome never went out"
        time.sleep(0.01)
    # and its token went on to the next tick (the next process runs that one, not this one
    # again): one token, in the hatchery or, once that tick fell due, in the processor queue (a
    # CI run checked after the next tick, 0.1 s after the run's end, had fallen due)
    assert [token.due for token in waiting_tokens(rabbit, names, "stopped")] == pytest.approx(
        [under_way.due + 0.5]
    )


class StallingLedger(MemoryLedger):
    """An in-memory ledger whose first claim, once written, takes until `release` to answer
    (a slow coordination table, a process starved of CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled, self.release = threading.Event(), threading.Event()

    def claim(self, task: str, tick: int, now_ms: int, lease_ms: int, holder: str):
        claimed = super().claim(task, tick, now_ms, lease_ms, holder)
        if not self.stalled.is_set():
            self.stalled.set()
            self.release.wait(30)
        return claimed


def test_a_tick_claimed_when_a_stop_outlasts_its_grace_is_released_and_runs_on_the_next_process(
    rabbit, names, caplog
):
    # Given a task due every 5 s and a ledger whose first claim answers only after the stop
    rec, ledger = Recorder(), StallingLedger()
    task = PeriodicTask("caught", Every(5), action=rec)
    sched = Scheduler(Registry([task]), rabbit.url, names=names, ledger=ledger).start()
    assert ledger.stalled.wait(15), "no tick was claimed"
    due_ms = ledger.read("caught").tick
    # When the process stops while that tick's handler is still inside its claim, past the
    # stop's grace (its pools are shut when the claim answers)
    sched.stop()
    ledger.release.set()
    deadline = time.monotonic() + 5
    while ledger.read("caught").state == "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    # Then the tick is released in the ledger, not left to its lease, and nothing is logged as
    # an error (the process was only stopping)
    assert ledger.read("caught").state == "retry"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    # and the next process, given the token back, runs that very tick (it was never started)
    with Scheduler(Registry([task]), rabbit.url, names=names, ledger=ledger):
        runs = rec.wait_for(1, timeout=10)
    assert round(runs[0].due * 1000) == due_ms
    assert len(rec.runs) == 1


def test_a_business_error_is_recorded_and_the_schedule_continues(rabbit, names, tap):
    # Given a task whose every run fails with a business error
    def refuse(tick: Tick) -> None:
        raise BusinessError("bad input")

    rec = Recorder(fail=refuse)
    with scheduler(rabbit, names, PeriodicTask("refuses", Every(0.1), action=rec)):
        # When it runs for a few periods
        tap.wait_for("failed", "refuses", timeout=10)
        time.sleep(0.5)
        runs = list(rec.runs)
    # Then each tick ran once (no retry) and the failure is on the control exchange
    assert_once_each(runs)
    assert len(runs) >= 4
    failed = tap.of("failed", "refuses")
    assert failed and all(e["error_class"] == "business" for e in failed)


def test_a_poison_task_is_dead_lettered_after_its_limit_while_others_keep_time(rabbit, names, tap):
    # Given a task failing transiently on every attempt, next to a healthy one
    def flaky(tick: Tick) -> None:
        raise TransientError("upstream 503")

    poison = Recorder(fail=flaky)
    steady = Recorder()
    with scheduler(
        rabbit,
        names,
        PeriodicTask("poison", Every(0.2), action=poison, max_attempts=3),
        PeriodicTask("steady", Every(0.1), action=steady),
    ):
        # When both run for a while
        tap.wait_for("dead_lettered", "poison", timeout=10)
        steady.wait_for(20, timeout=10)
        time.sleep(0.5)
    # Then each poison tick was attempted exactly 3 times, then dead-lettered and counted
    dead = tap.of("dead_lettered", "poison")
    assert dead and all(e["attempts"] == 3 for e in dead)
    attempts = [r.due for r in poison.runs]
    assert all(attempts.count(d) <= 3 for d in set(attempts))
    assert queue_depth(rabbit, names.dead_queue) == len(dead)
    # and the poison task's schedule went on (a later tick was tried too)
    assert len({e["due"] for e in dead}) >= 2
    # and the healthy task kept its schedule
    runs = steady.completed()
    assert_on_grid(runs, 0.1)
    assert lateness_ms(runs[2:])["p50_ms"] < 30


def test_a_purged_hatchery_is_reseeded_within_one_period_without_a_second_token(rabbit, names, tap):
    # Given a task due every 500 ms whose token is waiting in its hatchery queue
    period = 0.5
    rec = Recorder()
    with scheduler(rabbit, names, PeriodicTask("lost", Every(period), action=rec)):
        rec.wait_for(2, timeout=15)
        tap.wait_for("scheduled", "lost")
        time.sleep(0.05)
        assert queue_depth(rabbit, names.hatchery("lost")) == 1
        # When the hatchery is purged (the token is lost)
        conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
        purged_at = time.time()
        conn.channel().queue_purge(names.hatchery("lost"))
        conn.close()
        # Then a new token is seeded within one period
        reseeded = tap.wait_for("reseeded", "lost", timeout=period * 2)
        assert reseeded["at"] - purged_at < period
        before = len(rec.completed())
        rec.wait_for(before + 6, timeout=10)
    # and afterwards there is exactly one token: every tick runs once, slots consecutive
    runs = [r for r in rec.completed() if r.due > reseeded["at"]]
    assert_once_each(rec.completed())
    assert_on_grid(runs, period)
    assert len([e for e in tap.of("reseeded", "lost") if e["at"] > purged_at]) == 1
    assert not tap.of("duplicate", "lost")


@pytest.mark.slow
def test_the_schedule_survives_a_broker_restart_mid_run(rabbit, names, tap):
    # Given a task due every 200 ms that has run a few times
    period = 0.2
    rec = Recorder(duration_s=0.02)
    with scheduler(rabbit, names, PeriodicTask("restart", Every(period), action=rec)):
        rec.wait_for(5, timeout=15)
        # and is in the middle of a run that takes 3 s
        rec.duration_s = 3.0
        before = len(rec.runs)
        deadline = time.monotonic() + 10
        while len(rec.runs) == before and time.monotonic() < deadline:
            time.sleep(0.005)
        interrupted = rec.runs[-1].due
        rec.duration_s = 0.02
        # When the broker restarts (the whole node, with its data) during that run
        rabbit.restart()
        up_at = time.time()
        count = len(rec.completed())
        # Then ticks resume soon after the broker is back
        runs = rec.wait_for(count + 10, timeout=30)
    resumed = min(r.started for r in runs if r.started > up_at)
    # one reconnect backoff step (1 s at most), the new connection's handshake, declarations and
    # consume (0.5 s allowed: they took 8 ms over the bound once on a loaded machine), the next slot
    assert resumed - up_at < 1.0 + 0.5 + period
    # and the interrupted tick ran once (its token came back; the runner did not start it again)
    assert [r.due for r in rec.runs].count(interrupted) == 1
    # and no tick ran twice, and after recovery there is one token (consecutive slots)
    assert_once_each(runs)
    after = [r for r in runs if r.started >= resumed][1:]
    assert len(after) >= 8
    assert set(grid_steps(after, period)) == {1}


@pytest.mark.slow
def test_a_consumer_killed_mid_task_resumes_without_running_a_tick_twice(
    rabbit, names, tmp_path, ledger_env
):
    # Given a scheduler process running a task (500 ms period, 300 ms runs), its ticks claimed
    # in the tick ledger with a 1 s lease
    env = {**ledger_env, "SLUICE_SCHEDULER_LEASE_S": "1"}
    with Fleet(rabbit.url, names.prefix, tmp_path / "runs.log", env=env, period=0.5, duration=0.3) as fleet:  # fmt: skip
        # When it is killed with SIGKILL in the middle of its third run (it kills itself there:
        # a kill sent from here could land after the run ended on a loaded machine)
        first = fleet.start(SCHED_KILL_IN_RUN="3")
        assert first.wait(20) == -signal.SIGKILL
        killed_at = time.time()
        (killed,) = [r for r in fleet.runs() if r.pid == first.pid and r.ended is None]
        # and a new scheduler process starts
        second = fleet.start()
        fleet.wait_runs(4, 20, pid=second.pid)
    runs = fleet.runs()
    # Then no tick started twice: the interrupted tick was claimed, so the new process does not
    # start it again (it is abandoned: at most once per tick) and takes over the next one
    assert twice(runs) == []
    assert killed.key not in [r.key for r in runs if r.ended]
    # and the new process took over within a period of its start-up
    taken_over = [r for r in runs if r.pid == second.pid]
    assert taken_over and taken_over[0].started - killed_at < 5.0
    # and every run stayed on the 500 ms grid (slots that passed while no process ran are
    # skipped, never run late in a burst)
    dues = sorted({r.key for r in runs if r.ended})
    assert all((b - a) % 500 == 0 and b > a for a, b in itertools.pairwise(dues))
    # and once the new process runs, one token drives it: consecutive slots
    keys = sorted(r.key for r in taken_over if r.ended)
    assert all(b - a == 500 for a, b in itertools.pairwise(keys[1:])), (keys, runs)


def test_a_tick_later_than_its_lateness_bound_is_skipped_and_counted_missed(rabbit, names, tap):
    # Given a task due every second that may start at most 100 ms late, whose first run takes
    # 1.3 s (so the next tick is already 300 ms late when the run ends)
    rec = Recorder()
    rec.fail = lambda tick: time.sleep(1.3) if not rec.completed() else None
    task = PeriodicTask("bounded", Every(1.0), action=rec, max_lateness_s=0.1)
    with scheduler(rabbit, names, task):
        runs = rec.wait_for(2, timeout=15)
    # Then the late tick did not run: the second run is the tick after it, on time
    first, second = runs[0], runs[1]
    assert round(second.due - first.due) == 2
    assert second.started - second.due < 0.1
    (missed,) = [e for e in tap.of("missed", "bounded") if e["due"] == first.due + 1]
    assert missed["lateness_s"] > 0.1
