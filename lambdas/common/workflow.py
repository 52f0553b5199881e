"""Durable workflow helpers: the handler wrapper, and one retry loop (`retry_durably`) for every
durable operation a workflow retries: step Lambdas (`invoke_step`) and heavy tasks
(lambdas/common/heavy_task.py).

Transient failures are retried with exponential backoff and jitter, waiting durably (no compute)
between attempts; business failures are not retried. Jitter is derived from the execution, the
operation and the attempt rather than a random draw, so replays take the same path.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aws_durable_execution_sdk_python import (
    DurableContext,
    DurableOperationError,
    durable_execution,
)
from aws_durable_execution_sdk_python.config import Duration

from adapters.s3 import location
from lambdas.common.runtime import error_class, logger, set_correlation_id, tracer
from sluice.catalog import WORKFLOW_ALIAS
from sluice.envelope import Event, event_from_dict, execution_name
from sluice.errors import BusinessError


def start_workflow(
    event: Mapping[str, Any], ctx: DurableContext, *, workflow: str, started_by: frozenset[str]
) -> tuple[Event, str]:
    """The event a workflow was started with and its job id (the durable execution name).

    Refuses events the workflow does not handle, and puts the event's correlation id on every
    log line of the execution.
    """
    # The worker starts workflows with Event.start_payload (no `ts`); older starts carry one.
    ev = event_from_dict(dict(event), ts_required=False)
    if ev.name not in started_by:
        raise BusinessError(f"{workflow} does not handle {ev.name}", code="unknown_event")
    job_id = execution_name(ev.id)
    set_correlation_id(ev.correlation_id, job_id=job_id, workflow=workflow)
    ctx.set_logger(logger)  # type: ignore[arg-type]
    return ev, job_id


Workflow = Callable[[Mapping[str, Any], DurableContext], dict[str, Any]]


def durable_handler(workflow: Workflow) -> Callable[[Any, Any], Any]:
    """The Lambda handler of `workflow`: a traced durable execution."""
    return tracer.capture_lambda_handler(durable_execution(workflow), capture_response=False)


def audio_source(data: Mapping[str, Any]) -> dict[str, Any]:
    """The audio object `data` names: bucket, key and, when given, version_id."""
    return location(data, what="event data (the audio)", code="bad_event").to_dict()


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how far apart, a step is attempted on transient failures."""

    max_attempts: int = 4
    initial_delay_s: int = 2
    backoff_rate: float = 2.0
    max_delay_s: int = 60

    def delay_s(self, attempt: int, *, seed: str) -> int:
        """The wait after failed attempt `attempt` (1-based): half fixed, half jitter, >= 1 s."""
        base = min(self.initial_delay_s * self.backoff_rate ** (attempt - 1), self.max_delay_s)
        fraction = (
            int(hashlib.sha256(f"{seed}#{attempt}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        )
        return max(1, round(base / 2 + fraction * base / 2))


DEFAULT_RETRY = RetryPolicy()


class StepFailed(Exception):
    """A step failed for good: a business error, or transient errors beyond the retry budget."""

    def __init__(
        self, step: str, *, error_class: str, error_type: str, message: str, attempts: int
    ):
        super().__init__(f"{step} failed ({error_class}, {attempts} attempts): {message}")
        self.step = step
        self.error_class = error_class
        self.error_type = error_type
        self.message = message
        self.attempts = attempts

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "error_class": self.error_class,
            "error_type": self.error_type,
            "message": self.message,
            "attempts": self.attempts,
        }


def step_target(step: str) -> str:
    """The qualified function a step is invoked through (durable invokes need a version or alias).

    The stack sets STEP_<NAME> to the step's alias ARN; without it, `<step>:live` (tests).
    """
    return os.environ.get(f"STEP_{step.upper()}") or f"{step}:{WORKFLOW_ALIAS}"


T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """Why one attempt failed: `business` (final) or `transient` (retried)."""

    error_class: str
    error_type: str
    message: str


def retry_durably(
    ctx: DurableContext,
    attempt: Callable[[str], T],
    *,
    op: str,
    what: str,
    failure: Callable[[Exception], Failure | None],
    policy: RetryPolicy,
    seed: str,
) -> T:
    """`attempt(name)` until it returns, retrying transient failures after a durable backoff.

    Each attempt is its own durable operation named `op`, `op#2`, ... (so a replay returns the
    recorded outcome of every finished attempt without running it again), each wait
    `op#<n> backoff`. `failure` describes an exception (None: not an attempt's failure, raised
    as it is). A business failure, or a transient one on the last attempt, raises StepFailed
    naming `what`.
    """
    for n in range(1, policy.max_attempts + 1):
        try:
            return attempt(op if n == 1 else f"{op}#{n}")
        except Exception as exc:
            failed = failure(exc)
            if failed is None:
                raise
        if failed.error_class == "business" or n == policy.max_attempts:
            raise StepFailed(
                what,
                error_class=failed.error_class,
                error_type=failed.error_type,
                message=failed.message,
                attempts=n,
            ) from None
        delay = policy.delay_s(n, seed=f"{seed}/{op}")
        ctx.logger.warning(
            "attempt failed, retrying",
            extra={"step": what, "attempt": n, "delay_s": delay, "error": failed.message},
        )
        ctx.wait(Duration.from_seconds(delay), name=f"{op}#{n} backoff")
    raise AssertionError("unreachable")  # pragma: no cover


def invoke_failure(exc: Exception) -> Failure | None:
    """A failed step invoke, classified by the error type the step reported."""
    if not isinstance(exc, DurableOperationError):
        return None
    return Failure(
        error_class(exc.error_type),
        (exc.error_type or "").rsplit(".", 1)[-1],
        exc.message or str(exc),
    )


def invoke_step(
    ctx: DurableContext,
    step: str,
    payload: Mapping[str, Any],
    *,
    name: str | None = None,
    policy: RetryPolicy = DEFAULT_RETRY,
) -> dict[str, Any]:
    """Invoke step handler `step` durably; retry transient failures; raise StepFailed otherwise."""

    def attempt(op: str) -> dict[str, Any]:
        result: Any = ctx.invoke(step_target(step), dict(payload), name=op)
        return dict(result or {})

    return retry_durably(
        ctx,
        attempt,
        op=name or step,
        what=step,
        failure=invoke_failure,
        policy=policy,
        seed=str(payload.get("job_id", "")),
    )
