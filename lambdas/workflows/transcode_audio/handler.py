"""Durable workflow transcode_audio: an audio object becomes HLS renditions for streaming.

The transcode runs on the worker (ffmpeg, minutes of CPU): the workflow sends it to the tasks
queue and waits for the callback without compute. Started by `media/transcription.completed`
(data: job_id, source) and by `media/transcode.requested` (data: bucket, key or source).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lambdas.common.heavy_task import run_heavy_task
from lambdas.common.join import branch_joined
from lambdas.common.runtime import env
from lambdas.common.workflow import Run, audio_source, declaration, declared_workflow
from sluice.catalog import HLS_PREFIX, TRANSCODE_TASK

DECLARATION = declaration(__file__)
WORKFLOW = DECLARATION.id


def source_of(data: Mapping[str, Any]) -> dict[str, Any]:
    """The audio object an event names (`source: {bucket, key}` or top-level bucket/key)."""
    nested = data.get("source")
    return audio_source(nested if isinstance(nested, Mapping) else data)


def transcode(run: Run) -> dict[str, Any]:
    ev, job_id = run.event, run.job_id
    # Outputs sit under the media item's id: the transcription job's, when this follows one.
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
        source = source_of(ev.data)
        run.context["source"] = source
        output = {"bucket": env("media_bucket"), "prefix": f"{HLS_PREFIX}{media_id}/"}
        result = run_heavy_task(
            run.ctx,
            task=TRANSCODE_TASK,
            data={"source": source, "output": output},
            correlation_id=ev.correlation_id,
            seed=job_id,
            name="transcode",
            run=run,
        )
    return {
        "job_id": job_id,
        "media_id": media_id,
        "status": "COMPLETED",
        "master": result["master"],
        "duration_s": result.get("duration_s"),
        "renditions": [r["name"] for r in result.get("renditions", [])],
    }


handler = declared_workflow(DECLARATION, transcode)
