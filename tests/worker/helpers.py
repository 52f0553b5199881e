"""Requests shaped like sqsd's, and events to put in them."""

from __future__ import annotations

import http.client
import json
import uuid
from typing import Any
from urllib.parse import urlsplit

from sluice.envelope import Event


def event(name: str = "media/transcription.requested", **data: Any) -> Event:
    return Event(name=name, data=data or {"bucket": "media", "key": "uploads/sermon.mp3"})


def sqsd_headers(msgid: str, *, receive_count: int = 1, **attributes: str) -> dict[str, str]:
    """The headers sqsd sends with every POST (Elastic Beanstalk's worker tier documentation)."""
    headers = {
        "User-Agent": "aws-sqsd/3.0.4",
        "Content-Type": "application/json",
        "X-Aws-Sqsd-Msgid": msgid,
        "X-Aws-Sqsd-Queue": "Sluice-test-events",
        "X-Aws-Sqsd-First-Received-At": "2026-11-23T10:00:00Z",
        "X-Aws-Sqsd-Receive-Count": str(receive_count),
        "X-Aws-Sqsd-Sender-Id": "AIDAEXAMPLE",
    }
    for name, value in attributes.items():
        headers[f"X-Aws-Sqsd-Attr-{name}"] = value
    return headers


def new_msgid() -> str:
    return str(uuid.uuid4())


def post(
    base_url: str,
    body: bytes,
    *,
    msgid: str | None = None,
    receive_count: int = 1,
    path: str = "/",
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """One request like sqsd's; (status, JSON answer)."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(
            method,
            path,
            body,
            headers or sqsd_headers(msgid or new_msgid(), receive_count=receive_count),
        )
        answer = conn.getresponse()
        raw = answer.read()
        return answer.status, json.loads(raw) if raw else {}
    finally:
        conn.close()


def s3_notification(
    bucket: str, key: str, etag: str, event_name: str = "ObjectCreated:Put"
) -> bytes:
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "awsRegion": "eu-west-1",
                    "eventTime": "2026-11-23T10:00:00.000Z",
                    "eventName": event_name,
                    "s3": {
                        "s3SchemaVersion": "1.0",
                        "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                        "object": {"key": key, "size": 1024, "eTag": etag, "sequencer": "0A1B"},
                    },
                }
            ]
        }
    ).encode()
