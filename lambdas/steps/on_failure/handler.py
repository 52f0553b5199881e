"""Step on_failure: record why a job failed on its job record and notify the user."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.jobs import JobsTable, now_iso
from adapters.notifications import Notifications
from lambdas.common import aws
from lambdas.common.runtime import require, step_handler


def fail_job(
    job_id: str,
    error: Mapping[str, str],
    *,
    jobs: JobsTable,
    notifications: Notifications,
    source: Mapping[str, Any] | None = None,
    correlation_id: str | None = None,
) -> str:
    """Mark the job FAILED with `error` (class, type, message, step); the notification's id."""
    jobs.update(
        job_id, status="FAILED", failed_step=error["step"], error=dict(error), failed_at=now_iso()
    )
    return notifications.publish(
        {
            "type": "transcription.failed",
            "job_id": job_id,
            "source": dict(source or {}),
            "error": dict(error),
            "correlation_id": correlation_id,
        },
        subject="Transcription failed",
    )


def record_failure(payload: Mapping[str, Any]) -> dict[str, Any]:
    job_id, step, error_class = require(payload, "job_id", "step", "error_class")
    error = {
        "error_class": error_class,
        "error_type": payload.get("error_type") or "",
        "message": str(payload.get("message") or "")[:2000],
        "step": step,
    }
    notification_id = fail_job(
        job_id,
        error,
        jobs=aws.jobs(),
        notifications=aws.notifications(),
        source=payload.get("source"),
        correlation_id=payload.get("correlation_id"),
    )
    return {"job_id": job_id, "status": "FAILED", "notification_id": notification_id}


handler = step_handler("on_failure")(record_failure)
