"""Benchmark of flow control's decision path: worker CPU and state-store calls per event, for a
controlled event (deliver_webhook's declared throttle and priority) side by side with an
uncontrolled one (transcribe_audio), interleaved in the same run.

The worker's own code handles each event in this process (worker.dispatch.Dispatcher with the
real Invoke client, the lean DynamoDB client and flow control, as create_app makes them); DynamoDB is moto behind a keep-alive
server (bench/ddb_keepalive.py: DynamoDB keeps connections open, moto's server does not), SQS
moto's server and Lambda's Invoke devtools.lambda_fake, each in its own process, so only the worker's CPU is
measured (time.thread_time around each `handle`). Each DynamoDB and SQS call the worker makes is
counted. Three kinds of events: uncontrolled; controlled with room in the window (the common
case: started at once); controlled over the limit (held, drained, one wake-up per window).
Target (issue 14): controlled <= 3x uncontrolled in worker CPU.

    make bench-flow       # or: .venv/bin/python bench/flow_bench.py --events 1000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.ports import free_port  # noqa: E402

REGION = "eu-west-1"
TABLE = "Sluice-bench-coordination"


class Counting:
    """A client whose calls are counted by operation."""

    def __init__(self, client: Any, counts: Counter[str]) -> None:
        self._client, self._counts = client, counts

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self._counts[name] += 1
            return method(*args, **kwargs)

        return call


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=600, help="events of each kind")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument(
        "--profile", type=int, default=0, help="print the held path's N costliest functions"
    )
    args = parser.parse_args()

    moto_port, lambda_port, ddb_port = free_port(), free_port(), free_port()
    python = sys.executable
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL_LAMBDA": f"http://127.0.0.1:{lambda_port}",
        }
    )
    servers = [
        subprocess.Popen(
            [python, "-m", "moto.server", "-p", str(moto_port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [python, "-m", "devtools.lambda_fake", "--port", str(lambda_port), "--no-record"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [python, str(ROOT / "bench" / "ddb_keepalive.py"), "--port", str(ddb_port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        ),
    ]
    try:
        wait_port(moto_port)
        wait_port(lambda_port)
        wait_port(ddb_port)
        result = run(args, f"http://127.0.0.1:{moto_port}", f"http://127.0.0.1:{ddb_port}")
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=15)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


def run(args: argparse.Namespace, moto_url: str, ddb_url: str) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    from adapters.flow import FlowStore
    from devtools.local.resources import create_coordination_table
    from sluice import catalog
    from sluice.envelope import Event
    from sluice.settings import WebSettings
    from worker import dispatch
    from worker.cancels import Canceller
    from worker.dispatch import Delivery, Dispatcher
    from worker.flow import FlowControl
    from worker.invoke import DynamoDB, LambdaInvoker
    from worker.observability import Metrics, configure_logging

    config = Config(retries={"total_max_attempts": 2})
    ddb = boto3.client("dynamodb", endpoint_url=ddb_url, config=config)  # to set up only
    sqs = boto3.client("sqs", endpoint_url=moto_url, config=config)
    create_coordination_table(ddb, TABLE)
    queue_url = sqs.create_queue(QueueName="Sluice-bench-events")["QueueUrl"]
    dlq_url = sqs.create_queue(QueueName="Sluice-bench-events-dlq")["QueueUrl"]
    counts: Counter[str] = Counter()
    # The worker's own client for flow control's calls, as create_app makes it.
    os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = ddb_url
    lean = DynamoDB.from_environment(timeout_s=10)
    aliases = {
        name: f"arn:aws:lambda:{REGION}:123456789012:function:{name}:live"
        for name in ("deliver_webhook", "transcribe_audio")
    }
    configure_logging("sluice-bench", stream=io.StringIO())
    # As create_app: declared cancellation through boto3 (deliver_webhook declares cancel_on;
    # flow control asks it before a held event starts).
    canceller = Canceller(
        lambda_client=boto3.client("lambda", config=config),
        dynamodb_client=Counting(ddb, counts),
        table=TABLE,
        failure_handlers={},
    )
    dispatcher = Dispatcher(
        settings=WebSettings.of(env="bench", workflow_aliases=aliases, events_dlq_url=dlq_url),
        lambda_client=LambdaInvoker.from_environment(timeout_s=10),
        sqs_client=Counting(sqs, counts),
        metrics=Metrics("Sluice/Bench", {"Environment": "bench"}, stream=io.StringIO()),
        flow_control=FlowControl(
            FlowStore(Counting(lean, counts), TABLE),
            sqs=Counting(sqs, counts),
            queue_url=queue_url,
            canceller=canceller,
        ),
        canceller=canceller,
    )
    declared = catalog.FLOWS["deliver_webhook"]  # throttle + priority, as the repository declares
    assert declared.throttle is not None and dispatch.FLOWS is catalog.FLOWS
    limit = declared.throttle.limit

    def uncontrolled(i: int, tag: str) -> Event:
        return Event(
            name="media/transcription.requested",
            data={"bucket": "media", "key": f"uploads/{tag}-{i}.mp3"},
        )

    def controlled(i: int, tag: str, *, customers: int) -> Event:
        return Event(
            name="webhook/requested",
            data={
                "customer_id": f"{tag}-c{i % customers}",
                "url": "https://example.com/hook",
                "priority": i % 10,
                "payload": {"n": i},
            },
        )

    def handle(event: Event) -> tuple[float, dict[str, int]]:
        body = event.to_json().encode()
        before = dict(counts)
        cpu = time.thread_time()
        result = dispatcher.handle(body, Delivery(receive_count=1))
        cpu = time.thread_time() - cpu
        assert result.status == 200, result
        return cpu, {k: v - before.get(k, 0) for k, v in counts.items() if v - before.get(k, 0)}

    for i in range(args.warmup):  # clients, connection pools, caches
        handle(uncontrolled(i, "warm"))
        handle(controlled(i, "warm", customers=args.warmup))

    kinds: dict[str, list[tuple[float, dict[str, int]]]] = {
        "uncontrolled": [],
        "controlled_started": [],
        "controlled_held": [],
    }
    # Interleaved, so both see the same machine: started = each customer under its limit;
    # held = one customer far over it (every event past the first `limit` waits).
    import cProfile
    import pstats

    profile = cProfile.Profile()
    for i in range(args.events):
        kinds["uncontrolled"].append(handle(uncontrolled(i, "run")))
        kinds["controlled_started"].append(handle(controlled(i, "run", customers=50)))
        if args.profile:
            profile.enable()
        kinds["controlled_held"].append(handle(controlled(i + limit, "hot", customers=1)))
        profile.disable()
    if args.profile:
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(args.profile)

    def summary(samples: list[tuple[float, dict[str, int]]]) -> dict[str, Any]:
        cpu = sorted(s[0] * 1000 for s in samples)
        calls: Counter[str] = Counter()
        for _, c in samples:
            calls.update(c)
        return {
            "cpu_ms_per_event_median": round(statistics.median(cpu), 3),
            "cpu_ms_per_event_mean": round(statistics.fmean(cpu), 3),
            "state_calls_per_event": {
                k: round(v / len(samples), 3) for k, v in sorted(calls.items())
            },
        }

    out = {name: summary(samples) for name, samples in kinds.items()}
    base = out["uncontrolled"]["cpu_ms_per_event_median"]
    for name in ("controlled_started", "controlled_held"):
        out[name]["x_uncontrolled"] = round(out[name]["cpu_ms_per_event_median"] / base, 2)
    return {
        "events_per_kind": args.events,
        "controlled_flow": declared.model_dump(exclude_none=True),
        **out,
    }


if __name__ == "__main__":
    main()
