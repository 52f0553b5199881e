"""Step post_webhook: POST one event's payload to the customer's endpoint, once.

The URL must be https (plain http only to a loopback address: tests and local runs). Redirects
are not followed. The answer classifies the failure for the workflow's retries: a connection
error, a timeout, 408, 429 or a 5xx is transient (retried with backoff); any other status below
200 or from 300 up is the endpoint refusing the delivery, a business error (not retried).
The body is `{"id", "name", "data"}`; `Idempotency-Key` carries the event id, so an endpoint can
drop the repeat a retry after a lost answer sends.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from lambdas.common.runtime import require, step_handler
from sluice.errors import BusinessError, TransientError

TIMEOUT_S = 10.0
USER_AGENT = "sluice-webhook/1"
TRANSIENT_STATUSES = frozenset({408, 425, 429})
# What is kept of the endpoint's answer in an error message.
ANSWER_CHARS = 300


def check_url(url: str) -> str:
    """`url` if it may be posted to: https, or http to a loopback address; else BusinessError."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and _loopback(host):
        return url
    raise BusinessError(
        f"webhook URL must be https (http only to loopback), got {url[:200]!r}", code="bad_url"
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx comes back as the answer (HTTPError), not followed


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(
    url: str, body: Mapping[str, Any], *, idempotency_key: str, timeout_s: float = TIMEOUT_S
) -> int:
    """POST `body` as JSON to `url`; its 2xx status, or the failure classified."""
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked: https or loopback http
        check_url(url),
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Idempotency-Key": idempotency_key,
        },
    )
    try:
        with _OPENER.open(request, timeout=timeout_s) as answer:
            status = int(answer.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
        text = exc.read(ANSWER_CHARS).decode("utf-8", "replace") if exc.fp else ""
        message = f"{urlsplit(url).netloc} answered {status}: {text}".strip()
        if status >= 500 or status in TRANSIENT_STATUSES:
            raise TransientError(message, code="webhook_unavailable") from None
        raise BusinessError(message, code="webhook_refused") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientError(
            f"{urlsplit(url).netloc} unreachable: {reason}", code="webhook_unreachable"
        ) from None
    if not 200 <= status < 300:
        raise BusinessError(f"{urlsplit(url).netloc} answered {status}", code="webhook_refused")
    return status


def deliver(payload: Mapping[str, Any]) -> dict[str, Any]:
    url, event_id, name = require(payload, "url", "event_id", "event_name")
    status = post(
        str(url),
        {"id": event_id, "name": name, "data": payload.get("payload")},
        idempotency_key=str(event_id),
    )
    return {"job_id": payload.get("job_id"), "status_code": status}


handler = step_handler("post_webhook")(deliver)
