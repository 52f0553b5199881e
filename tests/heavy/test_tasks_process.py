"""The real tasks process (`python -m worker.tasks`, as the Procfile runs it) against moto's
server: it dies by SIGKILL and the task comes back; on SIGTERM it finishes or hands back.

The Lambda callback API is a local HTTP endpoint that records what the process sends
(AWS_ENDPOINT_URL_LAMBDA), so the process talks to it through boto3 exactly as to Lambda.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from sluice.envelope import Task
from tests.conftest import ROOT
from tests.heavy import sermon

REGION = "eu-west-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class CallbackApi:
    """Records Lambda durable-callback calls: (operation, callback id)."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    def ops(self, op: str) -> list[str]:
        return [cb for o, cb in self.calls if o == op]

    def wait_for(self, op: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ops(op):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {op} call within {timeout_s} s: {self.calls}")
            time.sleep(0.05)


@pytest.fixture
def callback_api() -> Iterator[CallbackApi]:
    api = CallbackApi()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # /2025-12-01/durable-execution-callbacks/<id>/<op>
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            parts = self.path.strip("/").split("/")
            api.calls.append((parts[-1], parts[-2]))
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield api
    server.shutdown()


@dataclass
class Moto:
    endpoint: str
    s3: Any
    sqs: Any
    queue_url: str
    bucket: str

    def counts(self) -> tuple[int, int]:
        """(visible, in flight) messages on the tasks queue."""
        a = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(a["ApproximateNumberOfMessages"]), int(
            a["ApproximateNumberOfMessagesNotVisible"]
        )


@pytest.fixture
def moto_server() -> Iterator[Moto]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=endpoint)
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
    # moto's state outlives one server in this process: names are unique per server.
    bucket = f"sluice-proc-{port}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    url = sqs.create_queue(QueueName=f"tasks-{port}")["QueueUrl"]
    try:
        yield Moto(endpoint=endpoint, s3=s3, sqs=sqs, queue_url=url, bucket=bucket)
    finally:
        server.stop()


def put_embed_task(moto: Moto, *, segments: int, cb: str = "cb-proc") -> None:
    doc = sermon.document()
    base = doc["segments"]
    doc["segments"] = [
        {**base[i % len(base)], "start": 4.0 * i, "end": 4.0 * i + 3.5} for i in range(segments)
    ]
    moto.s3.put_object(
        Bucket=moto.bucket, Key="transcripts/p/transcript.json", Body=json.dumps(doc)
    )
    task = Task(
        name="media/embed",
        callback_id=cb,
        data={
            "transcript": f"s3://{moto.bucket}/transcripts/p/transcript.json",
            "output": {"bucket": moto.bucket, "prefix": "embeddings/p/"},
        },
        correlation_id="corr-proc",
    )
    moto.sqs.send_message(QueueUrl=moto.queue_url, MessageBody=task.to_json())


def start_process(moto: Moto, api: CallbackApi, **settings: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_ENDPOINT_URL_LAMBDA": api.url,
        "SLUICE_TASKS_QUEUE_URL": moto.queue_url,
        "SLUICE_TASKS_CONCURRENCY": "1",
        "SLUICE_TASKS_RECEIVE_WAIT_S": "1",
        "SLUICE_TASKS_KEEPALIVE_S": "0.5",
        "SLUICE_EMBED_THREADS": "1",
        **settings,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "worker.tasks"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_counts(moto: Moto, expected: tuple[int, int], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while moto.counts() != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"queue is {moto.counts()}, expected {expected}")
        time.sleep(0.1)


@pytest.mark.slow
def test_a_killed_process_leaves_its_task_to_reappear(
    moto_server: Moto, callback_api: CallbackApi
) -> None:
    # Given the tasks process working on a long embedding (its first heartbeat has gone out)
    put_embed_task(moto_server, segments=4000)
    proc = start_process(moto_server, callback_api, SLUICE_TASKS_VISIBILITY_S="3")
    try:
        callback_api.wait_for("heartbeat")
        assert moto_server.counts() == (0, 1)
        # When the process is killed outright
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    # Then nothing was reported or deleted, and the task is back on the queue for another worker
    assert callback_api.ops("succeed") == [] and callback_api.ops("fail") == []
    wait_counts(moto_server, (1, 0))


@pytest.mark.slow
def test_sigterm_lets_a_short_task_finish_report_and_delete(
    moto_server: Moto, callback_api: CallbackApi
) -> None:
    # Given the process working on a short embedding
    put_embed_task(moto_server, segments=12)
    proc = start_process(moto_server, callback_api, SLUICE_TASKS_GRACE_S="60")
    try:
        callback_api.wait_for("heartbeat")
        # When it is told to stop (a deploy)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        proc.kill()
    # Then it finished the task, reported success, deleted the message and exited cleanly
    assert code == 0
    assert callback_api.ops("succeed") == ["cb-proc"]
    assert moto_server.counts() == (0, 0)


@pytest.mark.slow
def test_sigterm_hands_back_a_task_that_outlives_the_grace_period(
    moto_server: Moto, callback_api: CallbackApi
) -> None:
    # Given the process working on a long embedding, with a 1 s grace period
    put_embed_task(moto_server, segments=4000)
    proc = start_process(moto_server, callback_api, SLUICE_TASKS_GRACE_S="1")
    try:
        callback_api.wait_for("heartbeat")
        # When it is told to stop
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        proc.kill()
    # Then it exits within the grace period, reporting nothing, and the task is visible again
    # at once (not after the 15 min visibility timeout)
    assert code == 0
    assert callback_api.ops("succeed") == [] and callback_api.ops("fail") == []
    assert moto_server.counts() == (1, 0)
