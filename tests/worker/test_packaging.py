"""The EB application bundle is exactly what CDK uploads, and every Procfile process runs from it.

The wheelhouse (`make wheelhouse`, part of `make setup-dev`) holds the worker's pinned
requirements, so these tests install them with --no-index into a fresh venv: they never reach
PyPI. Each process starts from the bundle's root as on EB: its PATH has only the fresh venv and
the system, no PYTHONPATH, nothing from this checkout. (tests/infra/test_bundles.py lists the
bundle's files.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from devtools.local.processes import procfile
from devtools.ports import free_port
from sluice.settings import TasksSettings, WebSettings
from stacks.worker_env import worker_bundle
from tests.conftest import ROOT
from tests.worker.conftest import start_web, stop_web
from tests.worker.helpers import post

WHEELHOUSE = ROOT / "build" / "wheelhouse"
REGION = "eu-west-1"


def test_the_bundle_has_what_eb_reads_at_its_root_and_both_packages():
    bundle = worker_bundle()
    for name in (
        "Procfile",
        "requirements.txt",
        "cron.yaml",
        ".ebextensions/scaling.config",
        ".platform/nginx/conf.d/sqsd.conf",
        "worker/app.py",
        "worker/gunicorn.conf.py",
        "sluice/envelope.py",
    ):
        assert (bundle / name).is_file(), name
    assert not list(bundle.rglob("__pycache__"))
    assert not (bundle / "tests").exists()


@dataclass
class Installed:
    """A copy of the bundle (as EB unpacks the zip) and a fresh venv with its requirements."""

    app: Path
    python: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": f"{self.python.parent}:/usr/bin:/bin",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "packaging",
            "AWS_SECRET_ACCESS_KEY": "packaging",
            "AWS_EC2_METADATA_DISABLED": "true",
            **extra,
        }

    def start(self, process: str, env: dict[str, str]) -> subprocess.Popen[str]:
        """The Procfile line of `process`, run by a shell from the bundle root, as on EB."""
        command = procfile(process, self.app / "Procfile")
        assert command is not None, f"the bundle's Procfile has no {process} process"
        return subprocess.Popen(  # noqa: S602 - the Procfile line is a shell command, as on EB
            f"exec {command}",
            shell=True,
            cwd=self.app,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    # Given the bundle CDK uploads, and a fresh venv with only the bundle's requirements
    assert (WHEELHOUSE / ".done").is_file(), "run `make wheelhouse` (part of make setup-dev)"
    tmp = tmp_path_factory.mktemp("packaging")
    # (a copy: running it must not write into the staged asset)
    app = tmp / "app"
    shutil.copytree(worker_bundle(), app)
    venv.create(tmp / "venv", with_pip=True)
    python = tmp / "venv" / "bin" / "python"
    pip = subprocess.run(
        [
            *(str(python), "-m", "pip", "install", "-q", "--no-index"),
            *("--find-links", str(WHEELHOUSE), "-r", "requirements.txt"),
        ],
        cwd=app,
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, (
        f"{pip.stderr}\n(run `make wheelhouse` after changing worker/requirements.txt)"
    )
    return Installed(app, python)


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM, as EB stops a Procfile process; (exit status, output)."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate(timeout=10)
    return process.returncode, out


@pytest.mark.slow
def test_the_web_process_answers_health_from_the_bundle(installed: Installed, tmp_path: Path):
    # When the Procfile's web command (gunicorn with worker/gunicorn.conf.py) starts
    env = installed.env(
        PORT=str(free_port()),
        WEB_CONCURRENCY="1",
        **WebSettings.render(
            env="packaging",
            events_dlq_url="https://sqs.eu-west-1.amazonaws.com/123456789012/dlq",
        ),
    )
    web = start_web(
        installed.app,
        env,
        tmp_path / "web.log",
        procfile=installed.app / "Procfile",
        python=str(installed.python),
    )
    try:
        # Then it answers 200 on /health
        status, body = post(web.url, b"", method="GET", path="/health", headers={})
        assert (status, body) == (200, {"status": "ok", "env": "packaging"})
    finally:
        stop_web(web)


@pytest.mark.slow
def test_the_bundles_cron_yaml_is_what_its_scheduler_generates(installed: Installed):
    # When the scheduler's module, run from the bundle, prints the registry's cron.yaml
    out = subprocess.run(
        [str(installed.python), "-m", "worker.scheduler", "--cron-yaml"],
        cwd=installed.app,
        env=installed.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # Then it is the cron.yaml EB reads at the bundle's root
    assert out.stdout == (installed.app / "cron.yaml").read_text()


@pytest.mark.slow
def test_the_scheduler_process_idles_without_a_broker_and_stops_on_sigterm(installed: Installed):
    scheduler = installed.start("scheduler", installed.env())
    time.sleep(3)
    assert scheduler.poll() is None, scheduler.communicate()[0]
    status, out = stop(scheduler)
    assert status == 0, out
    assert "no broker configured" in out


@pytest.fixture
def tasks_queue() -> Iterator[tuple[str, str, str]]:
    """moto's SQS on loopback: (endpoint, tasks queue URL, its DLQ's URL; 2 receives)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
    dlq = sqs.create_queue(QueueName=f"packaging-tasks-dlq-{port}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    url = sqs.create_queue(
        QueueName=f"packaging-tasks-{port}",
        Attributes={"RedrivePolicy": f'{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"2"}}'},
    )["QueueUrl"]
    try:
        yield endpoint, url, dlq
    finally:
        server.stop()


@pytest.mark.slow
def test_the_tasks_process_consumes_its_queue_from_the_bundle(installed: Installed, tasks_queue):
    # Given a task nobody can parse (no callback to fail) on the tasks queue
    endpoint, url, dlq = tasks_queue
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
    sqs.send_message(QueueUrl=url, MessageBody="not a task")
    # When the Procfile's tasks process runs from the bundle
    tasks = installed.start(
        "tasks",
        installed.env(
            AWS_ENDPOINT_URL=endpoint,
            **TasksSettings.render(queue_url=url, receive_wait_s=1, grace_s=2),
            TMPDIR=str(installed.app.parent),
        ),
    )
    try:
        # Then it receives it, hands it back and the redrive policy dead-letters it
        deadline = time.monotonic() + 60
        while not sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=1).get("Messages"):
            assert tasks.poll() is None, tasks.communicate()[0]
            assert time.monotonic() < deadline, "the task never reached the DLQ"
    finally:
        status, out = stop(tasks)
    # and it stops cleanly on SIGTERM
    assert status == 0, out
    assert "poison task" in out


@pytest.mark.slow
def test_the_heavy_steps_load_their_model_vocabulary_and_ffmpeg_from_the_bundle(
    installed: Installed,
):
    check = (
        "from worker.heavy.embed import Embedder, VOCAB\n"
        "from worker.heavy.transcode import ffmpeg_exe\n"
        "import os\n"
        "assert VOCAB.is_file() and os.access(ffmpeg_exe(), os.X_OK)\n"
        "print(len(Embedder(threads=1).embed(['a sermon about forgiveness'])[0]))\n"
    )
    out = subprocess.run(
        [str(installed.python), "-c", check],
        cwd=installed.app,
        env=installed.env(HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["384"]
