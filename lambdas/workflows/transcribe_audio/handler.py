"""Durable workflow transcribe_audio: an uploaded sermon becomes a transcript, captions and a
notification.

claim_job -> fetch_audio_metadata -> start_transcription -> (durable wait, check_transcription)*
-> parse_save_transcription -> notify_user; a step that fails for good runs on_failure, then the
execution fails with the step's error. Code outside steps must stay deterministic (replay).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_durable_execution_sdk_python import DurableContext, StepContext
from aws_durable_execution_sdk_python.config import Duration, StepConfig
from aws_durable_execution_sdk_python.retries import RetryStrategyConfig, create_retry_strategy

from adapters.errors import classify
from lambdas.common import aws
from lambdas.common.workflow import (
    StepFailed,
    audio_source,
    durable_handler,
    invoke_step,
    start_workflow,
)
from sluice.catalog import TRANSCRIBE_AUDIO
from sluice.errors import BusinessError, SluiceError, TransientError

WORKFLOW = TRANSCRIBE_AUDIO
STARTED_BY = frozenset({"media/uploaded", "media/transcription.requested"})
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


def transcribe(event: Mapping[str, Any], ctx: DurableContext) -> dict[str, Any]:
    ev, job_id = start_workflow(event, ctx, workflow=WORKFLOW, started_by=STARTED_BY)
    source = audio_source(ev.data)
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
    try:
        meta = invoke_step(ctx, "fetch_audio_metadata", {**common, **source})
        job = invoke_step(
            ctx,
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
            ctx.wait(Duration.from_seconds(delay), name=f"wait_transcription#{i}")
            status = invoke_step(
                ctx,
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
        saved = invoke_step(
            ctx,
            "parse_save_transcription",
            {
                **common,
                "source": source,
                "transcript_bucket": status["transcript_bucket"],
                "transcript_key": status["transcript_key"],
                "language": status.get("language"),
            },
        )
        notified = invoke_step(
            ctx, "notify_user", {**common, "source": source, "outputs": saved["outputs"]}
        )
    except StepFailed as failure:
        invoke_step(ctx, "on_failure", {**common, "source": source, **failure.to_dict()})
        # Failing the execution (after on_failure) is what the DurableExecutionFailed alarm sees.
        raise BusinessError(str(failure), code=f"{failure.step}_failed") from None
    return {
        "job_id": job_id,
        "status": "COMPLETED",
        "duration_s": meta["duration_s"],
        "outputs": saved["outputs"],
        "word_count": saved["word_count"],
        "event_id": notified["event_id"],
    }


handler = durable_handler(transcribe)
