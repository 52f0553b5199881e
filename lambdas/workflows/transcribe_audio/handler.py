"""Durable workflow transcribe_audio: an uploaded sermon becomes a transcript, captions and a
notification.

claim_job -> fetch_audio_metadata -> start_transcription -> (durable wait, check_transcription)*
-> parse_save_transcription -> notify_user. Its events, retries, timeout and failure handler are
declared in workflow.toml beside this file; the wrapper (lambdas/common/workflow.py) runs the
failure handler once whatever ends the run badly. Code outside steps must stay deterministic.
"""

from __future__ import annotations

from typing import Any

from aws_durable_execution_sdk_python import StepContext
from aws_durable_execution_sdk_python.config import Duration, StepConfig
from aws_durable_execution_sdk_python.retries import RetryStrategyConfig, create_retry_strategy

from adapters.errors import classify
from lambdas.common import aws
from lambdas.common.workflow import (
    Run,
    StepFailed,
    audio_source,
    declaration,
    declared_workflow,
)
from sluice.errors import SluiceError, TransientError

DECLARATION = declaration(__file__)
WORKFLOW = DECLARATION.id
# Transcribe takes roughly a quarter of the audio's duration: poll from 15 s, backing off to
# 5 minutes; the number of polls bounds the durable operations one execution uses.
FIRST_POLL_S = 15
MAX_POLL_S = 300
MAX_POLLS = 120

# claim_job runs in the workflow itself: transient DynamoDB errors retried, nothing else.
CLAIM_RETRY = StepConfig(
    retry_strategy=create_retry_strategy(
        RetryStrategyConfig(
            max_attempts=4,
            initial_delay=Duration.from_seconds(2),
            retryable_error_types=[TransientError],
        )
    )
)


def poll_delays() -> list[int]:
    delays, d = [], float(FIRST_POLL_S)
    for _ in range(MAX_POLLS):
        delays.append(int(d))
        d = min(d * 1.5, MAX_POLL_S)
    return delays


def transcribe(run: Run) -> dict[str, Any]:
    ctx, ev, job_id = run.ctx, run.event, run.job_id
    source = audio_source(ev.data)
    run.context["source"] = source
    execution_arn = ctx.state.durable_execution_arn

    def claim(_: StepContext) -> dict[str, Any]:
        try:
            return aws.jobs().claim(
                job_id,
                execution_arn=execution_arn,
                fields={
                    "event_id": ev.id,
                    "event_name": ev.name,
                    "correlation_id": ev.correlation_id,
                    "workflow": WORKFLOW,
                    "source": source,
                },
            )
        except SluiceError:
            raise
        except Exception as exc:
            raise classify(exc) from exc

    claimed = ctx.step(claim, name="claim_job", config=CLAIM_RETRY)
    if not claimed["claimed"]:
        # Another execution owns this event id (e.g. the event came back after the durable
        # history expired): starting the pipeline again would duplicate every side effect.
        ctx.logger.info("duplicate start: the job belongs to another execution")
        return {"job_id": job_id, "status": "DUPLICATE", "owner": claimed.get("owner")}

    common = {"job_id": job_id, "correlation_id": ev.correlation_id}
    meta = run.invoke("fetch_audio_metadata", {**common, **source})
    job = run.invoke(
        "start_transcription",
        {
            **common,
            **source,
            "format": meta["format"],
            "sample_rate": meta.get("sample_rate"),
            "language": ev.data.get("language"),
        },
    )
    status: dict[str, Any] = {"done": False}
    for i, delay in enumerate(poll_delays(), start=1):
        run.wait(delay, f"wait_transcription#{i}")
        status = run.invoke(
            "check_transcription",
            {**common, "transcription_job": job["transcription_job"]},
            name=f"check_transcription#{i}",
        )
        if status.get("done"):
            break
    else:
        raise StepFailed(
            "check_transcription",
            error_class="business",
            error_type="BusinessError",
            message=f"transcription not finished after {MAX_POLLS} polls",
            attempts=MAX_POLLS,
        )
    saved = run.invoke(
        "parse_save_transcription",
        {
            **common,
            "source": source,
            "transcript_bucket": status["transcript_bucket"],
            "transcript_key": status["transcript_key"],
            "language": status.get("language"),
        },
    )
    notified = run.invoke("notify_user", {**common, "source": source, "outputs": saved["outputs"]})
    return {
        "job_id": job_id,
        "status": "COMPLETED",
        "duration_s": meta["duration_s"],
        "outputs": saved["outputs"],
        "word_count": saved["word_count"],
        "event_id": notified["event_id"],
    }


handler = declared_workflow(DECLARATION, transcribe)
