"""One sqsd POST in, durable executions started, one answer out (DESIGN.md "Worker answers to sqsd").

| situation                                       | answer | effect                                  |
|-------------------------------------------------|--------|-----------------------------------------|
| started, or already started (same id + payload) | 200    | sqsd deletes the message                |
| poison: malformed JSON, invalid UTF-8, schema   | 200    | after the message is in the DLQ with    |
| violation, unknown name, oversize, id conflict  |        | its reason attributes                   |
| throttled / 5xx / network / DLQ unreachable     | 503    | sqsd retries after ErrorVisibilityTimeout|
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sluice import envelope
from sluice.catalog import workflows_for
from sluice.envelope import Event
from sluice.errors import PoisonMessage, TransientError
from worker.observability import Metrics, correlation_id
from worker.settings import Settings

log = logging.getLogger("sluice.worker")

ALREADY_STARTED_OTHER_INPUT = "DurableExecutionAlreadyStartedException"
# SQS accepts only these characters in a body; anything else travels base64-encoded.
_SQS_TEXT = re.compile("^[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*$")
_DETAIL_CHARS = 1000

STARTED = "started"
DEAD_LETTERED = "dead_lettered"
TRANSIENT = "transient"
IGNORED = "ignored"


@dataclass(frozen=True)
class Delivery:
    """What sqsd says about the message it POSTs (its X-Aws-Sqsd-* headers; all optional)."""

    message_id: str = ""
    receive_count: int = 1
    first_received_at: str = ""
    queue: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Delivery:
        """`headers`: lower-case names without the `x-aws-sqsd-` prefix."""
        try:
            count = int(headers.get("receive-count", "1"))
        except ValueError:
            count = 1
        return cls(
            message_id=headers.get("msgid", ""),
            receive_count=count,
            first_received_at=headers.get("first-received-at", ""),
            queue=headers.get("queue", ""),
            attributes={k[5:]: v for k, v in headers.items() if k.startswith("attr-")},
        )


@dataclass
class Result:
    """The answer to sqsd and what it counts for the metrics."""

    status: int
    outcome: str
    reason: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    executions: list[dict[str, str]] = field(default_factory=list)


class Dispatcher:
    """Validates, routes and starts; sends poison to the DLQ. Clients are injected."""

    def __init__(
        self, *, settings: Settings, lambda_client: Any, sqs_client: Any, metrics: Metrics
    ):
        self.settings = settings
        self.lambda_client = lambda_client
        self.sqs = sqs_client
        self.metrics = metrics

    def handle(self, body: bytes, delivery: Delivery) -> Result:
        """Handle one message; never raises (an unexpected error is a 503: nothing is lost)."""
        began = time.perf_counter()
        try:
            result = self._handle(body, delivery)
        except Exception:
            log.exception("unexpected error; sqsd will retry the message")
            result = Result(503, TRANSIENT, "unexpected", {"TransientFailures": 1})
        result.counts["Received"] = 1
        extra: dict[str, Any] = {"outcome": result.outcome}
        if result.reason:
            extra["reason"] = result.reason
        if result.executions:
            extra["executions"] = result.executions
        self.metrics.emit(result.counts, (time.perf_counter() - began) * 1000, **extra)
        return result

    def _handle(self, body: bytes, delivery: Delivery) -> Result:
        try:
            events = envelope.parse_events(body, max_bytes=self.settings.max_body_bytes)
            for event in events:
                if not workflows_for(event.name):
                    raise PoisonMessage(
                        f"no workflow handles event {event.name!r}", code=envelope.UNKNOWN_EVENT
                    )
        except PoisonMessage as poison:
            return self._dead_letter(body, delivery, poison)
        if not events:  # S3's test event: nothing to start
            log.info("message carries no event", extra={"outcome": IGNORED})
            return Result(200, IGNORED)
        correlation_id.set(events[0].correlation_id)
        started: list[dict[str, str]] = []
        for event in events:
            for workflow in workflows_for(event.name):
                try:
                    self._start(workflow, event, started)
                except PoisonMessage as poison:
                    return self._dead_letter(body, delivery, poison, event)
                except TransientError as exc:
                    log.warning(
                        "start failed, sqsd will retry",
                        extra={
                            "outcome": TRANSIENT,
                            "reason": exc.code,
                            "detail": str(exc),
                            "workflow": workflow,
                            "event_id": event.id,
                        },
                    )
                    return Result(503, TRANSIENT, exc.code, {"TransientFailures": 1})
        # Lambda answers a repeated name + payload with the existing execution, exactly like a
        # fresh start; a redelivered message (receive count > 1) is what tells them apart.
        duplicate = delivery.receive_count > 1
        counts = {"Started": len(started), "Duplicates": len(started) if duplicate else 0}
        return Result(200, STARTED, "", counts, started)

    def _start(self, workflow: str, event: Event, started: list[dict[str, str]]) -> None:
        alias_arn = self.settings.workflow_aliases.get(workflow)
        if alias_arn is None:
            # A routed workflow that is not deployed is a deployment fault, not the event's:
            # retry it (the redrive policy dead-letters it if nobody fixes the deployment).
            raise TransientError(f"workflow {workflow!r} has no alias configured", code="no_alias")
        name = event.execution_name
        try:
            answer = self.lambda_client.invoke(
                FunctionName=alias_arn,
                InvocationType="Event",
                DurableExecutionName=name,
                Payload=event.to_json().encode(),
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == ALREADY_STARTED_OTHER_INPUT:
                raise PoisonMessage(
                    f"execution {name!r} of {workflow} already started with other input",
                    code=envelope.ID_CONFLICT,
                ) from None
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            raise TransientError(f"{code or status}: {exc}", code=code or "client_error") from None
        except BotoCoreError as exc:  # connection refused/reset, timeouts
            raise TransientError(str(exc), code=type(exc).__name__) from None
        # No log line of its own: the message's one EMF line (a JSON log line with the
        # correlation id) lists what was started; a line per start doubled the logging CPU.
        started.append(
            {
                "workflow": workflow,
                "event_id": event.id,
                "event_name": event.name,
                "execution_name": name,
                "execution_arn": answer.get("DurableExecutionArn", ""),
            }
        )

    def _dead_letter(
        self, body: bytes, delivery: Delivery, poison: PoisonMessage, event: Event | None = None
    ) -> Result:
        text, encoding = _sqs_body(body)
        attributes = {
            "reason": poison.code,
            "detail": str(poison)[:_DETAIL_CHARS],
            "body_encoding": encoding,
            "sqsd_msgid": delivery.message_id,
            "receive_count": str(delivery.receive_count),
            "first_received_at": delivery.first_received_at,
            "source_queue": delivery.queue,
            "correlation_id": event.correlation_id if event else correlation_id.get(),
            "event_id": event.id if event else "",
        }
        try:
            self.sqs.send_message(
                QueueUrl=self.settings.events_dlq_url,
                MessageBody=text,
                MessageAttributes={
                    k: {"DataType": "String", "StringValue": v} for k, v in attributes.items() if v
                },
            )
        except (ClientError, BotoCoreError) as exc:
            log.error(
                "dead-lettering failed, sqsd will retry",
                extra={"outcome": TRANSIENT, "reason": poison.code, "detail": str(exc)},
            )
            return Result(503, TRANSIENT, "dlq_unavailable", {"TransientFailures": 1})
        log.warning(
            "message dead-lettered",
            extra={"outcome": DEAD_LETTERED, "reason": poison.code, "detail": str(poison)},
        )
        return Result(200, DEAD_LETTERED, poison.code, {"DeadLettered": 1})


def _sqs_body(body: bytes) -> tuple[str, str]:
    """The body as SQS can carry it: the text itself, or base64 when it is not valid SQS text."""
    if not body:  # SQS refuses an empty body
        return "-", "empty"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and _SQS_TEXT.match(text):
        return text, "text"
    return base64.b64encode(body).decode("ascii"), "base64"
