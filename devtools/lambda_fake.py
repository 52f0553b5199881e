"""Lambda's Invoke endpoint with durable-execution naming semantics, scriptable, with faults.

moto does not implement `DurableExecutionName`. `DurableStarts` is the one implementation here of
what Lambda does with it (Lambda's Invoke API, `DurableExecutionName`): a new name starts an execution (202 +
X-Amz-Durable-Execution-Arn), the same name with the same payload returns the existing execution,
the same name with another payload is a 409 DurableExecutionAlreadyStartedException. Two
endpoints use it: `LocalLambda` below (executions are only recorded) and
`devtools.durable_lambda` (executions run in AWS's durable test runner).

`LocalLambda`'s answers can be scripted per execution name (throttled, 5xx, 400/413) to exercise
the worker's retry path, and `Faults` injects them at random, with timeouts and dropped
connections before and after the start took effect (tests/chaos). Error types and statuses are
those of botocore's Lambda model for Invoke (tests check them). Used by the worker tests and the
benchmark (`python -m devtools.lambda_fake`); point boto3 at it with AWS_ENDPOINT_URL_LAMBDA.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

# Scripted answers: (HTTP status, error type).
THROTTLED = (429, "TooManyRequestsException")
SERVICE_ERROR = (500, "ServiceException")
INVALID_REQUEST = (400, "InvalidRequestContentException")
TOO_LARGE = (413, "RequestTooLargeException")
# Invoke: POST /2015-03-31/functions/<function>/invocations
INVOKE_PREFIX = "/2015-03-31/functions/"
INVOKE_SUFFIX = "/invocations"
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


Answer = tuple[int, dict[str, str], bytes]  # HTTP status, headers, body


@dataclass(frozen=True)
class Invocation:
    """One Invoke request as Lambda received it."""

    function_name: str
    invocation_type: str
    execution_name: str
    payload: bytes

    def json(self) -> Any:
        return json.loads(self.payload)


def invoked_function(path: str) -> str | None:
    """The function an Invoke request's path names (as sent: a name, `NAME:live` or an ARN);
    None when the path is not Invoke's (`POST /2015-03-31/functions/<function>/invocations`)."""
    path = path.split("?", 1)[0]
    if not (path.startswith(INVOKE_PREFIX) and path.endswith(INVOKE_SUFFIX)):
        return None
    return unquote(path[len(INVOKE_PREFIX) : -len(INVOKE_SUFFIX)])


def invocation(
    function_name: str, headers: Message | Mapping[str, str], payload: bytes
) -> Invocation:
    """The Invoke request of `function_name` with these HTTP headers and body."""
    return Invocation(
        function_name=function_name,
        invocation_type=headers.get("X-Amz-Invocation-Type") or "RequestResponse",
        execution_name=headers.get("X-Amz-Durable-Execution-Name") or "",
        payload=payload,
    )


def send_answer(handler: BaseHTTPRequestHandler, answer: Answer) -> None:
    """Write `answer` (status, headers, body) as the HTTP response of `handler`'s request."""
    status, headers, body = answer
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def error(status: int, kind: str, message: str) -> Answer:
    """An error answer as Lambda sends it (botocore reads the type from x-amzn-ErrorType)."""
    body = json.dumps({"Type": "User", "message": message}).encode()
    return status, {"x-amzn-ErrorType": kind, "Content-Type": "application/json"}, body


@dataclass
class Started:
    payload: bytes
    arn: str


class DurableStarts:
    """Lambda's durable-execution start semantics, by (function, execution name); thread-safe.

    `start(call)` begins a new execution and returns its ARN; it runs under the lock, so two
    requests with one name never start two executions.
    """

    def __init__(self, start: Callable[[Invocation], str]) -> None:
        self._start = start
        self._lock = threading.Lock()
        self.started: dict[tuple[str, str], Started] = {}

    def answer(self, call: Invocation) -> Answer:
        """Start, or find, the execution `call` names: Lambda's answer to it."""
        key = (call.function_name, call.execution_name)
        with self._lock:
            known = self.started.get(key)
            if known is None:
                known = self.started[key] = Started(call.payload, self._start(call))
            elif known.payload != call.payload:
                return error(
                    409,
                    "DurableExecutionAlreadyStartedException",
                    f"execution {call.execution_name} already started with other input",
                )
        return 202, {"X-Amz-Durable-Execution-Arn": known.arn, "X-Amz-Executed-Version": "1"}, b""

    def executions(self) -> list[tuple[str, str, Started]]:
        """(function, execution name, start) of every execution started, in start order."""
        with self._lock:
            return [(f, n, s) for (f, n), s in self.started.items()]


class LocalLambda:
    """Thread-safe state of the fake: executions by (function, name), requests, scripted answers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Invocation] = []
        self.starts = DurableStarts(
            lambda call: f"{call.function_name}/durable-execution/{call.execution_name}/local"
        )
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
        return {(f, n): json.loads(s.payload) for f, n, s in self.starts.executions()}

    def answer(self, call: Invocation) -> Answer:
        with self.lock:
            if self.record:
                self.requests.append(call)
            scripted = self.script.get(call.execution_name)
            if scripted:
                status, kind = scripted.popleft()
                return error(status, kind, f"scripted {kind}")
            if call.execution_name in self.always:
                status, kind = self.always[call.execution_name]
                return error(status, kind, f"scripted {kind}")
        return self.starts.answer(call)


def serve(state: LocalLambda, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Start serving `state` in a daemon thread; `server.server_address` has the bound port."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            payload = self.rfile.read(length)
            if not (self.headers.get("Authorization") and self.headers.get("Host")):
                # what Lambda answers a request that lost its signature (e.g. split in two)
                state.unsigned += 1
                send_answer(self, error(403, "MissingAuthenticationTokenException", "unsigned"))
                return
            function = invoked_function(self.path)
            if function is None:
                send_answer(self, error(404, "ResourceNotFoundException", f"no route {self.path}"))
                return
            call = invocation(function, self.headers, payload)
            fault = state.faults.draw() if state.faults else None
            if isinstance(fault, tuple):  # an error answer (throttle, 5xx)
                send_answer(self, error(fault[0], fault[1], f"injected {fault[1]}"))
                return
            if fault in (TIMEOUT_BEFORE_START, DROP_BEFORE_START):
                self._fail(fault, state)  # the start never took effect
                return
            answer = state.answer(call)
            if fault in (TIMEOUT_AFTER_START, DROP_AFTER_START):
                self._fail(fault, state)  # it did, but the client never hears so
                return
            send_answer(self, answer)

        def _fail(self, fault: str, state: LocalLambda) -> None:
            if fault in (TIMEOUT_BEFORE_START, TIMEOUT_AFTER_START):
                assert state.faults is not None
                time.sleep(state.faults.timeout_s)
            self.close_connection = True  # no answer: the connection just closes

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
