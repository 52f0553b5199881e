"""Durable workflow helpers: the handler wrapper (`declared_workflow`: the declaration, the
failure handler, the declared timeout, the concurrency hook), and one retry loop (`retry_durably`) for every
durable operation a workflow retries: step Lambdas (`invoke_step`) and heavy tasks
(lambdas/common/heavy_task.py).

Transient failures are retried with exponential backoff and jitter, waiting durably (no compute)
between attempts; business failures are not retried. Jitter is derived from the execution, the
operation and the attempt rather than a random draw, so replays take the same path.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from aws_durable_execution_sdk_python import (
    DurableContext,
    DurableOperationError,
    durable_execution,
)
from aws_durable_execution_sdk_python.config import Duration
from aws_durable_execution_sdk_python.exceptions import UnrecoverableError

from adapters.s3 import location
from lambdas.common import concurrency
from lambdas.common.runtime import clients, env, error_class, logger, set_correlation_id, tracer
from sluice import naming, workflows
from sluice.catalog import EVENTS, WORKFLOW_ALIAS
from sluice.envelope import Event, event_from_dict, execution_name
from sluice.errors import BusinessError, SluiceError
from sluice.run_control import CANCELLED, CancelKeys, Registered, RunRecords, cancel_scope

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

    The stack sets `sluice.naming.step_variable(step)` to the step's alias ARN; without it,
    `<step>:live` (tests).
    """
    return os.environ.get(naming.step_variable(step)) or f"{step}:{WORKFLOW_ALIAS}"


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
    wait: Callable[[int, str], None] | None = None,
) -> T:
    """`attempt(name)` until it returns, retrying transient failures after a durable backoff.

    Each attempt is its own durable operation named `op`, `op#2`, ... (so a replay returns the
    recorded outcome of every finished attempt without running it again), each wait
    `op#<n> backoff`. `failure` describes an exception (None: not an attempt's failure, raised
    as it is). A business failure, or a transient one on the last attempt, raises StepFailed
    naming `what`. `wait(seconds, name)` waits between attempts (default: ctx.wait; a declared
    workflow's `Run.wait`, which keeps within the declared timeout).
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
        if wait is None:
            ctx.wait(Duration.from_seconds(delay), name=f"{op}#{n} backoff")
        else:
            wait(delay, f"{op}#{n} backoff")
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
    wait: Callable[[int, str], None] | None = None,
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
        wait=wait,
    )


# --- declared workflows ---------------------------------------------------------------------

# The wall clock the declared timeout is measured with (tests move it).
clock: Callable[[], float] = time.time


def declaration(handler_file: str) -> workflows.Declaration:
    """The declaration beside a workflow's handler (lambdas/workflows/<name>/workflow.toml): the
    function's bundle ships its folder, so the Lambda reads the same file the stacks did."""
    return workflows.parse(Path(handler_file).parent / workflows.FILE, known_events=EVENTS)


class WorkflowTimedOut(Exception):
    """The declared timeout (`timeout_s`) has passed."""

    def __init__(self, timeout_s: int, where: str):
        super().__init__(f"the workflow's timeout ({timeout_s} s) passed before {where}")
        self.where = where


@dataclass
class Run:
    """One run of a declared workflow: its event, job id, declaration and time left.

    `context` is what the failure handler is given besides the failure (the body adds to it,
    e.g. the source it works on).
    """

    ctx: DurableContext
    decl: workflows.Declaration
    event: Event
    job_id: str
    started_at: float
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def deadline(self) -> float:
        return self.started_at + self.decl.timeout_s

    @property
    def policy(self) -> RetryPolicy:
        """The declared retries, applied to every step."""
        return RetryPolicy(max_attempts=self.decl.attempts)

    def remaining_s(self, where: str) -> int:
        """Whole seconds left before the declared timeout; WorkflowTimedOut when none are.

        Running out is recorded as its own durable operation (TIMEOUT_OP) before the run fails,
        so a replay takes the path the run took: while the next operation is one the history
        holds, the check follows the record (the marker: the time had run out; any other: it had
        not), never a fresh reading of the clock, whatever the failure path recorded after it.
        """
        recorded = _next_recorded(self.ctx)
        if recorded is not None and recorded != TIMEOUT_OP:
            return self.decl.timeout_s
        if recorded is None:
            left = int(self.deadline - clock())
            if left > 0:
                return left
        self.ctx.step(lambda _: where, name=TIMEOUT_OP)
        raise WorkflowTimedOut(self.decl.timeout_s, where)

    def wait(self, seconds: int, name: str) -> None:
        """A durable wait of `seconds`, cut to the time left; WorkflowTimedOut once it is gone."""
        left = self.remaining_s(name)
        self.ctx.wait(Duration.from_seconds(max(1, min(seconds, left))), name=name)
        if seconds >= left:
            self.remaining_s(f"after {name}")

    def invoke(
        self, step: str, payload: Mapping[str, Any], *, name: str | None = None
    ) -> dict[str, Any]:
        """Invoke step Lambda `step` with the declared retries, within the declared timeout."""
        self.remaining_s(name or step)
        return invoke_step(self.ctx, step, payload, name=name, policy=self.policy, wait=self.wait)


# The failure handler's durable operation (its first attempt).
FAILURE_OP = "on_failure"
# The record that the declared timeout ran out (Run.remaining_s).
TIMEOUT_OP = "timed out"
# The failed-run record (sluice/run_control.py), written before the failure handler runs.
RECORD_OP = "record failure"
# The run's registration with the events that cancel it (declared `cancel_on`), and its removal.
CANCEL_KEYS_OP = "cancel keys"
FORGET_CANCEL_KEYS_OP = "forget cancel keys"
# How long a registration outlives the run's execution timeout (TTL: a backstop for a removal
# that never ran).
REGISTRATION_MARGIN_S = 86_400


class RunCancelled(Exception):
    """An event the workflow declares in `cancel_on` was received before the run registered."""

    def __init__(self, event: str) -> None:
        super().__init__(f"cancelled by {event}, received before the run could register")
        self.event = event


def register_cancel_keys(run: Run) -> tuple[list[str], str | None]:
    """Register the run with each event that may cancel it (sluice/run_control.py), once: a
    durable step. The partitions it registered in, and the event that cancelled it when a
    cancellation received since is there already."""
    decl = run.decl
    if not decl.cancel_on:
        return [], None
    me = Registered(decl.id, run.job_id, run.ctx.state.durable_execution_arn)
    doc = run.event.to_dict()

    def register(_: Any) -> dict[str, Any]:
        keys = CancelKeys(clients("dynamodb"), env("coordination_table"))
        # The wall clock, not the execution's start: what the cancellations are compared with
        # (the step's result is recorded, so a replay keeps the first answer).
        now = datetime.fromtimestamp(clock(), UTC)
        scopes, cancelled_by = [], None
        for cancel in decl.cancel_on:
            value = workflows.value_at(doc, cancel.match)
            if value is None:  # nothing to match: no event of this kind cancels the run
                continue
            scope = cancel_scope(cancel.event, cancel.event_path, value)
            scopes.append(scope)
            ttl_s = decl.execution_timeout_s + REGISTRATION_MARGIN_S
            if keys.register(scope, me, at=now, ttl_s=ttl_s) and not cancelled_by:
                cancelled_by = cancel.event
        return {"scopes": scopes, "cancelled_by": cancelled_by}

    registered = run.ctx.step(register, name=CANCEL_KEYS_OP)
    return list(registered["scopes"]), registered["cancelled_by"]


def forget_cancel_keys(run: Run, scopes: list[str]) -> None:
    """Remove the run's registrations once it has ended (a durable step); one that cannot be
    removed is logged and expires by TTL (a stop of an ended run does nothing)."""
    if not scopes:
        return
    me = Registered(run.decl.id, run.job_id, run.ctx.state.durable_execution_arn)

    def forget(_: Any) -> None:
        keys = CancelKeys(clients("dynamodb"), env("coordination_table"))
        for scope in scopes:
            keys.forget(scope, me)

    _best_effort(run, forget, FORGET_CANCEL_KEYS_OP, "cancel keys not removed")


def _next_recorded(ctx: DurableContext) -> str | None:
    """The name of the next operation when the history already holds it (a replay); None when
    it is new."""
    peek = getattr(ctx, "_peek_next_checkpoint", None)
    if peek is None:  # pragma: no cover - an SDK without it: trust its replay status
        return "" if ctx.is_replaying() else None
    operation = peek().operation
    return None if operation is None else str(operation.name or "")


def hold_slots(ctx: DurableContext, decl: workflows.Declaration, run: Run) -> concurrency.Held:
    """Wait, durably, in the order of `decl.priority` (else of arrival), until the run holds the
    places `decl.concurrency` asks for (lambdas/common/concurrency.py); a lease lasts the execution timeout."""
    limits = decl.concurrency
    return concurrency.hold_slots(
        ctx,
        workflow=decl.id,
        event=run.event.to_dict(),
        run=run.job_id,
        limit=limits.limit if limits else None,
        key=limits.key if limits else None,
        key_limit=limits.key_limit if limits else None,
        priority=decl.priority,
        lease_s=decl.execution_timeout_s,
    )


def record_failed_run(run: Run, reason: Mapping[str, Any]) -> None:
    """Record the run and why it failed (sluice/run_control.py), once: a durable step. A
    record that cannot be written is logged and does not keep the failure handler from running."""
    arn = run.ctx.state.durable_execution_arn

    def record(_: Any) -> None:
        RunRecords(clients("dynamodb"), env("coordination_table")).record(
            workflow=run.decl.id,
            name=run.job_id,
            arn=arn,
            status="FAILED",
            event=run.event.to_dict(),
            reason=reason,
            started=datetime.fromtimestamp(run.started_at, UTC),
            ended=datetime.fromtimestamp(clock(), UTC),
        )

    _best_effort(run, record, RECORD_OP, "failed run not recorded")


def _best_effort(run: Run, fn: Callable[[Any], None], name: str, failed: str) -> None:
    """Run `fn` once as the durable step `name`; if it fails for good, log `failed` and go on
    (what it does has a backstop: a TTL, a retry of the operator's)."""
    try:
        run.ctx.step(fn, name=name)
    except UnrecoverableError:
        raise  # the SDK's own: nothing more can run
    except Exception as exc:
        run.ctx.logger.error(failed, extra={"error": str(exc)[:500]})


def _started_at(ctx: DurableContext) -> float:
    """When the execution started, the same on every replay."""
    operation = ctx.state.get_execution_operation()
    started = getattr(operation, "start_timestamp", None)
    if started is not None:
        return float(started.timestamp())
    return float(ctx.step(lambda _: clock(), name="started_at"))


Body = Callable[[Run], dict[str, Any]]


def _failure_of(exc: Exception, decl: workflows.Declaration) -> tuple[dict[str, Any], Exception]:
    """What the failure handler is told about `exc`, and what the execution fails with."""
    if isinstance(exc, StepFailed):
        reason = {"reason": "step_failed", **exc.to_dict()}
        return reason, BusinessError(str(exc), code=f"{exc.step}_failed")
    if isinstance(exc, RunCancelled):
        reason = {
            "reason": "cancelled",
            "step": decl.id,
            "error_class": "business",
            "error_type": CANCELLED,
            "message": str(exc),
            "attempts": 1,
        }
        return reason, BusinessError(str(exc), code="cancelled")
    if isinstance(exc, WorkflowTimedOut):
        reason = {
            "reason": "timeout",
            "step": exc.where,
            "error_class": "business",
            "error_type": "WorkflowTimedOut",
            "message": str(exc),
            "attempts": 1,
        }
        return reason, BusinessError(str(exc), code="timeout")
    code = exc.code if isinstance(exc, SluiceError) else "error"
    reason = {
        "reason": "error",
        "step": decl.id,
        "error_class": error_class(type(exc).__name__),
        "error_type": type(exc).__name__,
        "message": str(exc)[:2000] or type(exc).__name__,
        "attempts": 1,
    }
    return reason, exc if isinstance(exc, SluiceError) else BusinessError(str(exc), code=code)


def declared_workflow(decl: workflows.Declaration, body: Body) -> Callable[[Any, Any], Any]:
    """The Lambda handler of the workflow `decl` declares, running `body(run)`.

    Refuses events the declaration does not name; registers the run with the events that cancel
    it (`cancel_on`); holds the run's concurrency slots; keeps every
    wait within the declared timeout; and whatever ends the run badly (a step's final failure,
    an error raised outside steps, the declared timeout) runs the declared failure handler once
    (a durable operation: a replay returns its recorded result), then fails the execution with
    the error, which the DurableExecutionFailed alarm counts.
    """

    def workflow(event: Mapping[str, Any], ctx: DurableContext) -> dict[str, Any]:
        # The worker started it from a validated envelope: the event parses.
        ev = event_from_dict(dict(event), ts_required=False)
        job_id = execution_name(ev.id)
        set_correlation_id(ev.correlation_id, job_id=job_id, workflow=decl.id)
        ctx.set_logger(logger)  # type: ignore[arg-type]
        run = Run(ctx=ctx, decl=decl, event=ev, job_id=job_id, started_at=_started_at(ctx))
        held: concurrency.Held | None = None
        scopes: list[str] = []
        try:
            if ev.name not in decl.events:
                raise BusinessError(f"{decl.id} does not handle {ev.name}", code="unknown_event")
            scopes, cancelled_by = register_cancel_keys(run)
            if cancelled_by:
                raise RunCancelled(cancelled_by)
            held = hold_slots(ctx, decl, run)
            result = body(run)
            concurrency.release_slots(ctx, held)
            forget_cancel_keys(run, scopes)
            return result
        except UnrecoverableError:
            raise  # the SDK's own: checkpointing or replay failed, nothing more can run
        except Exception as exc:
            if held is not None:
                concurrency.release_slots(ctx, held)
            forget_cancel_keys(run, scopes)
            reason, error = _failure_of(exc, decl)
            ctx.logger.error("workflow failed", extra={"failure": reason})
            record_failed_run(run, reason)
            payload = workflows.failure_report(
                workflow=decl.id, job_id=job_id, event=ev, reason=reason, context=run.context
            )
            try:
                invoke_step(ctx, decl.on_failure, payload, name=FAILURE_OP, policy=run.policy)
            except StepFailed as lost:
                ctx.logger.error("failure handler failed", extra={"failure": lost.to_dict()})
            raise error from None

    return durable_handler(workflow)
