"""A local stand-in for Lambda's Invoke endpoint with durable-execution naming semantics.

moto does not implement `DurableExecutionName`; this server does, as FACTS.md records it: a new
name starts an execution (202 + X-Amz-Durable-Execution-Arn), the same name with the same payload
returns the existing execution, the same name with another payload is a 409
DurableExecutionAlreadyStartedException. Answers can be scripted per execution name (throttled,
5xx, 400/413) to exercise the worker's retry path, and `Faults` injects them at random, with
timeouts and dropped connections before and after the start took effect (tests/chaos). Error
types and statuses are those of botocore's Lambda model for Invoke (tests check them). Used by
the worker tests, the benchmark and `make local`; point boto3 at it with AWS_ENDPOINT_URL_LAMBDA.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

# Scripted answers: (HTTP status, error type).
THROTTLED = (429, "TooManyRequestsException")
SERVICE_ERROR = (500, "ServiceException")
INVALID_REQUEST = (400, "InvalidRequestContentException")
TOO_LARGE = (413, "RequestTooLargeException")
_PREFIX = "/2015-03-31/functions/"
# Injected faults that are not an answer: the client's read times out, or the connection drops.
TIMEOUT_BEFORE_START = "timeout_before_start"
TIMEOUT_AFTER_START = "timeout_after_start"
DROP_BEFORE_START = "drop_before_start"
DROP_AFTER_START = "drop_after_start"


@dataclass
class Faults:
    """Random faults on a share `rate` of Invoke requests, drawn evenly from `kinds` (a seeded
    RNG); a timeout holds the answer `timeout_s` (longer than the client waits)."""

    rate: float = 0.3
    seed: int = 0
    timeout_s: float = 1.5
    kinds: tuple[Any, ...] = (
        THROTTLED,
        SERVICE_ERROR,
        TIMEOUT_BEFORE_START,
        TIMEOUT_AFTER_START,
        DROP_BEFORE_START,
        DROP_AFTER_START,
    )
    injected: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # noqa: S311 - reproducible faults, not secrets
        self._lock = threading.Lock()

    def draw(self) -> Any:
        with self._lock:
            if self._rng.random() >= self.rate:
                return None
            kind = self._rng.choice(self.kinds)
            self.injected[kind if isinstance(kind, str) else kind[1]] += 1
            return kind


@dataclass(frozen=True)
class Invocation:
    """One Invoke request as Lambda received it."""

    function_name: str
    invocation_type: str
    execution_name: str
    payload: bytes

    def json(self) -> Any:
        return json.loads(self.payload)


class LocalLambda:
    """Thread-safe state of the fake: executions by (function, name), requests, scripted answers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Invocation] = []
        self.executions: dict[tuple[str, str], bytes] = {}
        self.script: dict[str, deque[tuple[int, str]]] = defaultdict(deque)
        # execution name -> an answer it always gets (a request Lambda can never accept)
        self.always: dict[str, tuple[int, str]] = {}
        self.faults: Faults | None = None
        self.unsigned = 0  # requests without Authorization or Host
        self.record = True

    def fail(self, execution_name: str, *answers: tuple[int, str]) -> None:
        """The next invocations named `execution_name` get `answers` (then normal service)."""
        with self.lock:
            self.script[execution_name].extend(answers)

    def started(self) -> dict[tuple[str, str], Any]:
        """(function, execution name) -> the payload of every execution started."""
        with self.lock:
            return {key: json.loads(p) for key, p in self.executions.items()}

    def answer(self, call: Invocation) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            if self.record:
                self.requests.append(call)
            scripted = self.script.get(call.execution_name)
            if scripted:
                status, kind = scripted.popleft()
                return _error(status, kind, f"scripted {kind}")
            if call.execution_name in self.always:
                status, kind = self.always[call.execution_name]
                return _error(status, kind, f"scripted {kind}")
            return self._start(call)

    def _start(self, call: Invocation) -> tuple[int, dict[str, str], bytes]:
        """Start, or find, the execution (the caller holds the lock)."""
        key = (call.function_name, call.execution_name)
        arn = f"{call.function_name}/durable-execution/{call.execution_name}/local"
        known = self.executions.get(key)
        if known is None:
            self.executions[key] = call.payload
        elif known != call.payload:
            return _error(
                409,
                "DurableExecutionAlreadyStartedException",
                f"execution {call.execution_name} already started with other input",
            )
        return 202, {"X-Amz-Durable-Execution-Arn": arn, "X-Amz-Executed-Version": "1"}, b""


def _error(status: int, kind: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"Type": "User", "message": message}).encode()
    return status, {"x-amzn-ErrorType": kind, "Content-Type": "application/json"}, body


def serve(state: LocalLambda, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Start serving `state` in a daemon thread; `server.server_address` has the bound port."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            payload = self.rfile.read(length)
            path = self.path.split("?", 1)[0]
            if not (self.headers.get("Authorization") and self.headers.get("Host")):
                # what Lambda answers a request that lost its signature (e.g. split in two)
                state.unsigned += 1
                self._send(*_error(403, "MissingAuthenticationTokenException", "unsigned"))
                return
            if not (path.startswith(_PREFIX) and path.endswith("/invocations")):
                self._send(*_error(404, "ResourceNotFoundException", f"no route {path}"))
                return
            call = Invocation(
                function_name=unquote(path[len(_PREFIX) : -len("/invocations")]),
                invocation_type=self.headers.get("X-Amz-Invocation-Type", "RequestResponse"),
                execution_name=self.headers.get("X-Amz-Durable-Execution-Name", ""),
                payload=payload,
            )
            fault = state.faults.draw() if state.faults else None
            if isinstance(fault, tuple):  # an error answer (throttle, 5xx)
                self._send(*_error(fault[0], fault[1], f"injected {fault[1]}"))
                return
            if fault in (TIMEOUT_BEFORE_START, DROP_BEFORE_START):
                self._fail(fault, state)  # the start never took effect
                return
            answer = state.answer(call)
            if fault in (TIMEOUT_AFTER_START, DROP_AFTER_START):
                self._fail(fault, state)  # it did, but the client never hears so
                return
            self._send(*answer)

        def _fail(self, fault: str, state: LocalLambda) -> None:
            if fault in (TIMEOUT_BEFORE_START, TIMEOUT_AFTER_START):
                assert state.faults is not None
                time.sleep(state.faults.timeout_s)
            self.close_connection = True  # no answer: the connection just closes

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="local-lambda").start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--no-record", action="store_true", help="keep no request log (benchmarks)")
    args = parser.parse_args()
    state = LocalLambda()
    state.record = not args.no_record
    server = serve(state, port=args.port)
    print(f"local Lambda on http://127.0.0.1:{server.server_address[1]}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
