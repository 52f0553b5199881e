"""Heavy steps under test for real: ffmpeg from imageio-ffmpeg, the ONNX model from its wheel,
moto's S3 and SQS, and the durable test runner answering the Lambda callback API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import pytest
from aws_durable_execution_sdk_python.lambda_service import ErrorObject
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.server import ThreadedMotoServer

from devtools.ports import free_port
from lambdas.common.runtime import clients
from sluice.envelope import Task
from sluice.settings import LambdaSettings, TasksSettings
from tests.conftest import ROOT
from tests.heavy import sermon
from tests.lambdas.conftest import COORDINATION_TABLE, create_coordination_table
from worker.heavy.common import Limits, TaskContext
from worker.heavy.transcode import ffmpeg_exe

# The Lambdas' variables, by setting (sluice.settings.LambdaSettings).
LAMBDA_VARS = LambdaSettings.variables()

# The model must load with the hub unreachable: nothing may be fetched at run time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
REGION = "eu-west-1"
BUCKET = "sluice-test-media"


def make_audio(path: Path, seconds: float, *, codec: str = "libmp3lame", freq: int = 440) -> Path:
    """A sine tone of `seconds`, made with the same ffmpeg the worker uses (lavfi source)."""
    subprocess.run(
        [
            ffmpeg_exe(),
            *("-hide_banner", "-nostdin", "-v", "error", "-y", "-f", "lavfi"),
            *("-i", f"sine=frequency={freq}:sample_rate=44100:duration={seconds}"),
            *("-ac", "2", "-c:a", codec, "-b:a", "128k", str(path)),
        ],
        check=True,
        timeout=60,
    )
    return path


def media_duration(path: Path) -> float:
    """What ffmpeg measures by decoding the whole file (or playlist): the `time=` it reaches."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    last = [t for t in proc.stderr.replace("\r", "\n").split("time=")[1:]][-1].split()[0]
    h, m, s = last.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


@dataclass
class Aws:
    s3: Any
    sqs: Any
    bucket: str
    tasks_url: str

    def context(self, **limits: int) -> TaskContext:
        return TaskContext(s3=self.s3, limits=Limits(**limits))

    def keys(self, prefix: str) -> list[str]:
        got = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in got.get("Contents", []))

    def visible(self) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.tasks_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"])

    def in_flight(self) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.tasks_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    with mock_aws():
        clients.reset()
        s3 = boto3.client("s3", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        url = sqs.create_queue(QueueName="sluice-test-tasks")["QueueUrl"]
        monkeypatch.setenv(LAMBDA_VARS["media_bucket"], BUCKET)
        monkeypatch.setenv(LAMBDA_VARS["tasks_queue_url"], url)
        # After media/transcription.completed the branches record their end on the item's join.
        ddb = boto3.client("dynamodb", region_name=REGION)
        create_coordination_table(ddb)
        ddb.create_table(
            TableName="sluice-test-jobs",
            KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        events = sqs.create_queue(QueueName="sluice-test-events")["QueueUrl"]
        monkeypatch.setenv("SLUICE_COORDINATION_TABLE", COORDINATION_TABLE)
        monkeypatch.setenv(LAMBDA_VARS["jobs_table"], "sluice-test-jobs")
        monkeypatch.setenv(LAMBDA_VARS["events_queue_url"], events)
        yield Aws(s3=s3, sqs=sqs, bucket=BUCKET, tasks_url=url)
        clients.reset()


@pytest.fixture(scope="session")
def model() -> Any:
    from worker.heavy.embed import Embedder

    return Embedder(threads=2)


@dataclass
class RunnerCallbacks:
    """Lambda's durable callback API (boto3's method and field names) served by the local test
    runner, so the tasks process talks to a real durable execution. Errors come back as the
    ClientError codes the service uses."""

    runner: Any
    calls: list[tuple[str, str]] = field(default_factory=list)

    def _call(self, op: str, callback_id: str, fn: Any) -> dict[str, Any]:
        self.calls.append((op, callback_id))
        try:
            fn()
        except Exception as exc:  # the runner's ResourceNotFound / conflict exceptions
            raise ClientError(
                {"Error": {"Code": "ResourceNotFoundException", "Message": str(exc)}}, op
            ) from exc
        return {}

    def send_durable_execution_callback_success(
        self, *, CallbackId: str, Result: bytes = b""
    ) -> dict:
        return self._call(
            "success", CallbackId, lambda: self.runner.send_callback_success(CallbackId, Result)
        )

    def send_durable_execution_callback_failure(self, *, CallbackId: str, Error: dict) -> dict:
        return self._call(
            "failure",
            CallbackId,
            lambda: self.runner.send_callback_failure(CallbackId, ErrorObject.from_dict(Error)),
        )

    def send_durable_execution_callback_heartbeat(self, *, CallbackId: str) -> dict:
        return self._call(
            "heartbeat", CallbackId, lambda: self.runner.send_callback_heartbeat(CallbackId)
        )

    def count(self, op: str) -> int:
        return sum(1 for o, _ in self.calls if o == op)


# --- the real tasks process against moto's server and a recording callback API ---------------


@dataclass
class CallbackApi:
    """Records Lambda durable-callback calls: (operation, callback id), and each call's body."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    bodies: list[tuple[str, str, Any]] = field(default_factory=list)
    url: str = ""

    def ops(self, op: str) -> list[str]:
        return [cb for o, cb in self.calls if o == op]

    def failures(self) -> list[Any]:
        """The Error objects of every failure report (ErrorType, ErrorData …)."""
        return [body for o, _, body in self.bodies if o == "fail"]

    def wait_for(self, op: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ops(op):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {op} call within {timeout_s} s: {self.calls}")
            time.sleep(0.05)


def serve_callback_api(*, close_on_report: bool = False) -> tuple[CallbackApi, Any]:
    """A recording callback API on loopback; (api, server). With `close_on_report`, a callback
    that was reported (success or failure) is closed, as Lambda's is: a later call on it gets
    ResourceNotFoundException (404, in botocore's model for these operations)."""
    api = CallbackApi()
    closed: set[str] = set()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # /2025-12-01/durable-execution-callbacks/<id>/<op>
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            parts = self.path.strip("/").split("/")
            # botocore quotes the id in the path ("job-2#2" arrives as "job-2%232")
            op, callback = parts[-1], unquote(parts[-2])
            try:
                doc = json.loads(raw) if raw else None
            except ValueError:
                doc = raw
            with lock:
                gone = close_on_report and callback in closed
                if not gone:
                    api.bodies.append((op, callback, doc))
                    api.calls.append((op, callback))
                    if op in ("succeed", "fail"):
                        closed.add(callback)
            status, headers, body = 200, {}, b"{}"
            if gone:
                status, headers = 404, {"x-amzn-ErrorType": "ResourceNotFoundException"}
                body = b'{"message": "callback closed"}'
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return api, server


@pytest.fixture
def callback_api() -> Iterator[CallbackApi]:
    api, server = serve_callback_api()
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


def start_process(
    moto: Moto, api: CallbackApi, *, tmpdir: Path | None = None, **settings: object
) -> subprocess.Popen:
    """The real tasks process on moto and `api`; `settings` by TasksSettings field name."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_ENDPOINT_URL_LAMBDA": api.url,
        **({"TMPDIR": str(tmpdir)} if tmpdir is not None else {}),
        **TasksSettings.render(
            **{
                "queue_url": moto.queue_url,
                "concurrency": 1,
                "receive_wait_s": 1,
                "keepalive_s": 0.5,
                "embed_threads": 1,
                **settings,
            }
        ),
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
