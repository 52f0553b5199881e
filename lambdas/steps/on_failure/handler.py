"""Step on_failure: record why a job failed on its job record and notify the user."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lambdas.common import jobs
from lambdas.common.runtime import clients, env, require, step_handler


def record_failure(payload: Mapping[str, Any]) -> dict[str, Any]:
    job_id, step, error_class = require(payload, "job_id", "step", "error_class")
    error = {
        "error_class": error_class,
        "error_type": payload.get("error_type") or "",
        "message": str(payload.get("message") or "")[:2000],
        "step": step,
    }
    jobs.update(job_id, status="FAILED", failed_step=step, error=error, failed_at=jobs.now_iso())
    message = {
        "type": "transcription.failed",
        "job_id": job_id,
        "source": dict(payload.get("source") or {}),
        "error": error,
        "correlation_id": payload.get("correlation_id"),
    }
    published = clients("sns").publish(
        TopicArn=env("NOTIFICATIONS_TOPIC"),
        Subject="Transcription failed",
        Message=json.dumps(message, sort_keys=True),
        MessageAttributes={"type": {"DataType": "String", "StringValue": message["type"]}},
    )
    return {"job_id": job_id, "status": "FAILED", "notification_id": published["MessageId"]}


handler = step_handler("on_failure")(record_failure)
