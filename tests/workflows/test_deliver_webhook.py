"""deliver_webhook, the non-media workflow written only through its declaration, run for real:
the real post_webhook step against a loopback endpoint, the real failure handler (moto)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from aws_durable_execution_sdk_python.execution import InvocationStatus
from aws_durable_execution_sdk_python_testing.runner import DurableFunctionTestRunner

from lambdas.steps.on_failure.handler import handler as on_failure
from lambdas.steps.post_webhook.handler import handler as post_webhook
from lambdas.workflows.deliver_webhook import handler as workflow
from sluice.catalog import WORKFLOW_ALIAS, workflows_for
from sluice.envelope import Event
from tests.lambdas.conftest import aws  # noqa: F401
from tests.lambdas.webhook_server import webhook_endpoint


def deliver(url: str, calls: Counter) -> Any:
    event = Event(
        name="webhook/requested",
        id="hook-1",
        data={"url": url, "customer_id": "cust-9", "payload": {"invoice": "INV-1"}},
    )

    def counted(name: str, fn: Any) -> Any:
        def target(payload: Any, context: Any) -> Any:
            calls[name] += 1
            return fn(payload, context)

        return target

    with DurableFunctionTestRunner(handler=workflow.handler, skip_time=True) as runner:
        runner.register_function(f"post_webhook:{WORKFLOW_ALIAS}", counted("post", post_webhook))
        runner.register_function(f"on_failure:{WORKFLOW_ALIAS}", counted("on_failure", on_failure))
        arn = runner.run_async(
            input=event.to_json(), execution_name=event.execution_name, execution_timeout=120
        )
        return event, runner.wait_for_result(arn, timeout=120)


def test_its_declaration_routes_its_event_and_sets_its_retries_and_concurrency():
    decl = workflow.DECLARATION
    assert workflows_for("webhook/requested") == ("deliver_webhook",)
    assert decl.attempts == 6 and decl.steps == ("post_webhook",)
    assert decl.concurrency is not None
    assert (decl.concurrency.key, decl.concurrency.key_limit) == ("data.customer_id", 1)


def test_a_webhook_is_delivered_once(aws):  # noqa: F811
    calls: Counter = Counter()
    with webhook_endpoint() as hook:
        event, result = deliver(hook.url, calls)
    assert result.status is InvocationStatus.SUCCEEDED, result.error
    out = json.loads(result.result)
    assert out == {
        "job_id": event.execution_name,
        "status": "DELIVERED",
        "customer_id": "cust-9",
        "status_code": 200,
    }
    (got,) = hook.received
    assert got["body"]["data"] == {"invoice": "INV-1"}
    assert got["headers"]["Idempotency-Key"] == event.id
    assert calls["on_failure"] == 0


def test_an_endpoint_that_is_down_for_a_while_gets_it_after_durable_backoffs(aws):  # noqa: F811
    calls: Counter = Counter()
    with webhook_endpoint() as hook:
        hook.script += [(503, 0), (502, 0), (429, 0)]
        _, result = deliver(hook.url, calls)
    assert result.status is InvocationStatus.SUCCEEDED, result.error
    assert len(hook.received) == 4
    names = {op.name for op in result.get_all_operations() if op.name}
    assert {"post_webhook#1 backoff", "post_webhook#2 backoff", "post_webhook#3 backoff"} <= names
    assert calls["on_failure"] == 0


def test_an_endpoint_that_refuses_is_not_retried_and_the_failure_is_recorded(aws):  # noqa: F811
    calls: Counter = Counter()
    with webhook_endpoint() as hook:
        hook.script.append((410, 0))
        event, result = deliver(hook.url, calls)
    assert result.status is InvocationStatus.FAILED
    assert len(hook.received) == 1
    assert calls["on_failure"] == 1
    job = aws.job(event.execution_name)
    assert job["status"] == "FAILED" and job["failed_step"] == "post_webhook"
    assert job["workflow"] == "deliver_webhook"
    (note,) = aws.notifications()
    assert note["type"] == "deliver_webhook.failed"
    assert "410" in note["error"]["message"]


def test_an_endpoint_down_past_every_retry_fails_once_after_six_attempts(aws):  # noqa: F811
    calls: Counter = Counter()
    with webhook_endpoint() as hook:
        hook.script += [(500, 0)] * 10
        _, result = deliver(hook.url, calls)
    assert result.status is InvocationStatus.FAILED
    assert len(hook.received) == workflow.DECLARATION.attempts == 6
    assert calls["on_failure"] == 1
