"""moto's server on a free loopback port, for the local pipeline and the tests that talk to AWS
over HTTP (other processes, or clients that must not be patched in-process)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from moto.server import ThreadedMotoServer

from devtools.ports import free_port


class _OneAtATime:
    """A WSGI app answering one DynamoDB request at a time. moto's backends take no locks, so two
    concurrent conditional writes to one DynamoDB item can both pass their condition; DynamoDB
    applies each conditional write atomically ("conditional writes are ... idempotent" and
    checked against the item's latest state: DynamoDB developer guide, "Condition expressions").
    Other services' requests go through as they come: an SQS long poll holds its request for
    its whole wait, and would hold every DynamoDB call behind it."""

    def __init__(self, app: Any) -> None:
        self.app, self.lock = app, threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> Any:
        # DynamoDB's JSON protocol names the operation in X-Amz-Target: DynamoDB_20120810.<Op>.
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            return self.app(environ, start_response)
        # The body is read before the lock: a client stopped mid-request (SIGSTOP in the fault
        # tests) must not hold up everyone else.
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"] = io.BytesIO(environ["wsgi.input"].read(length) if length else b"")
        with self.lock:
            return list(self.app(environ, start_response))


class _AtomicMotoServer(ThreadedMotoServer):
    def _server_entry(self) -> None:
        from moto.moto_server.threaded_moto_server import MotoRequestHandler
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        app = _OneAtATime(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


@contextmanager
def moto_server(*, atomic: bool = False) -> Iterator[str]:
    """Run moto's server (in a thread) while the block runs; its URL. `atomic`: DynamoDB
    requests are served one at a time (other services' as they come), so conditional writes
    that race behave as DynamoDB's do."""
    port = free_port()
    kind = _AtomicMotoServer if atomic else ThreadedMotoServer
    server = kind(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
