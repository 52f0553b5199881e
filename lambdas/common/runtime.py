"""Powertools set-up (the log schema of adapters.logs), boto3 clients made once and injectable,
and the step handler wrapper that maps every failure to sluice.errors (adapters.errors).

Every log line of a job carries `correlation_id` (the event id): step handlers read it from
their payload, workflows from the event that started them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from botocore.config import Config

from adapters import logs
from adapters.errors import classify
from sluice.errors import BusinessError
from sluice.settings import LambdaSettings, SettingsError
from sluice.steps import CONTRACTS, check_input, check_output

SERVICE = "sluice"
logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", SERVICE), **logs.OPTIONS)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Sluice"))
tracer = Tracer(service=os.environ.get("POWERTOOLS_SERVICE_NAME", SERVICE))


class Clients:
    """boto3 clients, created once per sandbox (cold start) and replaceable in tests."""

    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}
        # Retries inside one attempt are the SDK's; the durable retry policy sits above them.
        self._config = Config(retries={"mode": "standard", "max_attempts": 3})

    def __call__(self, service: str) -> Any:
        client = self._clients.get(service)
        if client is None:
            client = self._clients[service] = boto3.client(service, config=self._config)
        return client

    def override(self, **clients: Any) -> None:
        """Use these clients (e.g. stubs) instead of making new ones."""
        self._clients.update(clients)

    def reset(self) -> None:
        self._clients.clear()


clients = Clients()


def error_class(error_type: str | None) -> str:
    """`business` or `transient` for the error type a failed invoke reports.

    Lambda reports the bare class name (`BusinessError`), the local test runner the qualified
    one (`sluice.errors.BusinessError`). Unknown types (timeouts, out of memory, bugs) count as
    transient: a bounded number of retries, then the failure path.
    """
    name = (error_type or "").rsplit(".", 1)[-1]
    return "business" if name in {"BusinessError", "PoisonMessage"} else "transient"


def set_correlation_id(correlation_id: str | None, **keys: Any) -> None:
    """Every following log line (and the trace) carries the job's correlation id."""
    if correlation_id:
        logger.set_correlation_id(correlation_id)
        logger.append_keys(correlation_id=correlation_id, **keys)
        tracer.put_annotation("correlation_id", correlation_id)
    elif keys:
        logger.append_keys(**keys)


Handler = Callable[[Mapping[str, Any], Any], dict[str, Any]]


def step_handler(step: str) -> Callable[[Callable[[Mapping[str, Any]], dict[str, Any]]], Handler]:
    """Decorate a step's logic `fn(payload) -> result` into a Lambda handler.

    The handler checks the payload and the result against the step's contract (sluice/steps.py),
    logs with the payload's correlation id, counts outcomes, and raises only sluice.errors
    classes, so the workflow can tell a retry-worthy failure from a final one.
    """

    def decorate(fn: Callable[[Mapping[str, Any]], dict[str, Any]]) -> Handler:
        @functools.wraps(fn)
        def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
            if not isinstance(event, Mapping):
                raise BusinessError(f"{step}: payload must be a JSON object", code="bad_payload")
            metrics.add_dimension(name="step", value=step)
            set_correlation_id(event.get("correlation_id"), step=step)
            try:
                if step in CONTRACTS:
                    check_input(step, event)
                result = fn(event)
                if step in CONTRACTS:
                    check_output(step, result)
            except Exception as exc:
                error = classify(exc)
                logger.warning(
                    "step failed",
                    extra={
                        "error_class": error.error_class,
                        "code": error.code,
                        "error": str(error),
                    },
                )
                metrics.add_metric(
                    name=f"Step{error.error_class.title()}Error", unit=MetricUnit.Count, value=1
                )
                if error is exc:
                    raise
                raise error from exc
            metrics.add_metric(name="StepSucceeded", unit=MetricUnit.Count, value=1)
            logger.info("step succeeded")
            return result

        wrapped = tracer.capture_lambda_handler(handler, capture_response=False)
        wrapped = metrics.log_metrics(wrapped)  # type: ignore[assignment]
        return logger.inject_lambda_context(wrapped, clear_state=True)  # type: ignore[return-value]

    return decorate


def require(payload: Mapping[str, Any], *names: str) -> list[Any]:
    """The payload's fields `names`, or a business error naming the first one missing."""
    missing = [n for n in names if payload.get(n) in (None, "")]
    if missing:
        raise BusinessError(f"payload lacks {', '.join(missing)}", code="bad_payload")
    return [payload[n] for n in names]


def settings() -> LambdaSettings:
    """What the stack told this function (sluice.settings.LambdaSettings), read and validated."""
    try:
        return LambdaSettings.read()
    except SettingsError as exc:
        raise BusinessError(str(exc), code="misconfigured") from None


def env(field: str) -> str:
    """The setting `field` of LambdaSettings, which the stack must have given this function (a
    missing one is a deploy bug, named by its variable)."""
    try:
        return settings().require(field)
    except SettingsError as exc:
        raise BusinessError(str(exc), code="misconfigured") from None
