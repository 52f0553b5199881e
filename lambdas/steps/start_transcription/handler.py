"""Step start_transcription: start the Amazon Transcribe job of a workflow, exactly once.

The job name derives from the job id (the durable execution name), so a retry or a replay
finds the job it started before instead of starting a second one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from lambdas.common.runtime import clients, env, logger, require, step_handler
from sluice.catalog import TRANSCRIBE_OUTPUT_PREFIX

OUTPUT_PREFIX = TRANSCRIBE_OUTPUT_PREFIX
# Transcribe's sample-rate bounds; outside them it picks the rate itself.
SAMPLE_RATES = range(8000, 48001)


def job_name(job_id: str) -> str:
    return f"sluice-{job_id}"


def output_key(job_id: str) -> str:
    return f"{OUTPUT_PREFIX}{job_id}.json"


def start(payload: Mapping[str, Any]) -> dict[str, Any]:
    job_id, bucket, key, media_format = require(payload, "job_id", "bucket", "key", "format")
    transcribe = clients("transcribe")
    name = job_name(job_id)
    request: dict[str, Any] = {
        "TranscriptionJobName": name,
        "Media": {"MediaFileUri": f"s3://{bucket}/{key}"},
        "MediaFormat": media_format,
        "OutputBucketName": env("MEDIA_BUCKET"),
        "OutputKey": output_key(job_id),
    }
    if payload.get("sample_rate") in SAMPLE_RATES:
        request["MediaSampleRateHertz"] = int(payload["sample_rate"])
    language = payload.get("language") or os.environ.get("TRANSCRIBE_LANGUAGE")
    if language:
        request["LanguageCode"] = language
    else:
        request["IdentifyLanguage"] = True
    if os.environ.get("MEDIA_KEY_ARN"):
        request["OutputEncryptionKMSKeyId"] = os.environ["MEDIA_KEY_ARN"]
    try:
        job = transcribe.start_transcription_job(**request)["TranscriptionJob"]
        started = True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConflictException":
            raise
        # Started by an earlier attempt of this same workflow: carry on with that job.
        job = transcribe.get_transcription_job(TranscriptionJobName=name)["TranscriptionJob"]
        started = False
    logger.info("transcription job", extra={"job": name, "started": started})
    return {
        "transcription_job": name,
        "status": job.get("TranscriptionJobStatus", "QUEUED"),
        "started": started,
    }


handler = step_handler("start_transcription")(start)
