"""The event and task envelopes: parsing, validation, ids and durable execution names."""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from sluice.errors import PoisonMessage

VERSION = 1
# SQS accepts up to 256 KiB by default; larger payloads travel by S3 reference.
MAX_BODY_BYTES = 256 * 1024
# The largest input Lambda accepts for an asynchronous invocation, which is how the worker starts
# a durable execution (botocore's Lambda model, Invoke `Payload`: "The maximum payload size is
# 6 MB for synchronous invocations and 1 MB for asynchronous invocations"; GetDurableExecution
# `InputPayload`: "Asynchronous invocations support up to 1 MB"). Counted as 10^6 bytes, under
# either megabyte.
MAX_ASYNC_PAYLOAD_BYTES = 1_000_000
# Always used with fullmatch: `$` also matches before a final "\n", and an id ending in a
# newline would be written raw into the Invoke request's header (issue 12).
_ID = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
_NAME = re.compile(r"[a-z][a-z0-9-]*(/[a-z0-9][a-z0-9._-]*)+")
_EXECUTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Separates the readable part of a derived execution name from its hash. An id containing it is
# always hashed, so no id can be spelled like another id's derived name.
_NAME_HASH_SEPARATOR = "--"
# Deeper JSON is refused: Python's decoder and encoder recurse, and an event this deep is not an
# event. Far above any real envelope, far below the interpreter's recursion limit.
MAX_JSON_DEPTH = 64

# Poison reasons (the `reason` message attribute on the DLQ).
MALFORMED_JSON = "malformed_json"
INVALID_UTF8 = "invalid_utf8"
SCHEMA_VIOLATION = "schema_violation"
UNKNOWN_EVENT = "unknown_event"
ID_CONFLICT = "id_conflict"
OVERSIZE = "oversize"
LAMBDA_REJECTED = "lambda_rejected"  # Lambda refused the request itself (400/413): see dispatch


def _poison(code: str, message: str) -> PoisonMessage:
    return PoisonMessage(message, code=code)


def new_id() -> str:
    """A fresh, time-ordered event id (UUIDv7-like: sortable, 32 hex chars)."""
    ms = int(datetime.now(UTC).timestamp() * 1000)
    return f"{ms:012x}{uuid.uuid4().hex[:20]}"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def execution_name(event_id: str) -> str:
    """The durable execution name for an event id: deterministic, 1-64 chars of [A-Za-z0-9_-].

    An id that already fits (and holds no `--`) is used as is, so the execution is found by the id
    an operator sees; any other id becomes a readable prefix, `--` and a hash of the whole id. A
    name used as is never contains `--` and a derived one always does, so distinct ids never share
    a name (short of a 128-bit hash collision).
    """
    if _EXECUTION_NAME.fullmatch(event_id) and _NAME_HASH_SEPARATOR not in event_id:
        return event_id
    digest = hashlib.sha256(event_id.encode()).hexdigest()[:32]
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", event_id)[:29]
    return f"{readable}{_NAME_HASH_SEPARATOR}{digest}"


@dataclass(frozen=True)
class Event:
    """One event on the events queue."""

    name: str
    data: Mapping[str, Any]
    id: str = field(default_factory=new_id)
    ts: str = field(default_factory=utc_now)
    correlation_id: str = ""

    def __post_init__(self) -> None:
        if not self.correlation_id:
            object.__setattr__(self, "correlation_id", self.id)
        _check_event(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "kind": "event",
            "id": self.id,
            "name": self.name,
            "ts": self.ts,
            "data": dict(self.data),
            "correlation_id": self.correlation_id,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    def start_payload(self) -> bytes:
        """The durable execution's input: the envelope without `ts`, canonical JSON.

        Lambda starts a name once and answers a repeat with the same input with the existing
        execution, but a repeat with other input is a conflict. A scheduler tick, a cron POST or
        a retried notify_user re-sends an event with its id and a new timestamp: the input must
        not depend on when the event was sent, only on what it asks for (id, name, data,
        correlation id). Workflows read it with `event_from_dict(..., ts_required=False)`.
        """
        doc = self.to_dict()
        del doc["ts"]
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @property
    def execution_name(self) -> str:
        return execution_name(self.id)


@dataclass(frozen=True)
class Task:
    """One heavy task on the tasks queue, answered through a durable callback."""

    name: str
    callback_id: str
    data: Mapping[str, Any]
    correlation_id: str

    def __post_init__(self) -> None:
        _check_task(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "kind": "task",
            "name": self.name,
            "callback_id": self.callback_id,
            "data": dict(self.data),
            "correlation_id": self.correlation_id,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)


def _check_common(doc: Any, kind: str) -> None:
    if not isinstance(doc, dict):
        raise _poison(SCHEMA_VIOLATION, f"a {kind} must be a JSON object, got {type(doc).__name__}")
    if type(doc.get("v")) is not int or doc["v"] != VERSION:  # True == 1 in Python
        raise _poison(SCHEMA_VIOLATION, f"unsupported envelope version v={doc.get('v')!r}")
    if doc.get("kind") != kind:
        raise _poison(SCHEMA_VIOLATION, f"kind must be {kind!r}, got {doc.get('kind')!r}")
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _poison(SCHEMA_VIOLATION, f"name must look like 'area/thing.verb', got {name!r}")
    if not isinstance(doc.get("data"), dict):
        raise _poison(SCHEMA_VIOLATION, "data must be a JSON object")
    corr = doc.get("correlation_id")
    if not isinstance(corr, str) or not _ID.fullmatch(corr):
        raise _poison(SCHEMA_VIOLATION, "correlation_id must be 1-128 printable ASCII characters")


def _check_event(doc: Any, *, ts_required: bool = True) -> None:
    _check_common(doc, "event")
    if not isinstance(doc.get("id"), str) or not _ID.fullmatch(doc["id"]):
        raise _poison(SCHEMA_VIOLATION, "id must be 1-128 printable ASCII characters")
    if not ts_required and "ts" not in doc:  # a start payload (Event.start_payload)
        return _check_fields(doc)
    ts = doc.get("ts")
    try:
        parsed = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if not isinstance(ts, str) or parsed is None or parsed.tzinfo is None:
        raise _poison(SCHEMA_VIOLATION, f"ts must be an ISO 8601 time with a zone, got {ts!r}")
    _check_fields(doc)


def _check_fields(doc: dict[str, Any]) -> None:
    extra = set(doc) - {"v", "kind", "id", "name", "ts", "data", "correlation_id"}
    if extra:
        raise _poison(SCHEMA_VIOLATION, f"unknown fields: {sorted(extra)}")


def _check_task(doc: Any) -> None:
    _check_common(doc, "task")
    cb = doc.get("callback_id")
    if not isinstance(cb, str) or not cb:
        raise _poison(SCHEMA_VIOLATION, "callback_id must be a non-empty string")


def decode(body: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> Any:
    """Bytes to a JSON document, or PoisonMessage naming why not."""
    if len(body) > max_bytes:
        raise _poison(OVERSIZE, f"body of {len(body)} bytes exceeds {max_bytes}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _poison(
            INVALID_UTF8, f"body is not UTF-8: {exc.reason} at byte {exc.start}"
        ) from None
    try:
        doc = json.loads(text, parse_constant=_not_json, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise _poison(MALFORMED_JSON, f"body is not JSON: {exc.msg} at {exc.pos}") from None
    except RecursionError:
        raise _poison(MALFORMED_JSON, f"JSON nested deeper than {MAX_JSON_DEPTH}") from None
    except ValueError as exc:  # an integer past Python's digit limit, NaN, Infinity, 1e400
        raise _poison(MALFORMED_JSON, f"body is not JSON we can carry: {exc}"[:300]) from None
    if _depth_exceeds(doc, MAX_JSON_DEPTH):
        raise _poison(MALFORMED_JSON, f"JSON nested deeper than {MAX_JSON_DEPTH}")
    return doc


def _not_json(constant: str) -> Any:
    """NaN, Infinity, -Infinity: Python's json reads them, JSON has no such values."""
    raise ValueError(f"{constant} is not a JSON value")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # 1e400 reads as inf and would be re-sent as Infinity
        raise ValueError(f"{literal[:40]} is out of a double's range")
    return value


def _depth_exceeds(doc: Any, limit: int) -> bool:
    """Whether containers nest deeper than `limit` (iterative: deep input cannot recurse)."""
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def event_from_dict(doc: Any, *, ts_required: bool = True) -> Event:
    """The event `doc` holds; `ts_required=False` also accepts a start payload (no `ts`)."""
    _check_event(doc, ts_required=ts_required)
    return Event(
        name=doc["name"],
        data=doc["data"],
        id=doc["id"],
        ts=doc.get("ts") or utc_now(),
        correlation_id=doc["correlation_id"],
    )


def task_from_dict(doc: Any) -> Task:
    _check_task(doc)
    return Task(
        name=doc["name"],
        callback_id=doc["callback_id"],
        data=doc["data"],
        correlation_id=doc["correlation_id"],
    )


def parse_task(body: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> Task:
    return task_from_dict(decode(body, max_bytes=max_bytes))


def is_s3_notification(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and isinstance(doc.get("Records"), list)
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:s3" for r in doc["Records"])
    ) or (isinstance(doc, dict) and doc.get("Event") == "s3:TestEvent")


def events_from_s3_notification(doc: Mapping[str, Any]) -> list[Event]:
    """S3 ObjectCreated records as `media/uploaded` events; the id is stable per object version.

    S3's test event (sent when the notification is configured) yields no events; so do records
    of other event types. A notification without records is no notification S3 sends: poison.
    """
    if doc.get("Event") != "s3:TestEvent" and not doc.get("Records"):
        raise _poison(SCHEMA_VIOLATION, "S3 notification without records")
    events = []
    for record in doc.get("Records", []):
        if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
            continue
        try:
            bucket = record["s3"]["bucket"]["name"]
            obj = record["s3"]["object"]
            key = unquote_plus(obj["key"])
        except (KeyError, TypeError):
            raise _poison(SCHEMA_VIOLATION, "S3 record without bucket name or object key") from None
        version = obj.get("versionId") or obj.get("eTag") or obj.get("sequencer") or ""
        digest = hashlib.sha256(f"{bucket}\0{key}\0{version}".encode()).hexdigest()[:40]
        data = {"bucket": bucket, "key": key, "size": obj.get("size")}
        if obj.get("versionId"):
            data["version_id"] = obj["versionId"]
        events.append(
            Event(
                name="media/uploaded",
                data=data,
                id=f"s3-{digest}",
                ts=record.get("eventTime") or utc_now(),
            )
        )
    return events


def parse_events(body: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> list[Event]:
    """An SQS message body to the events it carries (one envelope, or S3 notification records)."""
    doc = decode(body, max_bytes=max_bytes)
    if is_s3_notification(doc):
        return events_from_s3_notification(doc)
    return [event_from_dict(doc)]
