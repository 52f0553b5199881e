"""Step parse_save_transcription: Transcribe's JSON -> transcript JSON, text and WebVTT captions
in the media bucket, and the job record completed in the jobs table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from adapters import transcribe
from adapters.jobs import JobsTable, now_iso
from adapters.s3 import S3Location, Storage
from lambdas.common import aws
from lambdas.common.runtime import env, require, step_handler
from lambdas.steps.parse_save_transcription import transcript
from sluice.catalog import TRANSCRIPTS_PREFIX

OUTPUT_PREFIX = TRANSCRIPTS_PREFIX


def output_keys(job_id: str) -> dict[str, str]:
    base = f"{OUTPUT_PREFIX}{job_id}/"
    return {
        "transcript": base + "transcript.json",
        "text": base + "transcript.txt",
        "captions": base + "captions.vtt",
    }


@dataclass(frozen=True)
class Saved:
    job_id: str
    outputs: dict[str, str]  # transcript, text, captions: s3:// URIs
    word_count: int
    segment_count: int
    paragraph_count: int


def save_transcript(
    job_id: str,
    source_transcript: S3Location,
    *,
    storage: Storage,
    jobs: JobsTable,
    media_bucket: str,
    language: str | None = None,
    source: Mapping[str, Any] | None = None,
) -> Saved:
    """Read Transcribe's output, write the transcript, text and captions under the job's prefix
    in `media_bucket`, and mark the job COMPLETED with them."""
    raw = storage.read(source_transcript, missing="missing_transcript")
    words = transcribe.words(transcribe.document(raw))
    segs = transcript.segments(words)
    paras = transcript.paragraphs(segs)
    result_doc = {
        "job_id": job_id,
        "source": dict(source or {}),
        "language": language,
        "duration_s": words[-1].end,
        "word_count": len(words),
        "paragraphs": paras,
        "segments": segs,
    }
    keys = output_keys(job_id)
    bodies = {
        "transcript": (json.dumps(result_doc, ensure_ascii=False), "application/json"),
        "text": (transcript.plain_text(paras), "text/plain; charset=utf-8"),
        "captions": (transcript.webvtt(segs), "text/vtt; charset=utf-8"),
    }
    outputs = {}
    for name, (body, content_type) in bodies.items():
        target = S3Location(media_bucket, keys[name])
        storage.put(target, body.encode(), content_type)
        outputs[name] = target.uri
    jobs.update(
        job_id,
        status="COMPLETED",
        outputs=outputs,
        word_count=len(words),
        segment_count=len(segs),
        language=language,
        completed_at=now_iso(),
    )
    return Saved(job_id, outputs, len(words), len(segs), len(paras))


def parse_save(payload: Mapping[str, Any]) -> dict[str, Any]:
    job_id, bucket, key = require(payload, "job_id", "transcript_bucket", "transcript_key")
    saved = save_transcript(
        job_id,
        S3Location(bucket, key),
        storage=aws.storage(),
        jobs=aws.jobs(),
        media_bucket=env("media_bucket"),
        language=payload.get("language"),
        source=payload.get("source") or {},
    )
    return asdict(saved)


handler = step_handler("parse_save_transcription")(parse_save)
