"""Hand a heavy step to the worker's tasks process and wait durably for its callback.

The submitter (a durable step, retried on its own) sends a sluice Task carrying the callback id
to the tasks queue; the worker heartbeats the callback while it works and reports the result.
A silent worker (crashed, instance gone) trips the heartbeat timeout; that and transient
failures are retried with a fresh callback and a fresh task after a durable backoff. A business
failure is final.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aws_durable_execution_sdk_python import DurableContext
from aws_durable_execution_sdk_python.config import Duration, WaitForCallbackConfig
from aws_durable_execution_sdk_python.exceptions import (
    CallbackError,
    CallbackExternalError,
    CallbackTimeoutError,
)
from aws_durable_execution_sdk_python.retries import RetryStrategyConfig, create_retry_strategy
from aws_durable_execution_sdk_python.types import WaitForCallbackContext

from lambdas.common.runtime import clients, env
from lambdas.common.workflow import RetryPolicy, StepFailed
from sluice.envelope import Task

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

    @classmethod
    def from_env(cls) -> HeavyTaskSettings:
        d = cls()
        return cls(
            heartbeat_timeout_s=int(
                os.environ.get("HEAVY_HEARTBEAT_TIMEOUT_S") or d.heartbeat_timeout_s
            ),
            timeout_s=int(os.environ.get("HEAVY_TIMEOUT_S") or d.timeout_s),
            max_attempts=int(os.environ.get("HEAVY_MAX_ATTEMPTS") or d.max_attempts),
            backoff=RetryPolicy(
                initial_delay_s=int(os.environ.get("HEAVY_BACKOFF_S") or d.backoff.initial_delay_s),
                max_delay_s=d.backoff.max_delay_s,
            ),
        )


def failure_of(err: CallbackError) -> tuple[str, str, str]:
    """(error class, error type, message) of a failed callback."""
    message = err.message or str(err)
    if isinstance(err, CallbackTimeoutError):
        return "transient", "CallbackTimeout", f"callback_timeout: {message}"
    if isinstance(err, CallbackExternalError):
        # The SDK hands the workflow the failure's message and data, not its ErrorType: the
        # worker puts the Sluice error (class, code, message) in ErrorData for this.
        try:
            reported = json.loads(err.data or "{}")
        except json.JSONDecodeError:
            reported = {}
        kind = "business" if reported.get("error_class") == "business" else "transient"
        return kind, "BusinessError" if kind == "business" else "TransientError", message
    return "transient", type(err).__name__, message  # the submitter could not send the task


def run_heavy_task(
    ctx: DurableContext,
    *,
    task: str,
    data: Mapping[str, Any],
    correlation_id: str,
    seed: str,
    settings: HeavyTaskSettings | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Send `task` to the tasks queue, wait for its callback, return the worker's result.

    Raises StepFailed (business, or transient past `max_attempts`). Each attempt is its own
    durable operation (`name`, `name#2`, ...), so replays never send a task twice.
    """
    cfg = settings or HeavyTaskSettings.from_env()
    queue_url = env("TASKS_QUEUE_URL")
    op = name or task.replace("/", "_")
    callback_config = WaitForCallbackConfig(
        timeout=Duration.from_seconds(cfg.timeout_s),
        heartbeat_timeout=Duration.from_seconds(cfg.heartbeat_timeout_s),
        retry_strategy=SUBMIT_RETRY,
    )
    for attempt in range(1, cfg.max_attempts + 1):
        attempt_name = op if attempt == 1 else f"{op}#{attempt}"

        def submit(callback_id: str, _: WaitForCallbackContext) -> None:
            body = Task(
                name=task, callback_id=callback_id, data=data, correlation_id=correlation_id
            )
            clients("sqs").send_message(QueueUrl=queue_url, MessageBody=body.to_json())

        try:
            raw = ctx.wait_for_callback(submit, name=attempt_name, config=callback_config)
        except CallbackError as err:
            kind, error_type, message = failure_of(err)
            if kind == "business" or attempt == cfg.max_attempts:
                raise StepFailed(
                    task, error_class=kind, error_type=error_type, message=message, attempts=attempt
                ) from None
            delay = cfg.backoff.delay_s(attempt, seed=f"{seed}/{op}")
            ctx.logger.warning(
                "heavy task failed, retrying",
                extra={"task": task, "task_attempt": attempt, "delay_s": delay, "error": message},
            )
            ctx.wait(Duration.from_seconds(delay), name=f"{attempt_name} backoff")
            continue
        result = json.loads(raw) if isinstance(raw, str | bytes) else raw
        return dict(result or {})
    raise AssertionError("unreachable")  # pragma: no cover
