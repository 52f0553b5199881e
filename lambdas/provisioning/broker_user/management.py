"""RabbitMQ's management HTTP API: the calls that make, update and remove one broker user.

Amazon MQ creates only the administrator; every other RabbitMQ user is made through this API
(https on the broker's host). Both calls that make a user are PUTs, which RabbitMQ treats as
create-or-replace, so making the same user again is harmless.
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
    """The management API at `base_url` (e.g. https://b-….mq.<region>.amazonaws.com), called
    as an administrator."""

    def __init__(self, base_url: str, username: str, password: str, *, timeout_s: float = 10):
        self.base_url = base_url.rstrip("/")
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> int:
        request = urllib.request.Request(  # noqa: S310 - the broker's own https (http in tests)
            self.base_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": self._auth, "Content-Type": "application/json"},
        )
        call = f"{method} {path}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:  # noqa: S310
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            if method == "DELETE" and exc.code == 404:
                return 404
            # RabbitMQ's error body is {"error": …, "reason": …}: no credentials in it.
            raise ManagementError(call, exc.code, exc.read(500).decode(errors="replace")) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ManagementError(call, None, str(reason)) from None

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
        return self._call("DELETE", f"/api/users/{quote(name, safe='')}") != 404
