"""Durable workflow embed_transcript: a transcript becomes searchable vectors (RAG).

The embedding runs on the worker (a sentence model in RAM): the workflow sends it to the tasks
queue and waits for the callback without compute. Started by `media/transcription.completed`
(data: job_id, outputs.transcript) and by `media/embedding.requested` (data: transcript, an
s3:// URI or {bucket, key}, and optionally job_id).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lambdas.common.heavy_task import run_heavy_task
from lambdas.common.join import branch_joined
from lambdas.common.runtime import env
from lambdas.common.workflow import Run, declaration, declared_workflow
from sluice.catalog import EMBED_TASK, EMBEDDINGS_PREFIX
from sluice.errors import BusinessError

DECLARATION = declaration(__file__)
WORKFLOW = DECLARATION.id


def transcript_of(data: Mapping[str, Any]) -> Any:
    """Where the event says the transcript is (outputs.transcript, or transcript)."""
    nested = data.get("outputs")
    outputs: Mapping[str, Any] = nested if isinstance(nested, Mapping) else {}
    where = outputs.get("transcript") or data.get("transcript")
    if not where:
        raise BusinessError("event data names no transcript", code="missing_transcript")
    return where


def embed(run: Run) -> dict[str, Any]:
    ev, job_id = run.event, run.job_id
    media_id = str(ev.data.get("job_id") or job_id)
    run.context["media_id"] = media_id
    # After the fan-out, the media item's join learns how this branch ended (media/ready).
    with branch_joined(
        run.ctx,
        started_by=ev.name,
        media_id=media_id,
        branch=WORKFLOW,
        correlation_id=ev.correlation_id,
    ):
        output = {"bucket": env("media_bucket"), "prefix": f"{EMBEDDINGS_PREFIX}{media_id}/"}
        result = run_heavy_task(
            run.ctx,
            task=EMBED_TASK,
            data={"transcript": transcript_of(ev.data), "output": output},
            correlation_id=ev.correlation_id,
            seed=job_id,
            name="embed",
            run=run,
        )
    return {
        "job_id": job_id,
        "media_id": media_id,
        "status": "COMPLETED",
        "index": result["index"],
        "chunks": result["chunks"],
        "model": result["model"],
    }


handler = declared_workflow(DECLARATION, embed)
