"""The fan-in join of a media item: each branch started by `media/transcription.completed`
records how it ended; the last one to end emits `media/ready` (or `media/failed` naming the
failed branches) exactly once (adapters/joins.py, docs/concurrency.md).

`branch_joined` wraps a branch's work: success records `succeeded`, any failure `failed` (then
the failure goes on). Both are one durable step, so replays record nothing twice; the record is
conditional, so a duplicate completion event (a second execution of the branch) changes nothing;
the outcome event carries a deterministic id, so a re-send after a crash is the same event.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aws_durable_execution_sdk_python import DurableContext, StepContext
from aws_durable_execution_sdk_python.config import Duration, StepConfig
from aws_durable_execution_sdk_python.retries import RetryStrategyConfig, create_retry_strategy

from adapters.joins import FAILED, SUCCEEDED, Joins, JoinState
from lambdas.common import aws
from lambdas.common.runtime import clients, env
from sluice.catalog import FAN_OUT_EVENT, MEDIA_FAILED, MEDIA_READY, workflows_for
from sluice.envelope import Event
from sluice.producer import send_event
from sluice.settings import LambdaSettings

# DynamoDB and SQS calls: retried inside the step (the step is idempotent end to end).
JOIN_RETRY = StepConfig(
    retry_strategy=create_retry_strategy(
        RetryStrategyConfig(max_attempts=6, initial_delay=Duration.from_seconds(2))
    )
)


def expected_branches() -> tuple[str, ...]:
    """The workflows the fan-out event starts: every one must end before the item is ready."""
    return workflows_for(FAN_OUT_EVENT)


def outcome_event(state: JoinState, *, correlation_id: str) -> Event:
    return Event(
        name=MEDIA_FAILED if state.failed else MEDIA_READY,
        id=state.event_id,
        data={"job_id": state.media_id, "branches": dict(state.branches), "failed": state.failed},
        correlation_id=correlation_id,
    )


def record_branch(
    media_id: str, branch: str, outcome: str, *, correlation_id: str
) -> dict[str, Any]:
    """Record `branch`'s outcome, mirror it on the item's job record, and, if this completes the
    join and this branch wins the emit, send the outcome event and mark it sent."""
    joins = Joins(clients("dynamodb"), LambdaSettings.read().require("coordination_table"))
    state = joins.record(
        media_id, branch, outcome, expected=expected_branches(), now=int(time.time())
    )
    jobs = aws.jobs()
    jobs.update(media_id, **{f"branch_{branch}": state.branches.get(branch, outcome)})
    if not state.complete:
        return {"join": "running"}
    if not joins.claim_emit(media_id, branch):
        return {"join": state.outcome, "emitted_by": "another branch"}
    event = outcome_event(state, correlation_id=correlation_id)
    send_event(clients("sqs"), env("events_queue_url"), event)
    joins.mark_emitted(media_id, event.id)
    jobs.update(
        media_id, media_status=state.outcome, media_event_id=event.id, failed_branches=state.failed
    )
    return {"join": state.outcome, "event_id": event.id}


def join_step(
    ctx: DurableContext, *, media_id: str, branch: str, outcome: str, correlation_id: str
) -> dict[str, Any]:
    def step(_: StepContext) -> dict[str, Any]:
        return record_branch(media_id, branch, outcome, correlation_id=correlation_id)

    result: dict[str, Any] = ctx.step(step, name=f"join {branch}", config=JOIN_RETRY)
    return result


@contextmanager
def branch_joined(
    ctx: DurableContext, *, started_by: str, media_id: str, branch: str, correlation_id: str
) -> Iterator[None]:
    """Record the branch's outcome on the media item's join when the body ends (only for runs
    the fan-out event started; a standalone request has no join). A suspension (the SDK's
    BaseException) passes through: the branch has not ended."""
    if started_by != FAN_OUT_EVENT:
        yield
        return
    try:
        yield
    except Exception:
        join_step(
            ctx, media_id=media_id, branch=branch, outcome=FAILED, correlation_id=correlation_id
        )
        raise
    join_step(
        ctx, media_id=media_id, branch=branch, outcome=SUCCEEDED, correlation_id=correlation_id
    )
