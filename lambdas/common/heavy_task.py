"""Hand a heavy step to the worker's tasks process and wait durably for its callback.

The submitter (a durable step, retried on its own) sends a sluice Task carrying the callback id
to the tasks queue; the worker heartbeats the callback while it works and reports the result.
A silent worker (crashed, instance gone) trips the heartbeat timeout; that and transient
failures are retried with a fresh callback and a fresh task after a durable backoff (the
workflows' one retry loop, lambdas.common.workflow.retry_durably). A business failure is final.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aws_durable_execution_sdk_python import DurableContext
from aws_durable_execution_sdk_python.config import Duration, WaitForCallbackConfig
from aws_durable_execution_sdk_python.exceptions import (
    CallbackError,
    CallbackExternalError,
    CallbackTimeoutError,
)
from aws_durable_execution_sdk_python.retries import RetryStrategyConfig, create_retry_strategy
from aws_durable_execution_sdk_python.types import WaitForCallbackContext

from lambdas.common.runtime import clients, env, settings
from lambdas.common.workflow import Failure, RetryPolicy, StepFailed, retry_durably
from sluice.envelope import Task
from sluice.errors import BusinessError
from sluice.steps import check_input

if TYPE_CHECKING:
    from lambdas.common.workflow import Run

HEAVY_BACKOFF = RetryPolicy(initial_delay_s=30, max_delay_s=600)

# Sending the task is an SQS call: transient failures are retried inside the submitter step.
SUBMIT_RETRY = create_retry_strategy(
    RetryStrategyConfig(max_attempts=4, initial_delay=Duration.from_seconds(2))
)


@dataclass(frozen=True)
class HeavyTaskSettings:
    """How long to wait for the worker; the stack sets these in the function's environment."""

    # The clock runs from the moment the task is queued, so it must cover the wait in the queue
    # (the tasks-queue age alarm fires at 30 min) plus a redelivery after a worker crash (the
    # queue's 15 min visibility timeout): redelivery, not this timeout, is the usual recovery.
    # This timeout is the backstop for a task that is lost for good (dead-lettered, purged).
    heartbeat_timeout_s: int = 3600
    # The longest one attempt may take (an hour-long sermon transcodes in minutes).
    timeout_s: int = 4 * 3600
    max_attempts: int = 3
    backoff: RetryPolicy = HEAVY_BACKOFF

    # Set only where the function's settings override the declared retries (tests do).
    max_attempts_set: bool = False

    @classmethod
    def from_env(cls) -> HeavyTaskSettings:
        """The function's settings (sluice.settings.LambdaSettings' heavy_* fields)."""
        s, d = settings(), cls()
        return cls(
            heartbeat_timeout_s=s.heavy_heartbeat_timeout_s,
            timeout_s=s.heavy_timeout_s,
            max_attempts=s.heavy_max_attempts or d.max_attempts,
            backoff=RetryPolicy(
                initial_delay_s=s.heavy_backoff_s, max_delay_s=d.backoff.max_delay_s
            ),
            max_attempts_set=s.heavy_max_attempts is not None,
        )


def failure_of(err: Exception) -> Failure | None:
    """Why a callback failed (None: not a callback failure)."""
    if not isinstance(err, CallbackError):
        return None
    message = err.message or str(err)
    if isinstance(err, CallbackTimeoutError):
        return Failure("transient", "CallbackTimeout", f"callback_timeout: {message}")
    if isinstance(err, CallbackExternalError):
        # The SDK hands the workflow the failure's message and data, not its ErrorType: the
        # worker puts the Sluice error (class, code, message) in ErrorData for this.
        try:
            reported = json.loads(err.data or "{}")
        except json.JSONDecodeError:
            reported = {}
        kind = "business" if reported.get("error_class") == "business" else "transient"
        return Failure(kind, "BusinessError" if kind == "business" else "TransientError", message)
    return Failure("transient", type(err).__name__, message)  # the submitter could not send it


def run_heavy_task(
    ctx: DurableContext,
    *,
    task: str,
    data: Mapping[str, Any],
    correlation_id: str,
    seed: str,
    name: str,
    settings: HeavyTaskSettings | None = None,
    run: Run | None = None,
) -> dict[str, Any]:
    """Send `task` to the tasks queue, wait for its callback, return the worker's result.

    Each attempt is its own durable operation (`name`, `name#2`, ...), so replays never send a
    task twice. A failure for good (business, or transient past `max_attempts`) fails the
    workflow: a business error with reason `<name>_failed`, whose message carries the reason the
    worker reported (corrupt_audio, oversize, ...): the DurableExecutionFailed alarm counts it.
    """
    cfg = settings or HeavyTaskSettings.from_env()
    queue_url = env("tasks_queue_url")
    check_input(task, data)  # a task the worker would refuse is never sent (sluice/steps.py)

    def config(op: str) -> WaitForCallbackConfig:
        timeout = cfg.timeout_s if run is None else min(cfg.timeout_s, run.remaining_s(op))
        return WaitForCallbackConfig(
            timeout=Duration.from_seconds(timeout),
            heartbeat_timeout=Duration.from_seconds(min(cfg.heartbeat_timeout_s, timeout)),
            retry_strategy=SUBMIT_RETRY,
        )

    def submit(callback_id: str, _: WaitForCallbackContext) -> None:
        body = Task(name=task, callback_id=callback_id, data=data, correlation_id=correlation_id)
        clients("sqs").send_message(QueueUrl=queue_url, MessageBody=body.to_json())

    def attempt(op: str) -> dict[str, Any]:
        raw = ctx.wait_for_callback(submit, name=op, config=config(op))
        result = json.loads(raw) if isinstance(raw, str | bytes) else raw
        return dict(result or {})

    try:
        return retry_durably(
            ctx,
            attempt,
            op=name,
            what=task,
            failure=failure_of,
            # A declared workflow's retries apply to its heavy steps too, unless the function's
            # settings say otherwise (heavy_max_attempts: the stacks never set it; tests do).
            policy=dataclasses.replace(
                cfg.backoff,
                max_attempts=(
                    run.decl.attempts
                    if run is not None and not cfg.max_attempts_set
                    else cfg.max_attempts
                ),
            ),
            seed=seed,
            wait=None if run is None else run.wait,
        )
    except StepFailed as failure:
        if run is not None:
            raise StepFailed(
                name,
                error_class=failure.error_class,
                error_type=failure.error_type,
                message=failure.message,
                attempts=failure.attempts,
            ) from None
        ctx.logger.error(f"{name} failed", extra={"failure": failure.to_dict()})
        raise BusinessError(str(failure), code=f"{name}_failed") from None
