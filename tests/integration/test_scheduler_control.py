"""Tasks changed at run time and routed to their consumer group, against two (or more) real
scheduler processes (tests/integration/sched_proc.py) on the real rabbitmq-server, sharing the
coordination table (moto's server): the overrides and the tick ledger.

Changes go through `sluice schedules …` (the CLI) or its Python API; every process applies them,
through a scheduler restart and a broker restart, and no tick runs twice."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator

import boto3
import pytest
from click.testing import CliRunner

import sluice_cli
from devtools.local.resources import ENV, REGION
from sluice import catalog, naming
from sluice.scheduling.overrides import OverrideStore
from sluice_cli.schedule_control import ScheduleControl
from tests.integration.fleet import Fleet, Run, listeners, twice
from tests.integration.sched_proc import declared
from tests.integration.scheduling import ControlTap

FAST = {"SLUICE_SCHEDULER_LEASE_S": "1", "SLUICE_SCHEDULER_HEARTBEAT_S": "1"}
# How long after a change returns a process may still act on the old state: the prompt's way
# through the broker and one read of the table.
APPLY_S = 0.15


def skipped(runs: list[Run], period: float) -> int:
    """Grid ticks between consecutive runs that did not run (each step must be whole periods)."""
    steps = [(b.key - a.key) / (period * 1000) for a, b in itertools.pairwise(runs)]
    assert all(s >= 1 and abs(s - round(s)) < 1e-6 for s in steps), steps
    return sum(round(s) - 1 for s in steps)


def reported_missed(tap: ControlTap, since: float, until_due: float) -> int:
    """Ticks the runners reported missed (a later tick was due when the token came)."""
    return sum(
        int(e.get("missed", 1))
        for e in tap.of("missed", "light")
        if e["at"] > since and e["due"] <= until_due
    )


@pytest.fixture
def procs(rabbit, names, ledger_env, tmp_path) -> Iterator[Fleet]:
    with Fleet(rabbit.url, names.prefix, tmp_path / "runs.log", env={**ledger_env, **FAST}) as f:
        yield f


@pytest.fixture
def control(rabbit, names, ledger_env) -> ScheduleControl:
    """The Python API on the processes' table and broker (their declared tasks: `light`)."""
    ddb = boto3.client("dynamodb", region_name=REGION, endpoint_url=ledger_env["AWS_ENDPOINT_URL"])
    store = OverrideStore(ddb, naming.coordination_table(ENV), names.prefix)
    return ScheduleControl(declared([f"light:{PERIOD}:scheduler"]), store, rabbit.url, names)


@pytest.fixture
def cli(rabbit, names, ledger_env, monkeypatch):
    """`sluice schedules …` on the same table and broker, the tasks declared as in the processes."""
    schedules = sys.modules["sluice_cli.schedules"]
    monkeypatch.setattr(schedules, "_registry", lambda: declared([f"light:{PERIOD}:scheduler"]))

    def run(*args: str) -> str:
        result = CliRunner().invoke(
            sluice_cli.cli,
            ["--env", ENV, "--region", REGION, "--endpoint-url", ledger_env["AWS_ENDPOINT_URL"],
             "schedules", *args, "--broker-url", rabbit.url, "--prefix", names.prefix],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return result.output

    return run


PERIOD = 0.2
LIGHT = f"light:{PERIOD}:scheduler"


@pytest.mark.slow
def test_pause_resume_and_a_new_period_apply_across_processes_and_restarts(
    procs, cli, control, rabbit, tap, names
):
    # Given two scheduler processes running task `light` every 200 ms
    procs.start(specs=(LIGHT,))
    procs.start(specs=(LIGHT,))
    procs.wait_runs(3, 20, task="light")
    # When an operator pauses it
    assert "light: every 0.2 s, group scheduler, declared, paused" in cli("pause", "light")
    paused_at = time.time()
    # and both processes are replaced, and the broker restarts, while it is paused
    for proc in list(procs.procs):
        procs.stop_one(proc)
    procs.start(specs=(LIGHT,))
    procs.start(specs=(LIGHT,))
    print(f"broker restart: {rabbit.restart():.1f} s")
    up_at = time.time()
    # Then, the processes connected again, the task's token goes round unrun
    deadline = time.monotonic() + 20
    while not [e for e in tap.of("paused", "light") if e["at"] > up_at + PERIOD]:
        assert time.monotonic() < deadline, "no paused tick after the broker restart"
        time.sleep(0.02)
    # (and both listen for prompts again: a prompt the broker routes to nobody is lost, and the
    # change it announces then waits for the next re-read)
    while listeners(rabbit, names) < 2:
        assert time.monotonic() < deadline, "the processes do not listen for prompts"
        time.sleep(0.05)
    # and no tick started while it was paused
    assert [r for r in procs.runs("light") if r.started > paused_at + APPLY_S] == []
    # When it is resumed
    assert "active" in cli("resume", "light")
    resumed_at = time.time()
    after = procs.wait_runs(5, 10, task="light", after=resumed_at)
    # Then it runs from its next tick on, on its grid, every tick (a tick a loaded machine made
    # late is reported missed, never run late or twice: ticks missed beyond the pause are those)
    # The first run is the first tick the resume reached: every grid tick between the resume and
    # it went round unrun as paused (the prompt had not reached its runner yet) or was reported
    # missed; none vanished. (How soon the prompt arrives depends on the machine's load: a bound
    # on it failed once at load 20, 0.47 s after the resume.)
    first = after[0]
    between = round((first.due - resumed_at) / PERIOD - 1e-6)
    gap = [round((first.due - k * PERIOD) * 1000) for k in range(1, between + 1)]
    held = {round(e["due"] * 1000) for e in tap.of("paused", "light")}
    for e in tap.of("missed", "light"):  # `due` and the `missed` grid ticks before it
        held |= {round((e["due"] - j * PERIOD) * 1000) for j in range(int(e.get("missed", 1)) + 1)}
    assert [key for key in gap if key not in held] == [], (first.due, resumed_at)
    assert first.due <= resumed_at + PERIOD + 5.0, (first.due, resumed_at)
    assert skipped(after, PERIOD) <= reported_missed(tap, resumed_at, after[-1].due)
    # When its period changes to 100 ms (through the Python API)
    entry = control.set("light", every_s=0.1)
    set_at = time.time()
    assert entry.origin == "overridden" and control.prompted
    time.sleep(1.2)
    runs = procs.runs("light")
    # Then from the next tick on it runs on the 100 ms grid, every tick, without a burst
    new = [r for r in runs if r.started > set_at + APPLY_S]
    # (on failure, what the runners said since the change)
    told = [(round(e["at"] - set_at, 3), e["event"], e.get("due")) for e in list(tap.events)]
    assert 5 <= len(new) <= 12, ([r.key for r in new], told)
    assert all(r.key % 100 == 0 for r in new)
    assert skipped(new, 0.1) <= reported_missed(tap, set_at + APPLY_S, new[-1].due)
    # and across all of it no tick ran twice, and `list` shows where the task came from
    assert twice(runs) == []
    row = next(line for line in cli("list").splitlines() if line.startswith("light "))
    assert "every 0.1 s" in row and "overridden" in row and "active" in row


def test_a_task_added_at_run_time_runs_in_every_process_until_it_is_removed(procs, cli, control):
    # Given two scheduler processes
    a = procs.start(specs=(LIGHT,))
    b = procs.start(specs=(LIGHT,))
    procs.wait_runs(2, 20, task="light")
    # When an operator adds a task that sends an event every 100 ms
    event = sorted(catalog.EVENTS)[0]
    out = cli("add", "extra", "--every", "100ms", "--event", event, "--data", '{"n": 1}')
    assert "extra: every 0.1 s, group scheduler, added, active" in out
    runs = procs.wait_runs(5, 10, task="extra")
    # and the process running it stops (the other takes it over, from the table)
    runner = procs.procs[[a.pid, b.pid].index(runs[-1].pid)]
    procs.stop_one(runner)
    stopped_at = time.time()
    procs.wait_runs(3, 10, task="extra", after=stopped_at + 0.5)
    # When it is removed
    cli("remove", "extra")
    removed_at = time.time()
    time.sleep(0.6)
    runs = procs.runs("extra")
    # Then it ran in the other process too, and no tick ran twice, and none after its removal
    assert {r.pid for r in runs} == {a.pid, b.pid}
    assert twice(runs) == []
    assert [r for r in runs if r.started > removed_at + APPLY_S] == []
    assert "removed (disabled)" in next(
        line for line in cli("list").splitlines() if line.startswith("extra ")
    )


def test_a_task_runs_only_in_the_processes_of_its_consumer_group(procs):
    # Given a process of group `scheduler` and one of group `tasks`, both declaring a light task
    # (group scheduler) and a heavy one (group tasks)
    specs = ("light:0.1:scheduler", "heavy:0.1:tasks")
    light = procs.start(specs=specs)
    heavy = procs.start(group="tasks", specs=specs)
    # When both have run for a while
    procs.wait_runs(8, 20, task="light")
    procs.wait_runs(8, 20, task="heavy")
    # Then each task ran only in its group's process
    assert {r.pid for r in procs.runs("light")} == {light.pid}
    assert {r.pid for r in procs.runs("heavy")} == {heavy.pid}


def test_without_a_broker_the_cli_says_what_cron_yaml_cannot_do():
    result = CliRunner().invoke(
        sluice_cli.cli, ["schedules", "pause", "heartbeat"], env={"SLUICE_BROKER_URL": ""}
    )
    assert result.exit_code == 1
    assert "runtime changes need the broker scheduler" in result.output
    assert "cannot be added, removed, paused, resumed or re-timed" in result.output
