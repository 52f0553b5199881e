"""What each step Lambda and each heavy task takes and gives back: the typed contract between
the workflows that invoke a step or send a task and the step or the tasks process (and between
a workflow and its failure handler).

The step wrapper (`lambdas/common/runtime.py` `step_handler`) checks every payload against its
step's input model before the step's code sees it, and every result against its output model
before the workflow does: a payload that does not fit fails the step as a business error naming
the step and the field (`bad_input`), never as a KeyError deep in the step; a result that does
not fit is a bug of the step, reported as such. A heavy task's data is checked before it is
sent (lambdas/common/heavy_task.py) and by the tasks process before it runs (worker/tasks.py),
its result before it is reported. tests/unit/test_step_contracts.py checks that every declared
step and every task has its models.

Fields a workflow passes to every step (`job_id`, `correlation_id`) are in `StepInput`. Unknown
fields are refused: a workflow and its step cannot drift apart silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sluice.errors import BusinessError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepInput(_Strict):
    """What every workflow tells every step: the job it works for and the log's correlation id."""

    job_id: str | None = None
    correlation_id: str | None = None


class _Output(BaseModel):
    """A step's result: these fields at least (a step may say more, e.g. for its logs)."""

    model_config = ConfigDict(extra="allow", frozen=True)


# -- transcribe_audio's steps ---------------------------------------------------------------------


class AudioObject(StepInput):
    """The audio object a step reads: bucket, key and, when versioned, the version."""

    bucket: str = Field(min_length=1)
    key: str = Field(min_length=1)
    version_id: str | None = None
    size: int | None = None


class AudioMetadata(_Output):
    format: str
    duration_s: float
    sample_rate: int
    channels: int
    size: int


class StartTranscription(AudioObject):
    format: str = Field(min_length=1)
    sample_rate: int | None = None
    language: str | None = None


class TranscriptionStarted(_Output):
    transcription_job: str
    status: str
    started: bool


class CheckTranscription(StepInput):
    transcription_job: str = Field(min_length=1)


class TranscriptionStatus(_Output):
    transcription_job: str
    status: str
    done: bool
    transcript_bucket: str | None = None
    transcript_key: str | None = None
    language: str | None = None


class ParseSaveTranscription(StepInput):
    job_id: str = Field(min_length=1)
    transcript_bucket: str = Field(min_length=1)
    transcript_key: str = Field(min_length=1)
    language: str | None = None
    source: dict[str, Any] = Field(default_factory=dict)


class TranscriptSaved(_Output):
    job_id: str
    outputs: dict[str, str]
    word_count: int


class NotifyUser(StepInput):
    job_id: str = Field(min_length=1)
    correlation_id: str = Field(min_length=1)
    source: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)


class UserNotified(_Output):
    notification_id: str
    event_id: str


# -- deliver_webhook's step -----------------------------------------------------------------------


class PostWebhook(StepInput):
    url: str = Field(min_length=1)
    event_id: str = Field(min_length=1)
    event_name: str = Field(min_length=1)
    payload: Any = None


class WebhookPosted(_Output):
    status_code: int


# -- every workflow's failure handler -------------------------------------------------------------


class FailureReport(BaseModel):
    """What a failure handler is told (sluice.workflows.failure_report): the run's job, event
    and why it ended badly. A workflow's own context (e.g. `source`) rides along."""

    model_config = ConfigDict(extra="allow", frozen=True)

    job_id: str = Field(min_length=1)
    correlation_id: str | None = None
    workflow: str = Field(min_length=1)
    event_id: str
    event_name: str
    reason: str
    step: str = Field(min_length=1)
    error_class: str = Field(min_length=1)
    error_type: str = ""
    message: str = ""
    attempts: int = 1


class FailureRecorded(_Output):
    job_id: str
    status: str


# -- heavy tasks (tasks queue -> the worker's tasks process) --------------------------------------


class S3Object(_Strict):
    bucket: str = Field(min_length=1)
    key: str = Field(min_length=1)
    version_id: str | None = None
    size: int | None = None


class S3Prefix(_Strict):
    bucket: str = Field(min_length=1)
    prefix: str = Field(min_length=1)


class Transcode(_Strict):
    """`media/transcode`: the audio object, and where its HLS renditions go."""

    source: S3Object
    output: S3Prefix


class Transcoded(_Output):
    master: str
    duration_s: float | None = None
    renditions: list[dict[str, Any]]


class Embed(_Strict):
    """`media/embed`: the transcript (an s3:// URI or an object), and where its vectors go."""

    transcript: S3Object | str
    output: S3Prefix
    chunk_words: int | None = Field(None, ge=10, le=200)


class Embedded(_Output):
    model: str
    dim: int
    chunks: int
    index: str


# Step -> (input model, output model). Every step Lambda of a declaration is here.
CONTRACTS: Mapping[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "fetch_audio_metadata": (AudioObject, AudioMetadata),
    "start_transcription": (StartTranscription, TranscriptionStarted),
    "check_transcription": (CheckTranscription, TranscriptionStatus),
    "parse_save_transcription": (ParseSaveTranscription, TranscriptSaved),
    "notify_user": (NotifyUser, UserNotified),
    "post_webhook": (PostWebhook, WebhookPosted),
    "on_failure": (FailureReport, FailureRecorded),
    # heavy tasks, by task name (sluice.catalog TRANSCODE_TASK, EMBED_TASK)
    "media/transcode": (Transcode, Transcoded),
    "media/embed": (Embed, Embedded),
}


class ContractError(BusinessError):
    """A payload (`bad_input`) or result (`bad_output`) does not fit its step's contract; the
    message names the field. Retrying cannot help: a business error."""


def _explain(step: str, what: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(payload)"
    message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
    return f"{step} {what}: {field}: {message}"


def check_input(step: str, payload: Mapping[str, Any]) -> None:
    """ContractError naming the field when `payload` does not fit `step`'s input."""
    model, _ = CONTRACTS[step]
    try:
        model.model_validate(dict(payload))
    except ValidationError as exc:
        raise ContractError(_explain(step, "input", exc), code="bad_input") from None


def check_output(step: str, result: Mapping[str, Any]) -> None:
    """ContractError naming the field when `result` does not fit `step`'s output."""
    _, model = CONTRACTS[step]
    try:
        model.model_validate(dict(result))
    except ValidationError as exc:
        raise ContractError(_explain(step, "output", exc), code="bad_output") from None
