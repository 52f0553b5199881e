"""The local run's live view: one row per workflow with its current step, one per output."""

from __future__ import annotations

from rich.console import Console

from devtools.local.view import Snapshot, progress_lines, render


def snap(status: str = "RUNNING") -> Snapshot:
    return Snapshot(
        executions=[
            {
                "workflow": "transcribe_audio",
                "name": "job-1",
                "arn": "arn-1",
                "status": status,
                "operations": [
                    ("fetch_audio_metadata", "ChainedInvokeStarted"),
                    ("fetch_audio_metadata", "ChainedInvokeSucceeded"),
                    ("wait_transcription#1", "WaitStarted"),
                ],
            }
        ],
        outputs={"transcript": ["transcripts/job-1/transcript.json"], "hls": []},
        job=None,
        events_handled=1,
        dead_letters=0,
    )


def test_the_table_shows_the_current_step_and_the_outputs() -> None:
    console = Console(record=True, width=160)
    console.print(render(snap(), 3.2, "s3://b/uploads/a.mp3"))
    text = console.export_text()
    assert "workflow transcribe_audio" in text
    assert "1 done, now: wait_transcription#1 (WaitStarted)" in text
    assert "output transcript" in text and "ready" in text
    assert "output hls" in text and "waiting" in text


def test_lines_mode_reports_each_step_once_and_the_end() -> None:
    lines = progress_lines(snap("SUCCEEDED"))
    assert lines[0] == "workflow transcribe_audio started (job-1)"
    assert "workflow transcribe_audio: wait_transcription#1 WaitStarted" in lines
    assert "workflow transcribe_audio SUCCEEDED" in lines
    assert "output transcript: transcripts/job-1/transcript.json" in lines


def test_a_run_is_complete_only_when_every_workflow_succeeded_and_every_output_is_there() -> None:
    s = snap("SUCCEEDED")
    assert not s.complete
    assert not s.failed
    assert snap("FAILED").failed
