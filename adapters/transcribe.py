"""Amazon Transcribe: its jobs (started once, polled) and its output document, parsed once for
the parse_save_transcription step and the worker's embedder."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from adapters.errors import code
from adapters.s3 import S3Location, location
from sluice.errors import BusinessError


@dataclass
class Word:
    """A spoken word and when it was spoken (seconds); punctuation is glued to the word before."""

    text: str
    start: float
    end: float


def document(raw: bytes) -> Any:
    """A transcript document's JSON, or a business error (reason `bad_transcript`)."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BusinessError(f"transcript is not JSON: {exc}", code="bad_transcript") from exc


def is_output(doc: Any) -> bool:
    """Whether `doc` looks like Transcribe's output (`results.items`)."""
    results = doc.get("results") if isinstance(doc, Mapping) else None
    return isinstance(results, Mapping) and isinstance(results.get("items"), list)


def words(doc: Any) -> list[Word]:
    """The spoken words of Transcribe's output document, with their times.

    Business errors: not Transcribe's output or a word without times (`bad_transcript`), no
    words at all (`empty_transcript`).
    """
    if not is_output(doc):
        raise BusinessError("not a Transcribe transcript: no results.items", code="bad_transcript")
    out: list[Word] = []
    for item in doc["results"]["items"]:
        if not isinstance(item, Mapping):
            raise BusinessError("a transcript item is not an object", code="bad_transcript")
        alternatives = item.get("alternatives") or [{}]
        content = str(alternatives[0].get("content", ""))
        if item.get("type") == "punctuation":
            if out:
                out[-1].text += content
            continue
        try:
            out.append(Word(content, float(item["start_time"]), float(item["end_time"])))
        except (KeyError, TypeError, ValueError):
            raise BusinessError(
                "a word of the transcript has no times", code="bad_transcript"
            ) from None
    if not out:
        raise BusinessError("the transcript holds no words", code="empty_transcript")
    return out


@dataclass(frozen=True)
class Job:
    """A transcription job as one status poll sees it."""

    name: str
    status: str  # QUEUED | IN_PROGRESS | COMPLETED | FAILED
    failure_reason: str | None = None
    transcript: S3Location | None = None  # where the output is, once COMPLETED
    language: str | None = None

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> Job:
        uri = (job.get("Transcript") or {}).get("TranscriptFileUri")
        return cls(
            name=str(job["TranscriptionJobName"]),
            status=str(job.get("TranscriptionJobStatus", "QUEUED")),
            failure_reason=job.get("FailureReason"),
            transcript=location(uri, what="transcript", code="bad_transcript_uri") if uri else None,
            language=job.get("LanguageCode"),
        )


class Transcribe:
    """Start a transcription job once and poll it, through a Transcribe client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def start(self, request: Mapping[str, Any]) -> tuple[Job, bool]:
        """(the job, whether this call started it): a job of that name already started (by an
        earlier attempt) is returned as it is, never started twice."""
        try:
            answer = self.client.start_transcription_job(**request)
        except ClientError as exc:
            if code(exc) != "ConflictException":
                raise
            return self.job(str(request["TranscriptionJobName"])), False
        return Job.of(answer["TranscriptionJob"]), True

    def job(self, name: str) -> Job:
        """The job's state; a business error (reason `no_such_job`) when there is none."""
        try:
            answer = self.client.get_transcription_job(TranscriptionJobName=name)
        except ClientError as exc:
            if code(exc) == "BadRequestException":  # Transcribe's answer for an unknown name
                raise BusinessError(
                    f"transcription job {name} not found", code="no_such_job"
                ) from exc
            raise
        return Job.of(answer["TranscriptionJob"])
