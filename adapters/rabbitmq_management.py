"""RabbitMQ's management HTTP API (https on an Amazon MQ broker's host), the one client of it:
the provisioning Lambda makes, updates and removes the scheduler's broker user with it
(lambdas/provisioning/broker_user), and the scheduler reads the nodes' memory, disk and resource
alarms with it (worker/scheduler/broker_metrics.py).

Amazon MQ creates only the administrator; every other RabbitMQ user is made through this API.
Both calls that make a user are PUTs, which RabbitMQ treats as create-or-replace, so making the
same user again is harmless. A failed call raises ManagementError, whose message names the call
and never a password.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote


@dataclass(frozen=True)
class User:
    """A broker user with its tags (comma-separated) and its permissions on one vhost."""

    name: str
    password: str
    tags: str
    vhost: str
    configure: str
    write: str
    read: str


class ManagementError(RuntimeError):
    """A management API call failed; the message names the call, never a password."""

    def __init__(self, call: str, status: int | None, detail: str) -> None:
        self.status = status
        answer = f"answered {status}" if status is not None else "cannot reach the API"
        super().__init__(f"{call}: {answer}: {detail}")


class Management:
    """The management API at `base_url` (e.g. https://b-….mq.<region>.amazonaws.com), called as
    `username` (an administrator to manage users; a `monitoring` user can read)."""

    def __init__(self, base_url: str, username: str, password: str, *, timeout_s: float = 10):
        self.base_url = base_url.rstrip("/")
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self.timeout_s = timeout_s

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        answers: tuple[int, ...] = (),
    ) -> tuple[int, bytes]:
        """(status, body) of a call; an error status raises ManagementError unless `answers`
        lists it (a DELETE's 404, a health check's 503: both are answers, not failures)."""
        request = urllib.request.Request(  # noqa: S310 - the broker's own https (http in tests)
            self.base_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": self._auth, "Content-Type": "application/json"},
        )
        call = f"{method} {path}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:  # noqa: S310
                return int(answer.status), answer.read()
        except urllib.error.HTTPError as exc:
            with exc:
                if exc.code in answers:
                    return exc.code, exc.read()
                # RabbitMQ's error body is {"error": …, "reason": …}: no credentials in it.
                detail = exc.read(500).decode(errors="replace")
            raise ManagementError(call, exc.code, detail) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ManagementError(call, None, str(reason)) from None

    def get(self, path: str, *, answers: tuple[int, ...] = ()) -> Any:
        """GET `path` as JSON (`answers`: error statuses whose body is the answer too, as a
        health check's 503 is)."""
        _status, body = self._call("GET", path, answers=answers)
        return json.loads(body or b"null")

    def put_user(self, user: User) -> None:
        """Create `user`, or set its password, tags and permissions to these."""
        name = quote(user.name, safe="")
        self._call("PUT", f"/api/users/{name}", {"password": user.password, "tags": user.tags})
        self._call(
            "PUT",
            f"/api/permissions/{quote(user.vhost, safe='')}/{name}",
            {"configure": user.configure, "write": user.write, "read": user.read},
        )

    def delete_user(self, name: str) -> bool:
        """Remove user `name` (its permissions go with it); False when there was none."""
        status, _ = self._call("DELETE", f"/api/users/{quote(name, safe='')}", answers=(404,))
        return status != 404
