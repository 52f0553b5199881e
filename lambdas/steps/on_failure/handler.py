"""Step on_failure, every declared workflow's default failure handler: record why a job failed on
its job record and notify the user. The workflow wrapper (lambdas/common/workflow.py) runs it
once per run that ends badly, with the reason: step_failed, error (raised outside steps) or
timeout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.jobs import JobsTable, now_iso
from adapters.notifications import Notifications
from lambdas.common import aws
from lambdas.common.runtime import require, step_handler

TRANSCRIBE = "transcribe_audio"
# workflow -> (notification type, subject); others: `<workflow>.failed`.
NOTICES = {TRANSCRIBE: ("transcription.failed", "Transcription failed")}


def fail_job(
    job_id: str,
    error: Mapping[str, str],
    *,
    jobs: JobsTable,
    notifications: Notifications,
    source: Mapping[str, Any] | None = None,
    correlation_id: str | None = None,
    workflow: str = TRANSCRIBE,
) -> str:
    """Mark the job FAILED with `error` (class, type, message, step); the notification's id."""
    fields: dict[str, Any] = {"workflow": workflow} if workflow != TRANSCRIBE else {}
    jobs.update(
        job_id,
        status="FAILED",
        failed_step=error["step"],
        error=dict(error),
        failed_at=now_iso(),
        **fields,
    )
    kind, subject = NOTICES.get(workflow, (f"{workflow}.failed", f"Job failed ({workflow})"))
    return notifications.publish(
        {
            "type": kind,
            "job_id": job_id,
            "workflow": workflow,
            "source": dict(source or {}),
            "error": dict(error),
            "correlation_id": correlation_id,
        },
        subject=subject,
    )


def record_failure(payload: Mapping[str, Any]) -> dict[str, Any]:
    job_id, step, error_class = require(payload, "job_id", "step", "error_class")
    error = {
        "error_class": error_class,
        "error_type": payload.get("error_type") or "",
        "message": str(payload.get("message") or "")[:2000],
        "step": step,
    }
    if payload.get("reason"):
        error["reason"] = str(payload["reason"])
    notification_id = fail_job(
        job_id,
        error,
        jobs=aws.jobs(),
        notifications=aws.notifications(),
        source=payload.get("source"),
        correlation_id=payload.get("correlation_id"),
        workflow=str(payload.get("workflow") or TRANSCRIBE),
    )
    return {"job_id": job_id, "status": "FAILED", "notification_id": notification_id}


handler = step_handler("on_failure")(record_failure)
