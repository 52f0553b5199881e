"""Durable workflow deliver_webhook: an event's payload POSTed to a customer's endpoint.

Started by `webhook/requested` (data: url, customer_id, payload). Everything about it but this
code is declared in workflow.toml beside this file: its event, its retries (post_webhook is
retried on 5xx, 429 and timeouts with a durable backoff), its timeout, its per-customer
concurrency and its failure handler (the job record marked FAILED and a notification).
"""

from __future__ import annotations

from typing import Any

from lambdas.common.workflow import Run, declaration, declared_workflow
from sluice.errors import BusinessError

DECLARATION = declaration(__file__)
WORKFLOW = DECLARATION.id


def deliver(run: Run) -> dict[str, Any]:
    data = run.event.data
    url, customer = data.get("url"), data.get("customer_id")
    if not isinstance(url, str) or not url:
        raise BusinessError("event data names no url", code="bad_event")
    if not isinstance(customer, str) or not customer:
        raise BusinessError("event data names no customer_id", code="bad_event")
    run.context["customer_id"] = customer
    result = run.invoke(
        "post_webhook",
        {
            "job_id": run.job_id,
            "correlation_id": run.event.correlation_id,
            "event_id": run.event.id,
            "event_name": run.event.name,
            "url": url,
            "payload": data.get("payload"),
        },
    )
    return {
        "job_id": run.job_id,
        "status": "DELIVERED",
        "customer_id": customer,
        "status_code": result["status_code"],
    }


handler = declared_workflow(DECLARATION, deliver)
