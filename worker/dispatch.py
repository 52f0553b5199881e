"""One sqsd POST in, durable executions started, one answer out (README, "Worker answers to sqsd").

| situation                                       | answer | effect                                  |
|-------------------------------------------------|--------|-----------------------------------------|
| started, or already started (same id + payload) | 200    | sqsd deletes the message                |
| poison: malformed JSON, invalid UTF-8, schema   | 200    | after the message is in the DLQ with    |
| violation, unknown name, oversize, id conflict, |        | its reason attributes (a body too large |
| Lambda refused the request (400/413)            |        | for the DLQ: kept in S3, DLQ pointer)   |
| throttled / 5xx / network / DLQ unreachable,    | 503    | sqsd retries after ErrorVisibilityTimeout|
| deployment faults (no alias, 403, 404)          |        |                                          |
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from adapters import errors
from sluice import envelope, workflows
from sluice.catalog import (
    DEAD_LETTER_PREFIX,
    FLOW_WAKE,
    FLOWS,
    cancels_for,
    is_known,
    workflows_for,
)
from sluice.envelope import Event
from sluice.errors import PoisonMessage, TransientError
from sluice.run_control import FailureHandlerFailed
from sluice.settings import SQS_MAX_MESSAGE_BYTES, WebSettings
from worker import flow
from worker.cancels import Canceller, first_received
from worker.flow import FlowControl
from worker.observability import Metrics, correlation_id

log = logging.getLogger("sluice.worker")

# SQS accepts only these characters in a body; anything else travels base64-encoded.
_SQS_TEXT = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")
_NOT_SQS_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_DETAIL_CHARS = 1000
# Room kept below SQS's limit when a dead letter is truncated (SQS's own accounting margin).
_SIZE_MARGIN = 1024

STARTED = "started"
DEAD_LETTERED = "dead_lettered"
TRANSIENT = "transient"
IGNORED = "ignored"
CANCELLED = "cancelled"


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
        self,
        *,
        settings: WebSettings,
        lambda_client: Any,
        sqs_client: Any,
        metrics: Metrics,
        s3_client: Any = None,
        flow_control: FlowControl | None = None,
        canceller: Canceller | None = None,
    ):
        self.settings = settings
        self.lambda_client = lambda_client
        self.sqs = sqs_client
        self.s3 = s3_client  # for the claim check (settings.claim_check_bucket)
        self.metrics = metrics
        self.flow = flow_control  # for the workflows that declare flow control (catalog.FLOWS)
        self.canceller = canceller  # for events a workflow declares in `cancel_on`

    def handle(self, body: bytes, delivery: Delivery) -> Result:
        """Handle one message; never raises (an unexpected error is a 503: nothing is lost)."""
        return self._measured(lambda: self._handle(body, delivery))

    def reject(self, body: bytes, delivery: Delivery, poison: PoisonMessage) -> Result:
        """Dead-letter a message another route found to be poison (e.g. a bad cron header)."""
        return self._measured(lambda: self._dead_letter(body, delivery, poison))

    def _measured(self, handle: Callable[[], Result]) -> Result:
        began = time.perf_counter()
        try:
            result = handle()
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
                if not is_known(event.name):
                    raise PoisonMessage(
                        f"no workflow handles event {event.name!r}", code=envelope.UNKNOWN_EVENT
                    )
        except PoisonMessage as poison:
            return self._dead_letter(body, delivery, poison)
        if events and all(event.name == FLOW_WAKE for event in events):
            return self._wake(events)
        if not events:  # S3's test event: nothing to start
            log.info("message carries no event", extra={"outcome": IGNORED})
            return Result(200, IGNORED)
        cancelling = [event for event in events if cancels_for(event.name)]
        if not cancelling and not any(workflows_for(event.name) for event in events):
            log.info("no workflow starts on these events", extra={"outcome": IGNORED})
            return Result(200, IGNORED)  # notices (media/ready)
        correlation_id.set(events[0].correlation_id)
        cancelled: list[dict[str, str]] = []
        for event in cancelling:
            try:
                cancelled += self._cancel(event, delivery)
            except TransientError as exc:
                log.warning(
                    "cancelling failed, sqsd will retry",
                    extra={"outcome": TRANSIENT, "reason": exc.code, "detail": str(exc)},
                )
                return Result(503, TRANSIENT, exc.code, {"TransientFailures": 1})
        started: list[dict[str, str]] = []
        counts: dict[str, int] = {}
        dropped: list[dict[str, str]] = []  # held events a cancellation named (worker/flow.py)
        flow.dropped.set(dropped)
        for event in events:
            for workflow in workflows_for(event.name):
                try:
                    outcome = self._admit(workflow, event, started)
                    if outcome in flow.COUNTS:
                        counts[flow.COUNTS[outcome]] = counts.get(flow.COUNTS[outcome], 0) + 1
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
        cancelled += dropped
        counts |= {
            "Started": len(started),
            "Duplicates": len(started) if duplicate else 0,
            "Cancelled": len(cancelled),
        }
        outcome = STARTED if started or not cancelling else CANCELLED
        return Result(200, outcome, "", counts, started + cancelled)

    def _cancel(self, event: Event, delivery: Delivery) -> list[dict[str, str]]:
        """Stop the runs `event` cancels (worker/cancels.py); TransientError when it cannot now."""
        if self.canceller is None:
            # Declared but not configured: a deployment fault, held by the redrive policy.
            raise TransientError(
                f"{event.name} cancels runs, but no coordination table is configured",
                code="no_coordination_table",
            )
        try:
            received = first_received(delivery.first_received_at)
            stopped = self.canceller.cancel(event, received=received)
            return [{**run, "cancelled_by": event.id} for run in stopped]
        except (ClientError, BotoCoreError, FailureHandlerFailed) as exc:
            raise TransientError(str(exc), code=errors.code(exc) or type(exc).__name__) from None

    def _admit(self, workflow: str, event: Event, started: list[dict[str, str]]) -> str:
        """Start `workflow` for `event`, through its flow control when it declares any."""
        declared = self._flows().get(workflow)
        if declared is None:
            self._start(workflow, event, started)
            return flow.START
        self._alias(workflow)  # a workflow not deployed holds nothing
        try:
            return self._flow().admit(
                workflow, declared, event, self._starter(workflow, started, current=event.id)
            )
        except (ClientError, BotoCoreError) as exc:
            raise TransientError(str(exc), code="flow_state") from None

    def _alias(self, workflow: str) -> str:
        alias_arn = self.settings.workflow_aliases.get(workflow)
        if alias_arn is None:
            # A routed workflow that is not deployed is a deployment fault, not the event's:
            # retry it (the redrive policy dead-letters it if nobody fixes the deployment).
            raise TransientError(f"workflow {workflow!r} has no alias configured", code="no_alias")
        return alias_arn

    def _flows(self) -> Mapping[str, workflows.Flow]:
        """The declared flow controls, with the throttles the settings replace (a local run's)."""
        return workflows.with_throttles(FLOWS, self.settings.throttles)

    def _flow(self) -> FlowControl:
        if self.flow is None:
            # Declared flow control without its table is a deployment fault: retry the message.
            raise TransientError("flow control has no coordination table", code="no_flow_state")
        return self.flow

    def _starter(
        self, workflow: str, started: list[dict[str, str]], *, current: str = ""
    ) -> flow.Starter:
        """How flow control starts `workflow`: the message's own event as any other; an event it
        held back that Lambda refuses (poison) goes to the DLQ on its own, so it blocks no one."""

        def start(event: Event) -> None:
            try:
                self._start(workflow, event, started)
            except PoisonMessage as poison:
                if event.id == current:
                    raise
                result = self._dead_letter(event.to_json().encode(), Delivery(), poison, event)
                if result.status != 200:
                    raise TransientError(result.reason, code=result.reason) from None

        return start

    def _wake(self, events: list[Event]) -> Result:
        """Flow control's wake-ups (worker/flow.py): start what may start now."""
        started: list[dict[str, str]] = []
        dropped: list[dict[str, str]] = []  # held events a cancellation named: not started
        flow.dropped.set(dropped)
        try:
            for event in events:
                workflow = str(event.data.get("workflow", ""))
                self._flow().woken(event.data, self._flows(), self._starter(workflow, started))
        except TransientError as exc:
            return Result(503, TRANSIENT, exc.code, {"TransientFailures": 1})
        except (ClientError, BotoCoreError) as exc:
            log.warning("flow state unavailable, sqsd will retry", extra={"detail": str(exc)})
            return Result(503, TRANSIENT, "flow_state", {"TransientFailures": 1})
        counts = {"Started": len(started), "Cancelled": len(dropped)}
        return Result(200, STARTED, "", counts, started + dropped)

    def _start(self, workflow: str, event: Event, started: list[dict[str, str]]) -> None:
        alias_arn = self._alias(workflow)
        name = event.execution_name
        try:
            answer = self.lambda_client.invoke(
                FunctionName=alias_arn,
                InvocationType="Event",
                DurableExecutionName=name,
                # The same bytes on every re-send of this event (no timestamp): a repeat is the
                # same start, not a conflict.
                Payload=event.start_payload(),
            )
        except (ClientError, BotoCoreError) as exc:
            # The adapters' table (adapters/errors.py): an id conflict or a request Lambda (or
            # the client, before sending) refuses is the event's fault, so poison. Everything
            # else is retried: throttling, 5xx and the network are Lambda's, and a missing
            # alias, function or permission is the deployment's, which the redrive policy holds
            # until someone fixes it; the event is not to blame.
            kind, code = errors.kind(exc), errors.code(exc)
            if kind == errors.CONFLICT:
                raise PoisonMessage(
                    f"execution {name!r} of {workflow} already started with other input",
                    code=envelope.ID_CONFLICT,
                ) from None
            if kind == errors.REJECTED:
                raise PoisonMessage(
                    f"Lambda refused to start {workflow}: {code or type(exc).__name__}: {exc}",
                    code=envelope.LAMBDA_REJECTED,
                ) from None
            raise TransientError(str(exc), code=code or type(exc).__name__) from None
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
        # Attribute values come from headers and error messages: SQS refuses some characters.
        attributes = {k: _NOT_SQS_TEXT.sub("?", v) for k, v in attributes.items() if v}
        try:
            if _message_bytes(text, attributes) > SQS_MAX_MESSAGE_BYTES:
                text, attributes = self._fit(body, text, attributes)
            self.sqs.send_message(
                QueueUrl=self.settings.events_dlq_url,
                MessageBody=text,
                MessageAttributes={
                    k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()
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

    def _fit(
        self, body: bytes, text: str, attributes: dict[str, str]
    ) -> tuple[str, dict[str, str]]:
        """A dead letter too large for SQS (base64 grows a body by a third; attributes count):
        keep the body in the media bucket and send a pointer (claim check), or, without a
        bucket, send it truncated. Never a message SQS refuses: that would loop on 503."""
        bucket = self.settings.claim_check_bucket
        if bucket:
            day = datetime.now(UTC).strftime("%Y-%m-%d")
            # Content-addressed: a redelivery of the same body overwrites the same object.
            key = f"{DEAD_LETTER_PREFIX}{day}/{hashlib.sha256(body).hexdigest()}"
            self.s3.put_object(Bucket=bucket, Key=key, Body=body)
            return f"s3://{bucket}/{key}", {**attributes, "body_encoding": "s3"}
        attributes = {**attributes, "body_truncated": str(len(body))}
        budget = SQS_MAX_MESSAGE_BYTES - _attributes_bytes(attributes) - _SIZE_MARGIN
        if attributes["body_encoding"] == "base64":  # 4 characters per 3 bytes
            return base64.b64encode(body[: budget // 4 * 3]).decode("ascii"), attributes
        return text.encode()[:budget].decode("utf-8", "ignore"), attributes


def _attributes_bytes(attributes: Mapping[str, str]) -> int:
    """SQS counts each attribute's name, data type and value toward the message size."""
    return sum(len(k.encode()) + len("String") + len(v.encode()) for k, v in attributes.items())


def _message_bytes(text: str, attributes: Mapping[str, str]) -> int:
    return len(text.encode()) + _attributes_bytes(attributes)


def _sqs_body(body: bytes) -> tuple[str, str]:
    """The body as SQS can carry it: the text itself, or base64 when it is not valid SQS text."""
    if not body:  # SQS refuses an empty body
        return "-", "empty"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and _SQS_TEXT.fullmatch(text):
        return text, "text"
    return base64.b64encode(body).decode("ascii"), "base64"
