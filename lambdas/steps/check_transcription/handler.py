"""Step check_transcription: one status poll of a Transcribe job (the workflow waits between).

COMPLETED returns where the transcript is; FAILED is a business error carrying Transcribe's
reason; anything else means "not yet".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from lambdas.common.runtime import clients, require, step_handler
from lambdas.common.s3io import parse_s3_uri
from sluice.errors import BusinessError


def check(payload: Mapping[str, Any]) -> dict[str, Any]:
    (name,) = require(payload, "transcription_job")
    try:
        job = clients("transcribe").get_transcription_job(TranscriptionJobName=name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "BadRequestException":
            raise BusinessError(f"transcription job {name} not found", code="no_such_job") from exc
        raise
    job = job["TranscriptionJob"]
    status = job["TranscriptionJobStatus"]
    if status == "FAILED":
        reason = job.get("FailureReason", "no reason given")
        raise BusinessError(
            f"transcription job {name} failed: {reason}", code="transcription_failed"
        )
    if status != "COMPLETED":
        return {"transcription_job": name, "status": status, "done": False}
    bucket, key = parse_s3_uri(job["Transcript"]["TranscriptFileUri"])
    return {
        "transcription_job": name,
        "status": status,
        "done": True,
        "transcript_bucket": bucket,
        "transcript_key": key,
        "language": job.get("LanguageCode"),
    }


handler = step_handler("check_transcription")(check)
