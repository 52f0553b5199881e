"""The worker under test for real: gunicorn serving worker.app, moto's SQS server for the queues,
and a local Lambda Invoke endpoint with durable-execution naming semantics."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from devtools.lambda_fake import LocalLambda
from devtools.lambda_fake import serve as serve_lambda
from devtools.local.processes import procfile as procfile_command
from devtools.ports import bindable, free_port
from sluice import naming
from sluice.settings import WebSettings
from tests.conftest import ROOT

REGION = "eu-west-1"
ACCOUNT = "123456789012"
# Two of the catalog's workflows are deployed; embed_transcript is deliberately missing, to
# exercise a routed workflow without an alias.
ALIASES = {
    "transcribe_audio": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:transcribe-audio:live",
    "transcode_audio": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:transcode-audio:live",
}
MAX_BODY = 8 * 1024
# The media bucket the worker keeps dead letters too large for the DLQ in (claim check).
CLAIM_BUCKET = "sluice-test-media"


def attr(message: dict[str, Any], name: str) -> str | None:
    value = message.get("MessageAttributes", {}).get(name)
    return None if value is None else str(value["StringValue"])


@dataclass
class Queues:
    sqs: Any
    url: str
    dlq_url: str
    dead: list[dict[str, Any]] = field(default_factory=list)

    def dead_letters(self, msgid: str) -> list[dict[str, Any]]:
        """DLQ messages the worker sent for sqsd message `msgid` (tests share the DLQ)."""
        self.dead.extend(self.drain(self.dlq_url))
        return [m for m in self.dead if attr(m, "sqsd_msgid") == msgid]

    def drain(self, url: str) -> list[dict[str, Any]]:
        """Every message now on `url` (received and deleted)."""
        out: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                MessageAttributeNames=["All"],
                VisibilityTimeout=30,
            ).get("Messages", [])
            if not got:
                return out
            for m in got:
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            out.extend(got)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def make_queues(endpoint: str, name: str, *, max_receive_count: int = 3) -> Queues:
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    url = sqs.create_queue(
        QueueName=name,
        Attributes={
            "RedrivePolicy": (
                f'{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{max_receive_count}"}}'
            )
        },
    )["QueueUrl"]
    return Queues(sqs, url, dlq_url)


@pytest.fixture(scope="session")
def queues(moto_endpoint: str) -> Queues:
    return make_queues(moto_endpoint, "sluice-test-events")


@pytest.fixture(scope="session")
def media_bucket(moto_endpoint: str) -> Any:
    """moto's S3 client with the claim-check bucket created."""
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket=CLAIM_BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return s3


@pytest.fixture(scope="session")
def lambda_fake() -> Iterator[tuple[LocalLambda, str]]:
    state = LocalLambda()
    server = serve_lambda(state)
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@dataclass
class Worker:
    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


def worker_env(
    *, port: int, lambda_url: str, moto_url: str, dlq_url: str, claim_bucket: str = ""
) -> dict[str, str]:

    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        **WebSettings.render(
            web_threads=4,
            env="test",
            events_dlq_url=dlq_url,
            max_body_bytes=MAX_BODY,
            invoke_timeout_s=5,
        ),
        **naming.alias_variables(ALIASES),
        "AWS_ENDPOINT_URL_LAMBDA": lambda_url,
        "AWS_ENDPOINT_URL_SQS": moto_url,
        "AWS_ENDPOINT_URL_S3": moto_url,
        **WebSettings.render(claim_check_bucket=claim_bucket),
    }


def wait_healthy(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30
) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"web process exited {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:  # noqa: S310 - http only
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"web process not healthy in {timeout} s:\n{log.read_text()}")


def start_web(
    cwd: Path,
    env: dict[str, str],
    log: Path,
    *,
    procfile: Path,
    python: str = sys.executable,
    port_wait_s: float = 35.0,
) -> Worker:
    """Start the Procfile's `web` command as EB would (from the bundle root `cwd`).

    The port must be free: were another server listening there (a port taken while this one was
    down for a restart), its answer to /health would pass for this process's, while gunicorn
    retried its bind and gave up, and the requests meant for the worker went to that server.
    A stopped web process's workers may still hold it for a while (a graceful stop finishes
    their requests first), so the port gets `port_wait_s` to come free."""
    port, end = int(env["PORT"]), time.monotonic() + port_wait_s
    while not bindable(port, reuse_address=True):
        if time.monotonic() > end:
            raise RuntimeError(f"port {port} is taken: another server listens there")
        time.sleep(0.1)
    web = procfile_command("web", procfile)
    assert web is not None, f"{procfile} has no web process"
    bindir = str(Path(python).parent)
    env = {**env, "PATH": f"{bindir}{os.pathsep}{env.get('PATH', '')}"}
    out = log.open("wb")
    process = subprocess.Popen(  # noqa: S602 - the Procfile line is a shell command, as on EB
        web,
        shell=True,
        cwd=cwd,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        # Its own process group: the shell's children (gunicorn and its workers) stop with it.
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{env['PORT']}"
    try:
        wait_healthy(url, process, log)
    except RuntimeError:
        _signal_group(process, signal.SIGKILL)
        raise
    return Worker(url, log, process)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def stop_web(worker: Worker) -> None:
    _signal_group(worker.process, signal.SIGTERM)
    try:
        worker.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        _signal_group(worker.process, signal.SIGKILL)
        worker.process.wait(timeout=15)


@pytest.fixture(scope="session")
def worker(
    tmp_path_factory: pytest.TempPathFactory,
    lambda_fake: tuple[LocalLambda, str],
    moto_endpoint: str,
    queues: Queues,
    media_bucket: Any,
) -> Iterator[Worker]:
    port = free_port()
    env = worker_env(
        port=port,
        lambda_url=lambda_fake[1],
        moto_url=moto_endpoint,
        dlq_url=queues.dlq_url,
        claim_bucket=CLAIM_BUCKET,
    )
    # The repository root stands in for the bundle root: same Procfile, same module paths.
    proc = start_web(
        ROOT, env, tmp_path_factory.mktemp("web") / "web.log", procfile=ROOT / "worker" / "Procfile"
    )
    yield proc
    stop_web(proc)
