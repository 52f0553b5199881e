"""No overlap, end to end: an event task whose workflow runs longer than its period.

The real chain, in one process: two scheduler processes' worth of runners (`build`, each its own
connections) on the session's rabbitmq-server, sharing the tick ledger in moto's DynamoDB; each
tick's event handed to the worker's dispatcher, which starts the workflow as a durable execution
in AWS's local durable runner (devtools/durable_lambda.py), served over loopback to the runners'
boto3 Lambda client. The workflow's one step takes longer than the period and counts how many
runs are inside it at once. Half way, the process whose runner holds the task stops (a restart)
and the other takes over. Then the same with scheduler processes (tests/integration/overlap_proc.py),
the one that started a run SIGKILLed right after its send.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from aws_durable_execution_sdk_python import DurableContext, durable_execution

from devtools.durable_lambda import DurableService, alias_arn, serve
from sluice import metrics, naming
from sluice.envelope import Event
from sluice.scheduling.names import STATUS_EVENTS, Names
from sluice.scheduling.registry import PeriodicTask, Registry
from sluice.scheduling.schedule import Every
from sluice.settings import SchedulerSettings
from sluice_cli.schedules import last_status
from tests.conftest import ROOT
from tests.integration import overlap_proc
from tests.integration.scheduling import ControlTap
from worker.dispatch import Delivery
from worker.scheduler.__main__ import build

REGION = "eu-west-1"
PERIOD_S = 0.25
WORK_S = 1.0  # each run's step: four periods
RUN_FOR_S = 4.0
EVENT, WORKFLOW = overlap_proc.EVENT, overlap_proc.WORKFLOW
ALIASES = {naming.alias_variable(WORKFLOW): alias_arn(REGION, WORKFLOW)}


@dataclass
class Inside:
    """Runs inside the workflow's step: how many at once, at most; which ticks ran."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    now: int = 0
    most: int = 0
    ticks: list[str] = field(default_factory=list)

    def enter(self, tick: str) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.ticks.append(tick)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


@pytest.fixture
def lambda_service() -> Iterator[tuple[DurableService, Any, Inside]]:
    """The workflow the task's event starts, run durably on loopback; a boto3 client for it."""
    inside = Inside()

    @durable_execution
    def slow(event: Any, ctx: DurableContext) -> dict[str, Any]:
        def work(_: Any) -> str:
            inside.enter(event["id"])
            try:
                time.sleep(WORK_S)
            finally:
                inside.leave()
            return event["id"]

        return {"ran": ctx.step(work, name="work")}

    service = DurableService({WORKFLOW: slow}, {})
    server = serve(service)
    client = boto3.client(
        "lambda",
        region_name=REGION,
        endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
    )
    yield service, client, inside
    server.shutdown()
    service.close()


def worker_send(lam: Any) -> Any:
    """The worker's dispatcher, as sqsd would give it the event (twice): it starts the workflow."""
    dispatcher = overlap_proc.dispatcher(lam, ALIASES)

    def send(event: Event) -> None:
        # Every event twice, the second as sqsd's redelivery (a worker that retries the start):
        # Lambda's idempotent start makes it the same run
        for receive_count in (1, 2):
            delivery = Delivery(message_id=event.id, receive_count=receive_count)
            result = dispatcher.handle(event.to_json().encode(), delivery)
            assert result.status == 200, result

    return send


def test_an_event_task_never_starts_a_run_while_its_previous_run_runs(
    rabbit, names: Names, tap: ControlTap, ledger_env, lambda_service, monkeypatch
):
    service, lam, inside = lambda_service
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", str(lam.meta.endpoint_url))
    task = PeriodicTask(overlap_proc.TASK, Every(PERIOD_S), event=EVENT, data={"key": "k"})
    registry = Registry([task])
    settings = SchedulerSettings.read(
        {
            **ledger_env,
            "SLUICE_BROKER_URL": rabbit.url,
            **ALIASES,
        }
    )
    ddb = boto3.client(
        "dynamodb",
        region_name=ledger_env["AWS_REGION"],
        endpoint_url=ledger_env["AWS_ENDPOINT_URL"],
    )
    send = worker_send(lam)
    # Given two scheduler processes running a task every 0.25 s whose run takes 1 s
    first = build(registry, rabbit.url, settings, names=names, send=send, dynamodb=ddb).start()
    second = build(registry, rabbit.url, settings, names=names, send=send, dynamodb=ddb).start()
    figures: list[Any] = []
    try:
        time.sleep(RUN_FOR_S / 2)
        # When the process running the task stops half way and the other takes over
        halves = {s: s.lifecycle.drain() for s in (first, second)}
        figures += [f for drained in halves.values() for f in drained]
        active = (
            first
            if any(f.name == metrics.TICK_EVENTS["started"] for f in halves[first])
            else second
        )
        active.stop()
        time.sleep(RUN_FOR_S / 2)
    finally:
        first.stop()
        second.stop()
    figures += [f for s in (first, second) for f in s.lifecycle.drain()]
    deadline = time.monotonic() + 10
    while any(
        lam.get_durable_execution(DurableExecutionArn=arn)["Status"] == "RUNNING"
        for _, _, arn in service.executions()
    ):
        assert time.monotonic() < deadline, "runs did not end"
        time.sleep(0.05)

    # Then no two runs were ever inside the workflow at once
    started = tap.of("started", task.name)
    skipped = tap.of("skipped", task.name)
    runs = service.executions()
    reasons = Counter(e.get("reason") for e in skipped)
    print(f"ticks started {len(started)}, runs {len(runs)}, skipped {dict(reasons)}")
    assert len(started) >= RUN_FOR_S / PERIOD_S * 0.6, f"only {len(started)} ticks in the window"
    assert inside.most == 1, f"{inside.most} runs of {task.name} at once"
    # and every started tick either started one run or was skipped, counted once each
    run_ticks = {name for _, name, _ in runs}
    skipped_ticks = {round(e["due"] * 1000) for e in skipped}
    started_ticks = {round(e["due"] * 1000) for e in started}
    assert len(skipped) == len(skipped_ticks)
    assert {f"tick-{task.name}-{t}" for t in started_ticks - skipped_ticks} == run_ticks
    assert len(runs) + len(skipped) == len(started_ticks)
    assert len(skipped) >= len(started) / 2  # a run spans four periods: most ticks are skipped
    # each skip names the tick whose run held it back: the last one that started a run
    for event in skipped:
        before = [t for t in started_ticks - skipped_ticks if t < round(event["due"] * 1000)]
        assert round(event["running"] * 1000) == max(before)
        assert event["reason"] in ("running", "pending")
    # and the lifecycle metric counts them
    assert sum(f.value for f in figures if f.name == metrics.TICK_EVENTS["skipped"]) == len(skipped)
    # and `sluice schedules list` shows the task's last outcome, a skip included
    outcomes = [e for e in list(tap.events) if e["task"] == task.name]
    outcomes = [e for e in outcomes if e["event"] in STATUS_EVENTS and e["event"] != "started"]
    shown = last_status(rabbit.url, [task.name], names)[task.name]
    print(f"schedules list: {shown.describe()}")
    assert (shown.outcome, shown.due) == (outcomes[-1]["event"], outcomes[-1]["due"])


def test_a_scheduler_process_killed_right_after_starting_a_run_leaves_no_overlap(
    rabbit, names: Names, tap: ControlTap, ledger_env, lambda_service, tmp_path
):
    service, lam, inside = lambda_service
    log = tmp_path / "sends.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        **ledger_env,
        **ALIASES,
        "AWS_ENDPOINT_URL_LAMBDA": str(lam.meta.endpoint_url),
        # A dead runner's claim is taken over after 0.3 s (not the default 10 s), well before
        # the run it started ends: then only the overlap check holds the next tick back
        "SLUICE_SCHEDULER_LEASE_S": "0.3",
    }

    def start(**extra: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "tests.integration.overlap_proc", rabbit.url]
        command += [names.prefix, str(PERIOD_S), str(log)]
        return subprocess.Popen(command, cwd=ROOT, env={**env, **extra})

    def lines(kind: str) -> list[list[str]]:
        found = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
        return [line for line in found if line[0] == kind]

    def sends(pid: int | None = None) -> list[list[str]]:
        return [line for line in lines("sent") if pid is None or line[2] == str(pid)]

    # Given a scheduler process running the task, and a second one ready to take it over
    kill = tmp_path / "kill"
    first = start(SCHED_KILL_WHEN=str(kill))
    second = None
    try:
        until(lambda: sends(first.pid), "the first process's first send", 30)
        second = start()
        until(lambda: any(line[2] == str(second.pid) for line in lines("ready")), "second", 30)
        # When the first kills itself right after its next send (that run going on)
        kill.touch()
        assert first.wait(timeout=30) == -signal.SIGKILL
        killed_at = time.time()
        # and the second runs the task for a while
        until(lambda: sends(second.pid), "the second process's send", 30)
        time.sleep(1.0)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=15)
    until(lambda: not any(_running(lam, arn) for _, _, arn in service.executions()), "runs' end")

    # Then no two runs were ever inside the workflow at once, the killed process's last one too
    sent = sends()
    by_pid = Counter(line[2] for line in sent)
    skipped = tap.of("skipped", overlap_proc.TASK)
    print(f"sends per process {dict(by_pid)}, skipped {len(skipped)}, runs {inside.ticks}")
    assert by_pid[str(first.pid)] >= 1 and by_pid[str(second.pid)] >= 1 and len(by_pid) == 2
    assert inside.most == 1, f"{inside.most} runs at once"
    # every send started one run, once
    assert sorted(name for _, name, _ in service.executions()) == sorted(line[1] for line in sent)
    # and the second process's first send waited for the killed one's run: skips naming it
    killed_run = [line for line in sent if line[2] == str(first.pid)][-1][1]
    named = {
        f"tick-{overlap_proc.TASK}-{round(e['running'] * 1000)}"
        for e in skipped
        if e["at"] >= killed_at
    }
    assert killed_run in named
    assert named <= {line[1] for line in sent}  # a skip names a tick that did start a run


def until(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.05)


def _running(lam: Any, arn: str) -> bool:
    return lam.get_durable_execution(DurableExecutionArn=arn)["Status"] == "RUNNING"
