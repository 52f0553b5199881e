"""Step parse_save_transcription: Transcribe's JSON -> transcript JSON, text and WebVTT captions
in the media bucket, and the job record completed in the jobs table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from lambdas.common import jobs
from lambdas.common.runtime import clients, env, require, step_handler
from lambdas.steps.parse_save_transcription import transcript
from sluice.catalog import TRANSCRIPTS_PREFIX
from sluice.errors import BusinessError

OUTPUT_PREFIX = TRANSCRIPTS_PREFIX


def output_keys(job_id: str) -> dict[str, str]:
    base = f"{OUTPUT_PREFIX}{job_id}/"
    return {
        "transcript": base + "transcript.json",
        "text": base + "transcript.txt",
        "captions": base + "captions.vtt",
    }


def parse_save(payload: Mapping[str, Any]) -> dict[str, Any]:
    job_id, src_bucket, src_key = require(payload, "job_id", "transcript_bucket", "transcript_key")
    media = env("MEDIA_BUCKET")
    s3 = clients("s3")
    try:
        raw = s3.get_object(Bucket=src_bucket, Key=src_key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise BusinessError(
                f"transcript s3://{src_bucket}/{src_key} does not exist", code="missing_transcript"
            ) from exc
        raise
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BusinessError(f"transcript is not JSON: {exc}", code="bad_transcript") from exc
    ws = transcript.words(doc)
    segs = transcript.segments(ws)
    paras = transcript.paragraphs(segs)
    source = payload.get("source") or {}
    result_doc = {
        "job_id": job_id,
        "source": source,
        "language": payload.get("language"),
        "duration_s": ws[-1].end,
        "word_count": len(ws),
        "paragraphs": paras,
        "segments": segs,
    }
    keys = output_keys(job_id)
    bodies = {
        "transcript": (json.dumps(result_doc, ensure_ascii=False), "application/json"),
        "text": (transcript.plain_text(paras), "text/plain; charset=utf-8"),
        "captions": (transcript.webvtt(segs), "text/vtt; charset=utf-8"),
    }
    for name, (body, content_type) in bodies.items():
        s3.put_object(Bucket=media, Key=keys[name], Body=body.encode(), ContentType=content_type)
    outputs = {name: f"s3://{media}/{key}" for name, key in keys.items()}
    jobs.update(
        job_id,
        status="COMPLETED",
        outputs=outputs,
        word_count=len(ws),
        segment_count=len(segs),
        language=payload.get("language"),
        completed_at=jobs.now_iso(),
    )
    return {
        "job_id": job_id,
        "outputs": outputs,
        "word_count": len(ws),
        "segment_count": len(segs),
        "paragraph_count": len(paras),
    }


handler = step_handler("parse_save_transcription")(parse_save)
