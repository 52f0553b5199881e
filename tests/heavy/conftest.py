"""Heavy steps under test for real: ffmpeg from imageio-ffmpeg, the ONNX model from its wheel,
moto's S3 and SQS, and the durable test runner answering the Lambda callback API."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_durable_execution_sdk_python.lambda_service import ErrorObject
from botocore.exceptions import ClientError
from moto import mock_aws

from lambdas.common.runtime import clients
from worker.heavy.common import Limits, TaskContext
from worker.heavy.transcode import ffmpeg_exe

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
        monkeypatch.setenv("MEDIA_BUCKET", BUCKET)
        monkeypatch.setenv("TASKS_QUEUE_URL", url)
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
