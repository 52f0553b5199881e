"""Step check_transcription: one status poll of a Transcribe job (the workflow waits between).

COMPLETED returns where the transcript is; FAILED is a business error carrying Transcribe's
reason; anything else means "not yet".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.transcribe import Job, Transcribe
from lambdas.common import aws
from lambdas.common.runtime import require, step_handler
from sluice.errors import BusinessError


def poll(name: str, *, transcribe: Transcribe) -> Job:
    """The job's state; a business error when it failed or completed without a transcript."""
    job = transcribe.job(name)
    if job.status == "FAILED":
        reason = job.failure_reason or "no reason given"
        raise BusinessError(
            f"transcription job {name} failed: {reason}", code="transcription_failed"
        )
    if job.status == "COMPLETED" and job.transcript is None:
        raise BusinessError(
            f"transcription job {name} completed without a transcript", code="bad_transcript_uri"
        )
    return job


def check(payload: Mapping[str, Any]) -> dict[str, Any]:
    (name,) = require(payload, "transcription_job")
    job = poll(name, transcribe=aws.transcribe())
    if job.transcript is None or job.status != "COMPLETED":
        return {"transcription_job": name, "status": job.status, "done": False}
    return {
        "transcription_job": name,
        "status": job.status,
        "done": True,
        "transcript_bucket": job.transcript.bucket,
        "transcript_key": job.transcript.key,
        "language": job.language,
    }


handler = step_handler("check_transcription")(check)
