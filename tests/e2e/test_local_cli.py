"""`make local-up` with the `sluice` CLI pointed at it (the exports it prints)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from devtools.local.resources import BUCKET
from sluice_cli import cli
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], str]]:
    """A running `python -m devtools.local --up`: the CLI's environment and the first job's id."""
    workdir = tmp_path_factory.mktemp("local-up")
    out = (workdir / "out.txt").open("w")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "devtools.local", "--up", "--view", "lines"),
            *("--workdir", str(workdir)),
        ],
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        text = ""
        deadline = time.monotonic() + 300
        while "sluice dlq peek" not in text:
            assert proc.poll() is None and time.monotonic() < deadline, text[-4000:]
            time.sleep(0.5)
            text = Path(out.name).read_text()
        exports = dict(re.findall(r"^  export (\w+)='(.*)'$", text, re.MULTILINE))
        job = re.search(r"workflow transcribe_audio started \((\S+)\)", text)
        assert job, text
        yield exports, job.group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def sluice(exports: dict[str, str], monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    for key, value in exports.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_jobs_show_gives_the_record_and_every_durable_step(local_up, monkeypatch) -> None:
    exports, job = local_up
    output = sluice(exports, monkeypatch, "jobs", "show", job)
    assert "status           COMPLETED" in output
    assert "status  SUCCEEDED" in output
    for step in ("fetch_audio_metadata", "start_transcription", "parse_save_transcription"):
        assert f"ChainedInvokeSucceeded {step}" in output


def test_a_sent_event_starts_a_job_the_cli_can_follow(local_up, monkeypatch) -> None:
    exports, _ = local_up
    data = json.dumps({"bucket": BUCKET, "key": "uploads/sermon.mp3"})
    sluice(
        exports, monkeypatch, "send", "media/transcode.requested", "--data", data, "--id", "op-1"
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        output = sluice(exports, monkeypatch, "jobs", "show", "op-1")
        if "status  SUCCEEDED" in output:
            break
        time.sleep(1)
    assert "CallbackSucceeded" in output and "status  SUCCEEDED" in output


def test_the_dlq_is_empty_and_peek_consumes_nothing(local_up, monkeypatch) -> None:
    exports, _ = local_up
    output = sluice(exports, monkeypatch, "dlq", "peek", "--queue", "events")
    assert "0 message(s) in Sluice-local-events-dlq" in output


def test_the_cli_environment_names_only_loopback_endpoints(local_up) -> None:
    exports, _ = local_up
    for key in ("SLUICE_ENDPOINT_URL", "AWS_ENDPOINT_URL_LAMBDA"):
        assert exports[key].startswith("http://127.0.0.1:")
    assert os.environ.get("AWS_PROFILE") is None
