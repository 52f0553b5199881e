"""What a route of the worker's WSGI app takes and returns (worker/app.py serves them).

Its own module so that route providers (worker/scheduler/cron_http.py) and the app import it
without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes
    # sqsd's X-Aws-Sqsd-* headers, lower case, without the prefix: msgid, receive-count, attr-*…
    sqsd: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    status: int
    body: Mapping[str, Any]


Handler = Callable[[Request], Response]
