"""The event and task envelopes: parsing, validation, ids and durable execution names."""

from __future__ import annotations

import hashlib
import json
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
_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces
_NAME = re.compile(r"^[a-z][a-z0-9-]*(/[a-z0-9][a-z0-9._-]*)+$")
_EXECUTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Poison reasons (the `reason` message attribute on the DLQ).
MALFORMED_JSON = "malformed_json"
INVALID_UTF8 = "invalid_utf8"
SCHEMA_VIOLATION = "schema_violation"
UNKNOWN_EVENT = "unknown_event"
ID_CONFLICT = "id_conflict"
OVERSIZE = "oversize"


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

    An id that already fits is used as is, so the execution is found by the id an operator sees;
    any other id becomes a readable prefix plus a hash of the whole id, so distinct ids never share
    a name.
    """
    if _EXECUTION_NAME.match(event_id):
        return event_id
    digest = hashlib.sha256(event_id.encode()).hexdigest()[:32]
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", event_id)[:29]
    return f"{readable}--{digest}"


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

    @property
    def execution_name(self) -> str:
        return execution_name(self.id)

    @property
    def fingerprint(self) -> str:
        """A hash of what the event asks for (name and data), to detect id conflicts."""
        canonical = json.dumps({"name": self.name, "data": self.data}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


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
    if doc.get("v") != VERSION:
        raise _poison(SCHEMA_VIOLATION, f"unsupported envelope version v={doc.get('v')!r}")
    if doc.get("kind") != kind:
        raise _poison(SCHEMA_VIOLATION, f"kind must be {kind!r}, got {doc.get('kind')!r}")
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _poison(SCHEMA_VIOLATION, f"name must look like 'area/thing.verb', got {name!r}")
    if not isinstance(doc.get("data"), dict):
        raise _poison(SCHEMA_VIOLATION, "data must be a JSON object")
    corr = doc.get("correlation_id")
    if not isinstance(corr, str) or not _ID.match(corr):
        raise _poison(SCHEMA_VIOLATION, "correlation_id must be 1-128 printable ASCII characters")


def _check_event(doc: Any) -> None:
    _check_common(doc, "event")
    if not isinstance(doc.get("id"), str) or not _ID.match(doc["id"]):
        raise _poison(SCHEMA_VIOLATION, "id must be 1-128 printable ASCII characters")
    ts = doc.get("ts")
    try:
        parsed = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if not isinstance(ts, str) or parsed is None or parsed.tzinfo is None:
        raise _poison(SCHEMA_VIOLATION, f"ts must be an ISO 8601 time with a zone, got {ts!r}")
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
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _poison(MALFORMED_JSON, f"body is not JSON: {exc.msg} at {exc.pos}") from None


def event_from_dict(doc: Any) -> Event:
    _check_event(doc)
    return Event(
        name=doc["name"],
        data=doc["data"],
        id=doc["id"],
        ts=doc["ts"],
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

    S3's test event (sent when the notification is configured) yields no events.
    """
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
