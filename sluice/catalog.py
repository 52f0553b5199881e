"""Which event starts which durable workflow, and the names everything else derives from."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

WORKFLOW_ALIAS = "live"

TRANSCRIBE_AUDIO = "transcribe_audio"
TRANSCODE_AUDIO = "transcode_audio"
EMBED_TRANSCRIPT = "embed_transcript"
WORKFLOWS = (TRANSCRIBE_AUDIO, TRANSCODE_AUDIO, EMBED_TRANSCRIPT)

# The step handler Lambdas of transcribe_audio (lambdas/steps/<name>/handler.py), in order.
TRANSCRIBE_STEPS = (
    "fetch_audio_metadata",
    "start_transcription",
    "check_transcription",
    "parse_save_transcription",
    "notify_user",
    "on_failure",
)

# Event name -> the workflows it starts (one durable execution each, named after the event id).
ROUTES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "media/uploaded": (TRANSCRIBE_AUDIO,),
        "media/transcription.requested": (TRANSCRIBE_AUDIO,),
        "media/transcription.completed": (TRANSCODE_AUDIO, EMBED_TRANSCRIPT),
        "media/transcode.requested": (TRANSCODE_AUDIO,),
        "media/embedding.requested": (EMBED_TRANSCRIPT,),
    }
)


# Key prefixes of the media bucket: IAM policies (stacks), the lifecycle rule, the steps and the
# tasks all name these. Outputs sit under one prefix per media item (the transcription job id).
UPLOADS_PREFIX = "uploads/"
TRANSCRIPTS_PREFIX = "transcripts/"
TMP_PREFIX = "tmp/"  # expires (lifecycle rule)
TRANSCRIBE_OUTPUT_PREFIX = f"{TMP_PREFIX}transcribe/"  # Transcribe's raw output
HLS_PREFIX = "hls/"
EMBEDDINGS_PREFIX = "embeddings/"
# Dead letters too large for the events DLQ: the worker keeps the body here and sends the DLQ a
# pointer (claim check). The worker may only PutObject under it.
DEAD_LETTER_PREFIX = "dead-letters/"

# Heavy tasks (tasks queue -> the worker's tasks process).
TRANSCODE_TASK = "media/transcode"
EMBED_TASK = "media/embed"


# Stack outputs the operator CLI (`sluice`) reads to find the jobs table and each workflow.
JOBS_TABLE_OUTPUT = "JobsTableName"


def workflow_output(workflow: str) -> str:
    """`transcribe_audio` -> `WorkflowFunctionTranscribeAudio`: the output naming its function."""
    return "WorkflowFunction" + "".join(part.title() for part in workflow.split("_"))


def workflows_for(event_name: str) -> tuple[str, ...]:
    """The workflows `event_name` starts; empty when no workflow handles it."""
    return ROUTES.get(event_name, ())


# The branches `media/transcription.completed` fans out to, and what their join emits once all
# have ended (lambdas/common/join.py): `media/ready`, or `media/failed` naming the failed ones.
FAN_OUT_EVENT = "media/transcription.completed"
MEDIA_READY = "media/ready"
MEDIA_FAILED = "media/failed"
# Events Sluice emits for consumers outside it: valid on the events queue though no workflow
# starts on them (the worker acknowledges them; a route added later starts one).
NOTICES = frozenset({MEDIA_READY, MEDIA_FAILED})


def is_known(event_name: str) -> bool:
    """Whether the events queue takes `event_name`: a workflow handles it, or it is a notice."""
    return bool(workflows_for(event_name)) or event_name in NOTICES
