"""`make local`'s entry point end to end: an upload becomes a transcript, captions, HLS renditions
and vectors in the local bucket, through the real worker, workflows, steps and tasks process."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from devtools.local.resources import BUCKET
from tests.conftest import ROOT

TRANSCRIBE_STEPS = [
    "claim_job",
    "fetch_audio_metadata",
    "start_transcription",
    "check_transcription#1",
    "parse_save_transcription",
    "notify_user",
]


@pytest.fixture(scope="module")
def local_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One run of `python -m devtools.local` (what `make local` runs), with its JSON report."""
    workdir = tmp_path_factory.mktemp("local")
    report = workdir / "report.json"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "devtools.local", "--view", "lines", "--timeout", "240"),
            *("--report", str(report), "--workdir", str(workdir)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert report.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(report.read_text())
    assert "error" not in result, f"{result['error']}\n{proc.stderr[-4000:]}"
    return proc, result


@pytest.mark.slow
def test_the_job_completes_and_the_run_exits_0(local_run) -> None:
    proc, report = local_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["complete"] is True
    assert "Sluice local run: COMPLETE" in proc.stdout


@pytest.mark.slow
def test_the_upload_alone_started_the_pipeline_and_every_workflow_succeeded(local_run) -> None:
    _, report = local_run
    statuses = {e["workflow"]: e["status"] for e in report["executions"]}
    assert statuses == {
        "transcribe_audio": "SUCCEEDED",
        "transcode_audio": "SUCCEEDED",
        "embed_transcript": "SUCCEEDED",
    }
    assert report["job"]["event_name"] == "media/uploaded"
    assert report["job"]["source"] == {"bucket": BUCKET, "key": "uploads/sermon.mp3"}
    # And the fan-in join saw both branches end and sent media/ready (issue 13)
    assert report["job"]["branch_transcode_audio"] == "succeeded"
    assert report["job"]["branch_embed_transcript"] == "succeeded"
    assert report["job"]["media_status"] == "ready"
    assert report["job"]["media_event_id"] == f"ready-{report['job']['job_id']}"


@pytest.mark.slow
def test_the_transcription_ran_its_steps_in_order(local_run) -> None:
    _, report = local_run
    ops = next(e for e in report["executions"] if e["workflow"] == "transcribe_audio")["operations"]
    assert [op for op in ops if op in TRANSCRIBE_STEPS] == TRANSCRIBE_STEPS
    assert ops.index("wait_transcription#1") < ops.index("check_transcription#1")


@pytest.mark.slow
def test_transcript_captions_renditions_and_vectors_are_in_the_bucket(local_run) -> None:
    _, report = local_run
    job_id = report["job"]["job_id"]
    outputs = report["outputs"]
    assert outputs["transcript"] == [f"transcripts/{job_id}/transcript.json"]
    assert outputs["captions"] == [f"transcripts/{job_id}/captions.vtt"]
    assert f"hls/{job_id}/master.m3u8" in outputs["hls"]
    assert len([k for k in outputs["hls"] if k.endswith("/index.m3u8")]) >= 2  # two bitrates
    assert any(k.startswith(f"embeddings/{job_id}/") for k in outputs["vectors"])
    assert report["job"]["status"] == "COMPLETED" and report["job"]["word_count"] > 0


@pytest.mark.slow
def test_nothing_was_dead_lettered(local_run) -> None:
    _, report = local_run
    assert report["dead_letters"] == 0


@pytest.mark.slow
def test_the_view_shows_each_step_as_it_happens(local_run) -> None:
    proc, _ = local_run
    lines = proc.stdout.splitlines()
    first = {
        step: next(i for i, line in enumerate(lines) if f": {step} " in line)
        for step in TRANSCRIBE_STEPS
    }
    assert sorted(first, key=first.__getitem__) == TRANSCRIBE_STEPS


@pytest.mark.slow
def test_the_scheduler_ran_on_a_private_broker_and_holds_one_token_per_task(local_run) -> None:
    # rabbitmq-server is a test dependency (.ci/run installs it): without it this fails, and the
    # report's not_run says why.
    _, report = local_run
    assert report["not_run"] == []
    assert report["scheduler"]["tokens"] == {"heartbeat": [1, 0]}
