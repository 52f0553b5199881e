"""Step start_transcription: start the Amazon Transcribe job of a workflow, exactly once.

The job name derives from the job id (the durable execution name), so a retry or a replay
finds the job it started before instead of starting a second one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adapters.s3 import S3Location
from adapters.transcribe import Job, Transcribe
from lambdas.common import aws
from lambdas.common.runtime import env, logger, require, settings, step_handler
from sluice.catalog import TRANSCRIBE_OUTPUT_PREFIX

OUTPUT_PREFIX = TRANSCRIBE_OUTPUT_PREFIX
# Transcribe's sample-rate bounds; outside them it picks the rate itself.
SAMPLE_RATES = range(8000, 48001)


def job_name(job_id: str) -> str:
    return f"sluice-{job_id}"


def output_key(job_id: str) -> str:
    return f"{OUTPUT_PREFIX}{job_id}.json"


def start_job(
    job_id: str,
    media: S3Location,
    media_format: str,
    *,
    transcribe: Transcribe,
    output_bucket: str,
    sample_rate: Any = None,
    language: str | None = None,
    kms_key: str | None = None,
) -> tuple[Job, bool]:
    """(the job, whether this call started it): output to `output_bucket` under OUTPUT_PREFIX;
    without a language, Transcribe identifies it."""
    request: dict[str, Any] = {
        "TranscriptionJobName": job_name(job_id),
        "Media": {"MediaFileUri": f"s3://{media.bucket}/{media.key}"},
        "MediaFormat": media_format,
        "OutputBucketName": output_bucket,
        "OutputKey": output_key(job_id),
    }
    if sample_rate in SAMPLE_RATES:
        request["MediaSampleRateHertz"] = int(sample_rate)
    if language:
        request["LanguageCode"] = language
    else:
        request["IdentifyLanguage"] = True
    if kms_key:
        request["OutputEncryptionKMSKeyId"] = kms_key
    return transcribe.start(request)


def start(payload: Mapping[str, Any]) -> dict[str, Any]:
    job_id, bucket, key, media_format = require(payload, "job_id", "bucket", "key", "format")
    job, started = start_job(
        job_id,
        S3Location(bucket, key),
        media_format,
        transcribe=aws.transcribe(),
        output_bucket=env("media_bucket"),
        sample_rate=payload.get("sample_rate"),
        language=payload.get("language") or settings().transcribe_language or None,
        kms_key=settings().media_key_arn or None,
    )
    logger.info("transcription job", extra={"job": job.name, "started": started})
    return {"transcription_job": job.name, "status": job.status, "started": started}


handler = step_handler("start_transcription")(start)
