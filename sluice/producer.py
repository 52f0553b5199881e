"""The producer client: validate an event, then put it on the events queue (one or in batches).

The SQS client is injected (a boto3 client or anything with the same methods), so the CLI, the
tests and the workers share this code without it importing boto3.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sluice.catalog import is_routable
from sluice.envelope import MAX_BODY_BYTES, OVERSIZE, UNKNOWN_EVENT, Event, event_from_dict
from sluice.errors import PoisonMessage

SQS_BATCH_ENTRIES = 10


@dataclass
class BatchResult:
    """Ids of the events SQS accepted, and event id -> error for those it refused."""

    sent: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def validate(event: Event | Mapping[str, Any], *, max_bytes: int = MAX_BODY_BYTES) -> Event:
    """The event as the worker will see it; PoisonMessage (with its reason code) if it would be
    dead-lettered there: bad envelope, no workflow for its name, or too large."""
    ev = event if isinstance(event, Event) else event_from_dict(dict(event))
    if not is_routable(ev.name):
        raise PoisonMessage(f"no workflow handles event {ev.name!r}", code=UNKNOWN_EVENT)
    size = len(ev.to_json().encode())
    if size > max_bytes:
        raise PoisonMessage(
            f"event {ev.id} is {size} bytes (limit {max_bytes}): pass large data by S3 reference",
            code=OVERSIZE,
        )
    return ev


def _attributes(ev: Event) -> dict[str, dict[str, str]]:
    # sqsd forwards these as X-Aws-Sqsd-Attr-* headers: the worker logs the correlation id
    # before it has parsed the body.
    return {
        "correlation_id": {"DataType": "String", "StringValue": ev.correlation_id},
        "event_name": {"DataType": "String", "StringValue": ev.name},
    }


def send_event(sqs: Any, queue_url: str, event: Event | Mapping[str, Any]) -> str:
    """Validate and send one event; the SQS MessageId."""
    ev = validate(event)
    answer = sqs.send_message(
        QueueUrl=queue_url, MessageBody=ev.to_json(), MessageAttributes=_attributes(ev)
    )
    return str(answer["MessageId"])


def send_events(
    sqs: Any, queue_url: str, events: Iterable[Event | Mapping[str, Any]]
) -> BatchResult:
    """Validate every event first (nothing is sent if one is invalid), then send in batches of
    up to 10 entries within SQS's batch size limit."""
    valid = [validate(e) for e in events]
    result = BatchResult()
    batch: list[Event] = []
    size = 0
    for ev in valid:
        body = len(ev.to_json().encode())
        if batch and (len(batch) == SQS_BATCH_ENTRIES or size + body > MAX_BODY_BYTES):
            _send_batch(sqs, queue_url, batch, result)
            batch, size = [], 0
        batch.append(ev)
        size += body
    if batch:
        _send_batch(sqs, queue_url, batch, result)
    return result


def _send_batch(sqs: Any, queue_url: str, batch: list[Event], result: BatchResult) -> None:
    entries = [
        {
            "Id": str(i),
            "MessageBody": ev.to_json(),
            "MessageAttributes": _attributes(ev),
        }
        for i, ev in enumerate(batch)
    ]
    answer = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    for ok in answer.get("Successful", []):
        result.sent.append(batch[int(ok["Id"])].id)
    for bad in answer.get("Failed", []):
        result.failed[batch[int(bad["Id"])].id] = f"{bad.get('Code')}: {bad.get('Message', '')}"
