"""The fault-injection run of issue 12: real components, injected faults, one table.

Events part: N events (with duplicates, re-sends with a new timestamp and poison of every kind)
go through moto's SQS, the repo's sqsd driver and the real worker (the Procfile's gunicorn, two
processes), while the Lambda Invoke fake throttles, fails (5xx), times out before and after the
start took effect and drops connections, and the web processes are SIGKILLed or stopped (SIGTERM)
at random points and restarted. Counted from the fake's executions (by event id), the DLQ with
its `reason` attribute, and what is left.

Tasks part: transcode tasks (real ffmpeg) run by the real tasks process while it is SIGKILLed,
stopped as systemd stops a unit (SIGTERM to every process of it) and its ffmpeg OOM-killed; a
stand-in for the workflow re-sends a task after a transient failure, as the workflow does. A
business failure here is a job failed for a transient cause.

The scheduler's faults are its re-sends: a tick (or cron POST) sent again with a new timestamp,
here among the duplicates; the scheduler process itself under SIGKILL is tests/integration's.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from devtools import lambda_fake
from devtools.moto_server import moto_server
from devtools.sqsd import SqsdDriver
from sluice import envelope
from sluice.envelope import Event, Task
from sluice.settings import TasksSettings
from tests.conftest import ROOT
from tests.heavy.conftest import CallbackApi, make_audio, serve_callback_api
from tests.worker.conftest import (
    CLAIM_BUCKET,
    REGION,
    Worker,
    attr,
    free_port,
    make_queues,
    start_web,
    stop_web,
    worker_env,
)
from worker.heavy.common import SCRATCH_PREFIX

# Receives before SQS's redrive: high, so that the run measures the worker (a valid event
# faulted five times in a row at a 25 % fault rate is bad luck, not a worker fault); a poison
# message the worker loops on still ends in the DLQ without a reason and is counted.
MAX_RECEIVES = 25
FAILURE_ROWS = (
    "started twice",
    "lost",
    "poison in the DLQ without a reason",
    "poison not dead-lettered",
    "valid events dead-lettered",
    "jobs failed for a transient cause",
)


@dataclass
class Table:
    rows: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def failures(self) -> dict[str, int]:
        return {k: v for k, v in self.rows.items() if k in FAILURE_ROWS and v}

    def render(self) -> str:
        width = max(len(k) for k in self.rows) + 2
        lines = ["", "chaos run (failure rows marked *; each must be 0)"]
        lines += [
            f"  {'*' if k in FAILURE_ROWS else ' '} {k:<{width}}{v:>8}"
            for k, v in self.rows.items()
        ]
        return "\n".join(lines + [f"    {n}" for n in self.notes])


@dataclass
class Plan:
    """What one run sends: valid events, re-sends and poison, by kind."""

    valid: list[Event]
    resends: list[str]  # message bodies: the same event again (as is, or with a new ts)
    poison: list[tuple[str, str]]  # (body, expected reason)
    rejected: list[Event]  # valid envelopes Lambda refuses for good (400/413)
    conflicts: list[Event]  # same id as a valid event, other data (sent once those started)


def plan(n: int, rng: random.Random) -> Plan:
    name = "media/transcription.requested"
    run = f"{rng.getrandbits(32):08x}"
    valid = []
    for i in range(n):
        # a share of ids that are not execution names as they are (hashed names)
        event_id = f"chaos-{run}-{i}" if i % 5 else f"chaos:{run}/{i}"
        valid.append(Event(name=name, data={"key": f"uploads/{i}.mp3"}, id=event_id))
    resends = []
    for ev in rng.sample(valid, max(1, n // 10)):
        resends.append(ev.to_json())
    for ev in rng.sample(valid, max(1, n // 10)):  # a re-sent tick: same id, new timestamp
        resends.append(Event(name=ev.name, data=ev.data, id=ev.id, ts=envelope.utc_now()).to_json())
    base = valid[0].to_dict()
    poison_kinds = [
        ("{not json", envelope.MALFORMED_JSON),
        ('{"data": ' + "[" * 3000 + "]" * 3000 + "}", envelope.MALFORMED_JSON),
        (json.dumps(base).replace('"key":', '"n": ' + "9" * 5000 + ', "key":'), "malformed_json"),
        (json.dumps(base).replace('"key":', '"x": NaN, "key":'), envelope.MALFORMED_JSON),
        (json.dumps({**base, "id": f"chaos-{run}-nl\n"}), envelope.SCHEMA_VIOLATION),
        (json.dumps({**base, "v": True}), envelope.SCHEMA_VIOLATION),
        ('{"Records": []}', envelope.SCHEMA_VIOLATION),
        (Event(name="billing/invoice.paid", data={}).to_json(), envelope.UNKNOWN_EVENT),
        (Event(name=name, data={"blob": "x" * 9000}).to_json(), envelope.OVERSIZE),
    ]
    poison = [poison_kinds[i % len(poison_kinds)] for i in range(max(len(poison_kinds), n // 20))]
    rejected = [Event(name=name, data={"k": i}, id=f"chaos-{run}-rej-{i}") for i in range(3)]
    conflicts = [Event(name=ev.name, data={"other": True}, id=ev.id) for ev in rng.sample(valid, 3)]
    return Plan(valid, resends, poison, rejected, conflicts)


def send_bodies(sqs: Any, url: str, bodies: list[str]) -> None:
    for i in range(0, len(bodies), 10):
        entries = [{"Id": str(j), "MessageBody": b} for j, b in enumerate(bodies[i : i + 10])]
        answer = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        assert not answer.get("Failed"), answer["Failed"]


def depth(sqs: Any, url: str) -> int:
    a = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def wait_quiet(sqs: Any, url: str, deadline: float) -> None:
    quiet = 0
    while quiet < 3 and time.monotonic() < deadline:
        quiet = quiet + 1 if depth(sqs, url) == 0 else 0
        time.sleep(0.5)


def run_events(n: int, seed: int, work: Path, *, kills: int, moto_url: str) -> Table:
    rng = random.Random(seed)
    queues = make_queues(moto_url, f"chaos-events-{seed}-{n}", max_receive_count=MAX_RECEIVES)
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_url)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(
            Bucket=CLAIM_BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
    lam = lambda_fake.LocalLambda()
    lam.record = False
    lam.faults = lambda_fake.Faults(rate=0.25, seed=seed, timeout_s=1.5)
    server = lambda_fake.serve(lam)
    p = plan(n, rng)
    for i, ev in enumerate(p.rejected):
        lam.always[ev.execution_name] = (
            lambda_fake.INVALID_REQUEST if i % 2 else lambda_fake.TOO_LARGE
        )
    env = worker_env(
        # Restarted on this port: from below the ephemeral range, which no other test's server
        # (bound to port 0) nor any outgoing connection can take while it is down; a port taken
        # then was answered by another test's server, and the worker's events lost (seen in CI).
        port=free_port(stable=True),
        lambda_url=f"http://127.0.0.1:{server.server_address[1]}",
        moto_url=moto_url,
        dlq_url=queues.dlq_url,
        claim_bucket=CLAIM_BUCKET,
    )
    env.update(WEB_CONCURRENCY="2", SLUICE_INVOKE_TIMEOUT_S="1")
    procfile = ROOT / "worker" / "Procfile"
    logs = [work / f"web-{i}.log" for i in range(kills + 1)]  # one per start: a failure shows them
    web: list[Worker] = [start_web(ROOT, env, logs[0], procfile=procfile)]
    bodies = [e.to_json() for e in p.valid] + p.resends + [b for b, _ in p.poison]
    bodies += [e.to_json() for e in p.rejected]
    rng.shuffle(bodies)
    send_bodies(queues.sqs, queues.url, bodies)
    # A failed POST returns its message after 1 s, as sqsd's ErrorVisibilityTimeout does (the
    # stacks use 30 s). At 0 s, the driver met a closed port hundreds of times a second while a
    # web process restarted, and a valid event used its MAX_RECEIVES up there and went to the DLQ
    # without a reason: the harness's doing, not the worker's (seed 281700 showed it).
    driver = SqsdDriver(
        queues.sqs, queues.url, web[0].url + "/", connections=8, error_visibility_timeout_s=1
    )
    stop = threading.Event()
    feeder = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    began = time.monotonic()
    feeder.start()
    signals: Counter[str] = Counter()
    deadline = time.monotonic() + 60 + n * 0.5
    try:
        for k in range(kills):  # kill the web processes at random points, then restart them
            time.sleep(rng.uniform(0.5, 2.0))
            sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
            signals[sig.name] += 1
            with contextlib.suppress(ProcessLookupError):
                os.killpg(web[0].process.pid, sig)
            web[0].process.wait(30)
            time.sleep(rng.uniform(0, 1.0))  # sqsd meets a closed port meanwhile
            web[0] = start_web(ROOT, env, logs[k + 1], procfile=procfile)
        wait_quiet(queues.sqs, queues.url, deadline)
        send_bodies(queues.sqs, queues.url, [e.to_json() for e in p.conflicts])
        wait_quiet(queues.sqs, queues.url, deadline)
    finally:
        stop.set()
        feeder.join(30)
        driver.close()
        stop_web(web[0])
        server.shutdown()
    elapsed = time.monotonic() - began
    copies = queues.drain(queues.dlq_url)
    # A web process killed after dead-lettering a message and before its 200 leaves sqsd to
    # deliver it again, and the DLQ gets a second copy (at least once): count each source
    # message (its SQS message id, which sqsd passes on) once.
    by_source = {attr(m, "sqsd_msgid") or m["MessageId"]: m for m in copies}
    dead = list(by_source.values())
    # executions per event id (the payload names it; a hashed name maps back through it)
    per_id = Counter(payload["id"] for payload in lam.started().values())
    valid_ids = {e.id for e in p.valid}
    reasons = Counter(attr(m, "reason") for m in dead)
    expected = Counter(r for _, r in p.poison)
    expected[envelope.ID_CONFLICT] += len(p.conflicts)
    expected[envelope.LAMBDA_REJECTED] += len(p.rejected)
    with_reason = sum(v for k, v in reasons.items() if k)
    dead_valid = [m for m in dead if not attr(m, "reason") and _event_id(m) in valid_ids]
    table = Table()
    table.rows = {
        "events sent": len(bodies) + len(p.conflicts),
        "started once": sum(1 for i in valid_ids if per_id[i] == 1),
        "started twice": sum(1 for i in valid_ids if per_id[i] > 1),
        "lost": sum(1 for i in valid_ids if per_id[i] == 0) + depth(queues.sqs, queues.url),
        "poison in the DLQ with a reason": with_reason,
        "poison in the DLQ without a reason": reasons[None] - len(dead_valid),
        "poison not dead-lettered": sum((expected - reasons).values()),
        "valid events dead-lettered": len(dead_valid) + sum((reasons - expected).values()),
    }
    table.notes = [
        f"events part: N={n} valid, {len(p.resends)} re-sends, {sum(expected.values())} poison "
        f"({dict(sorted(expected.items()))}); seed {seed}; {elapsed:.1f} s",
        f"Lambda faults injected: {dict(sorted(lam.faults.injected.items()))}; "
        f"unsigned requests: {lam.unsigned}",
        f"web processes killed: {dict(signals)}; sqsd answers: {dict(driver.stats.statuses)}; "
        f"dead letters delivered twice (killed before answering): {len(copies) - len(dead)}",
    ]
    if table.failures():  # what each web process said, last lines first to look at
        for path in logs:
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-15:]
                table.notes += [f"{path.name}:", *(f"  {line}" for line in tail)]
    return table


def _event_id(message: dict[str, Any]) -> str:
    try:
        return str(json.loads(message["Body"]).get("id", ""))
    except (ValueError, AttributeError, RecursionError):  # the deep-nesting poison
        return ""


# --- tasks part -------------------------------------------------------------------------------


def start_tasks(moto_url: str, queue_url: str, api: CallbackApi, tmp: Path, log: Path) -> Any:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ENDPOINT_URL_LAMBDA": api.url,
        **TasksSettings.render(
            queue_url=queue_url,
            concurrency=2,
            receive_wait_s=1,
            keepalive_s=0.5,
            visibility_timeout_s=3,
            grace_s=3,
        ),
        "TMPDIR": str(tmp),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "worker.tasks"], cwd=ROOT, env=env, stdout=out, stderr=out
        )


def _tree(pid: int) -> list[int]:
    """`pid`'s descendants (from /proc)."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def _business(error: Any) -> bool:
    return isinstance(error, dict) and error.get("ErrorType") != "TransientError"


def _wait_ffmpeg(pid: int, *, deadline: float, workflow: Any) -> int | None:
    """A running ffmpeg child of the tasks process `pid`, or None by the deadline."""
    while time.monotonic() < deadline:
        workflow()
        for child in _tree(pid):
            with contextlib.suppress(OSError):
                if b"ffmpeg" in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0]:
                    return child
        time.sleep(0.05)
    return None


def run_tasks(m: int, seed: int, work: Path, *, kills: int, moto_url: str) -> Table:
    rng = random.Random(seed)
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_url)
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=moto_url)
    bucket = f"chaos-tasks-{seed}-{m}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    queue_url = sqs.create_queue(QueueName=f"chaos-tasks-{seed}-{m}")["QueueUrl"]
    s3.put_object(
        Bucket=bucket, Key="uploads/a.mp3", Body=make_audio(work / "a.mp3", 30.0).read_bytes()
    )
    api, server = serve_callback_api(close_on_report=True)
    tmp = work / "tmp"
    tmp.mkdir(exist_ok=True)
    sent: dict[str, int] = {}  # task -> attempts sent (the workflow's retries)

    def send(task: str) -> None:
        sent[task] = sent.get(task, 0) + 1
        callback = task if sent[task] == 1 else f"{task}#{sent[task]}"
        body = Task(
            name="media/transcode",
            callback_id=callback,
            data={
                "source": {"bucket": bucket, "key": "uploads/a.mp3"},
                "output": {"bucket": bucket, "prefix": f"hls/{task}/"},
            },
            correlation_id=task,
        ).to_json()
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)

    tasks = [f"job-{i}" for i in range(m)]
    for task in tasks:
        send(task)
    log = work / "tasks.log"
    proc = start_tasks(moto_url, queue_url, api, tmp, log)
    faults: Counter[str] = Counter()
    seen = 0
    began = time.monotonic()
    deadline = began + 120 + m * 20

    def workflow_step() -> None:
        """Re-send a task whose attempt failed transiently, as heavy_task's retry does."""
        nonlocal seen
        for op, callback, error in api.bodies[seen:]:
            if op == "fail" and error.get("ErrorType") == "TransientError":
                send(callback.split("#")[0])
        seen = len(api.bodies)

    try:
        for _ in range(kills):
            # each fault lands mid-transcode: at a random point while an ffmpeg runs
            ffmpeg = _wait_ffmpeg(proc.pid, deadline=time.monotonic() + 30, workflow=workflow_step)
            if ffmpeg is None:
                break  # nothing left to interrupt
            time.sleep(rng.uniform(0.0, 0.5))
            kind = rng.choice(["SIGKILL", "stop", "oom"])
            faults[kind] += 1
            if kind == "oom":  # the OOM killer takes one ffmpeg
                with contextlib.suppress(ProcessLookupError):
                    os.kill(ffmpeg, signal.SIGKILL)
                continue
            if kind == "stop":  # systemd: SIGTERM to every process of the unit
                for pid in [*_tree(proc.pid), proc.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            else:
                proc.kill()
            proc.wait(60)
            proc = start_tasks(moto_url, queue_url, api, tmp, log)

        def done() -> bool:  # each job succeeded, or failed for good (business: no retry)
            ended = {c.split("#")[0] for c in api.ops("succeed")}
            ended |= {c.split("#")[0] for o, c, e in api.bodies if o == "fail" and _business(e)}
            return ended >= set(tasks)

        while not done() and time.monotonic() < deadline:
            workflow_step()
            time.sleep(0.2)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        proc.kill()
        server.shutdown()
    succeeded = Counter(c.split("#")[0] for c in api.ops("succeed"))
    business = [e for e in api.failures() if _business(e)]
    leftovers = [p.name for p in tmp.iterdir() if p.name.startswith(SCRATCH_PREFIX)]
    table = Table()
    # a business failure, or a job never completed: every input is valid audio
    table.rows = {
        "jobs failed for a transient cause": len(business)
        + sum(1 for t in tasks if succeeded[t] == 0),
    }
    table.notes = [
        f"tasks part: {m} transcodes, faults {dict(faults)}, {sum(sent.values())} attempts sent; "
        f"scratch left behind (swept at the next start): {len(leftovers)}; "
        f"{time.monotonic() - began:.1f} s"
    ]
    return table


def run(n: int, m: int, seed: int, work: Path, *, kills: int) -> Table:
    with moto_server() as url:
        events = run_events(n, seed, work, kills=kills, moto_url=url)
        tasks = run_tasks(m, seed, work, kills=kills, moto_url=url)
    table = Table({**events.rows, **tasks.rows}, events.notes + tasks.notes)
    return table
