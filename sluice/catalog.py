"""Which event starts which durable workflow, and the names everything else derives from."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from sluice import workflows

WORKFLOW_ALIAS = "live"

# Every event name the platform knows: who sends it and what it asks for. A workflow declaration
# (lambdas/workflows/<name>/workflow.toml) may only be started by one of these, so a misspelt
# trigger fails synth instead of never firing.
EVENTS: Mapping[str, str] = MappingProxyType(
    {
        "media/uploaded": "the worker, from the media bucket's uploads/ notification: a new audio",
        "media/transcription.requested": "a producer: transcribe this audio (bucket, key)",
        "media/transcription.completed": "notify_user, when a transcript is saved",
        "media/transcode.requested": "a producer: transcode this audio to HLS (bucket, key)",
        "media/embedding.requested": "a producer: embed this transcript (transcript)",
        "webhook/requested": "a producer: POST data.payload to data.url for data.customer_id",
        "media/deleted": "a producer: the object data.bucket/data.key is gone; runs on it stop",
        "customer/deleted": "a producer: customer data.customer_id is gone; its deliveries stop",
        "media/ready": "the media pipeline's join: every branch of an item succeeded",
        "media/failed": "the media pipeline's join: a branch failed (data.failed_branches)",
    }
)

# The workflows, from their declarations (sluice.workflows): the repository's lambdas/workflows/
# in a checkout; in a deployed bundle, the `workflows.json` the stacks staged beside this module.
WORKFLOWS_ROOT = Path(__file__).resolve().parent.parent / "lambdas" / "workflows"
ROUTES_FILE = Path(__file__).resolve().parent / "workflows.json"


def _declared() -> tuple[
    tuple[str, ...], dict[str, tuple[str, ...]], workflows.Cancels, dict[str, workflows.Flow]
]:
    if ROUTES_FILE.is_file():
        text = ROUTES_FILE.read_text()
        return (*workflows.read_routes_document(text), workflows.read_flow_document(text))
    if WORKFLOWS_ROOT.is_dir():
        declared = workflows.load(WORKFLOWS_ROOT, known_events=EVENTS)
        return (
            tuple(declared),
            workflows.routes(declared),
            workflows.cancels(declared),
            workflows.flows(declared),
        )
    return (), {}, {}, {}  # the CLI installed without the repository: no routes to check against


_WORKFLOWS, _ROUTES, _CANCELS, _FLOWS = _declared()
# False only where neither the declarations nor a staged routes document exist (`pip install .`
# outside a checkout): the producer then checks event names against EVENTS instead.
ROUTES_KNOWN = ROUTES_FILE.is_file() or WORKFLOWS_ROOT.is_dir()
WORKFLOWS: tuple[str, ...] = _WORKFLOWS
# Event name -> the workflows it starts (one durable execution each, named after the event id).
ROUTES: Mapping[str, tuple[str, ...]] = MappingProxyType(_ROUTES)
# Event name -> (workflow, path in the event) of the runs it cancels (declared `cancel_on`).
CANCELS: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType(_CANCELS)
# Workflow -> its flow control (docs/flow-control.md), for those that declare any.
FLOWS: Mapping[str, workflows.Flow] = MappingProxyType(_FLOWS)


# Key prefixes of the media bucket: IAM policies (stacks), the lifecycle rule, the steps and the
# tasks all name these. Outputs sit under one prefix per media item (the transcription job id).
UPLOADS_PREFIX = "uploads/"
TRANSCRIPTS_PREFIX = "transcripts/"
TMP_PREFIX = "tmp/"  # expires (lifecycle rule)
TRANSCRIBE_OUTPUT_PREFIX = f"{TMP_PREFIX}transcribe/"  # Transcribe's raw output
HLS_PREFIX = "hls/"
# Under each transcode's output prefix: the manifests of its durable chunks while it runs
# (worker/heavy/transcode.py), so a resumed transcode skips them; deleted when it completes.
TRANSCODE_RESUME_DIR = ".resume/"
EMBEDDINGS_PREFIX = "embeddings/"
# Dead letters too large for the events DLQ: the worker keeps the body here and sends the DLQ a
# pointer (claim check). The worker may only PutObject under it.
DEAD_LETTER_PREFIX = "dead-letters/"

# Heavy tasks (tasks queue -> the worker's tasks process).
TRANSCODE_TASK = "media/transcode"
EMBED_TASK = "media/embed"


# Stack outputs the operator CLI (`sluice`) reads to find the jobs table and each workflow.
JOBS_TABLE_OUTPUT = "JobsTableName"


WORKFLOW_OUTPUT_PREFIX = "WorkflowFunction"


def workflow_output(workflow: str) -> str:
    """`transcribe_audio` -> `WorkflowFunctionTranscribeAudio`: the output naming its function."""
    return WORKFLOW_OUTPUT_PREFIX + "".join(part.title() for part in workflow.split("_"))


FAILURE_HANDLER_OUTPUT_PREFIX = "FailureHandler"


def failure_handler_output(workflow: str) -> str:
    """`transcribe_audio` -> `FailureHandlerTranscribeAudio`: the output naming the function of
    the workflow's declared failure handler."""
    return FAILURE_HANDLER_OUTPUT_PREFIX + workflow_output(workflow)[len(WORKFLOW_OUTPUT_PREFIX) :]


def workflows_in_outputs(
    outputs: Mapping[str, str], *, prefix: str = WORKFLOW_OUTPUT_PREFIX
) -> dict[str, str]:
    """Workflow name -> function, for every `workflow_output` (or, with the failure handlers'
    prefix, `failure_handler_output`) among a stack's `outputs`: the deployed workflows,
    whichever are declared in this checkout."""
    found: dict[str, str] = {}
    for key, value in outputs.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            camel = key[len(prefix) :]
            found[re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()] = value
    return dict(sorted(found.items()))


def workflows_for(event_name: str) -> tuple[str, ...]:
    """The workflows `event_name` starts; empty when no workflow handles it."""
    return ROUTES.get(event_name, ())


def cancels_for(event_name: str) -> tuple[tuple[str, str], ...]:
    """(workflow, path of the value in the event) of the runs `event_name` cancels (declared
    `cancel_on`); empty when it cancels none."""
    return CANCELS.get(event_name, ())


# The branches `media/transcription.completed` fans out to, and what their join emits once all
# have ended (lambdas/common/join.py): `media/ready`, or `media/failed` naming the failed ones.
FAN_OUT_EVENT = "media/transcription.completed"
MEDIA_READY = "media/ready"
MEDIA_FAILED = "media/failed"
# Events Sluice emits for consumers outside it: valid on the events queue though no workflow
# starts on them (the worker acknowledges them; a route added later starts one).
NOTICES = frozenset({MEDIA_READY, MEDIA_FAILED})
# The worker's own wake-up for events a throttle holds back (worker/flow.py): it sends it to the
# events queue with a delay and handles it when sqsd brings it back; no workflow starts on it.
FLOW_WAKE = "sluice/flow.wake"


def is_known(event_name: str) -> bool:
    """Whether the events queue takes `event_name`: a declared workflow takes it (or, without the
    declarations at hand, it is a known event), or it is a notice Sluice emits."""
    if event_name in NOTICES or event_name == FLOW_WAKE:
        return True
    if not ROUTES_KNOWN:
        return event_name in EVENTS
    return bool(workflows_for(event_name) or cancels_for(event_name))
