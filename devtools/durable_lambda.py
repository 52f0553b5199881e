"""Lambda's durable-execution APIs on loopback, backed by AWS's local durable execution runner.

The real workflow handlers run in one `DurableFunctionTestRunner` (time skipped) with the real
step handlers registered as their `ctx.invoke` targets. Over HTTP this serves what the worker,
the tasks process and the `sluice` CLI call with boto3 (point them here with
AWS_ENDPOINT_URL_LAMBDA):

- Invoke with `DurableExecutionName` (the worker's start), with the start semantics of
  `devtools.lambda_fake.DurableStarts`: a new name starts an execution in the runner, the same
  name and payload returns it again, another payload is a 409;
- the callback APIs (the tasks process's heartbeat, success, failure);
- GetDurableExecution, GetDurableExecutionHistory, ListDurableExecutionsByFunction (the CLI),
  served by the runner package's own web handlers.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import traceback
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aws_durable_execution_sdk_python_testing.invoker import create_test_lambda_context
from aws_durable_execution_sdk_python_testing.runner import DurableFunctionTestRunner
from aws_durable_execution_sdk_python_testing.web.server import (
    RequestHandler,
    WebServer,
    WebServiceConfig,
)

from devtools.lambda_fake import (
    Answer,
    DurableStarts,
    Invocation,
    error,
    invocation,
    invoked_function,
    send_answer,
)
from sluice.catalog import WORKFLOW_ALIAS

Handler = Callable[[Any, Any], Any]
ACCOUNT = "123456789012"


def alias_arn(region: str, workflow: str) -> str:
    """The `live` alias ARN the worker invokes for `workflow` (its function is named after it)."""
    return f"arn:aws:lambda:{region}:{ACCOUNT}:function:{workflow}:{WORKFLOW_ALIAS}"


def function_of(name_or_arn: str) -> str:
    """`arn:…:function:NAME:live`, `NAME:live` or `NAME` -> NAME."""
    if ":function:" in name_or_arn:
        name_or_arn = name_or_arn.split(":function:", 1)[1]
    return name_or_arn.split(":", 1)[0]


class DurableService:
    """The workflows of the pipeline, run durably in-process; thread-safe starts."""

    def __init__(
        self,
        workflows: Mapping[str, Handler],
        steps: Mapping[str, Handler],
        *,
        execution_timeout_s: int = 900,
    ) -> None:
        if not workflows:
            raise ValueError("no workflows to run")
        first = next(iter(workflows.values()))
        self.runner = DurableFunctionTestRunner(handler=first, skip_time=True, poll_interval=0.05)
        for name, handler in workflows.items():
            self.runner.register_durable_function(name, handler)
        for name, handler in steps.items():
            self.runner.register_function(f"{name}:{WORKFLOW_ALIAS}", handler)
        self.steps = dict(steps)
        self.workflows = tuple(workflows)
        self.execution_timeout_s = execution_timeout_s
        # Executions by (workflow, execution name): the function's name, whatever alias or ARN
        # the request named it by.
        self.starts = DurableStarts(self._run)

    def _run(self, call: Invocation) -> str:
        return str(
            self.runner.run_async(
                input=call.payload.decode(),
                function_name=call.function_name,
                execution_name=call.execution_name,
                execution_timeout=self.execution_timeout_s,
            )
        )

    # -- Invoke -----------------------------------------------------------------------------------

    def invoke(self, call: Invocation) -> Answer:
        """Lambda's answer to a durable Invoke: (status, headers, body)."""
        workflow = function_of(call.function_name)
        if workflow in self.steps and not call.execution_name:
            return self._invoke_step(workflow, call)
        if workflow not in self.workflows:
            return error(
                404, "ResourceNotFoundException", f"Function not found: {call.function_name}"
            )
        if not call.execution_name:
            return error(400, "InvalidParameterValueException", "DurableExecutionName missing")
        return self.starts.answer(
            Invocation(workflow, call.invocation_type, call.execution_name, call.payload)
        )

    def _invoke_step(self, name: str, call: Invocation) -> Answer:
        """A plain synchronous Invoke of a step function (what `sluice runs cancel` does with a
        failure handler): its result, or its error as Lambda reports an unhandled one (200,
        X-Amz-Function-Error, errorType/errorMessage/stackTrace)."""
        if call.invocation_type != "RequestResponse":
            return error(400, "InvalidParameterValueException", "only RequestResponse is served")
        context = create_test_lambda_context(function_name=f"{name}:{WORKFLOW_ALIAS}")
        try:
            result = self.steps[name](json.loads(call.payload or b"{}"), context)
        except Exception as exc:
            body = {
                "errorType": type(exc).__name__,
                "errorMessage": str(exc),
                "stackTrace": traceback.format_tb(exc.__traceback__),
            }
            return 200, {"X-Amz-Function-Error": "Unhandled"}, json.dumps(body).encode()
        return 200, {"Content-Type": "application/json"}, json.dumps(result).encode()

    # -- reading ----------------------------------------------------------------------------------

    def executions(self) -> list[tuple[str, str, str]]:
        """(workflow, execution name, arn) of every execution started, in start order."""
        return [(w, n, s.arn) for w, n, s in self.starts.executions()]

    def status(self, arn: str) -> str:
        details = self.runner._executor.get_execution_details(arn)
        return str(details.status)

    def details(self, arn: str) -> dict[str, Any]:
        return dict(self.runner._executor.get_execution_details(arn).to_dict())

    def history(self, arn: str) -> list[dict[str, Any]]:
        return list(self.runner.get_execution_history(arn).to_dict().get("Events", []))

    def close(self) -> None:
        self.runner.close()


def epoch_time_filters(path: str) -> str:
    """ListDurableExecutions*'s StartedAfter/StartedBefore as the runner's store compares them.

    botocore sends them as ISO 8601 (the rest-json default for a querystring timestamp: Lambda's
    service model gives no other format); the runner's store parses them with float() and drops
    every execution when that fails. Epoch seconds are what it can compare.
    """
    url = urlsplit(path)
    query = parse_qsl(url.query, keep_blank_values=True)
    fixed = []
    for key, value in query:
        if key in ("StartedAfter", "StartedBefore"):
            with contextlib.suppress(ValueError):
                value = str(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        fixed.append((key, value))
    return urlunsplit(url._replace(query=urlencode(fixed)))


def serve(service: DurableService, host: str = "127.0.0.1", port: int = 0) -> WebServer:
    """Serve `service` on loopback in a daemon thread; `server.server_address` has the port."""

    class Handler(RequestHandler):
        def do_POST(self) -> None:
            function = invoked_function(self.path)
            if function is None:
                if urlsplit(self.path).path.rstrip("/").endswith("/stop"):
                    self._stop_error_as_the_runner_reads_it()
                super().do_POST()
                return
            length = int(self.headers.get("Content-Length") or 0)
            call = invocation(function, self.headers, self.rfile.read(length))
            send_answer(self, service.invoke(call))

        def _stop_error_as_the_runner_reads_it(self) -> None:
            """StopDurableExecution's body is the ErrorObject itself (botocore's model binds the
            `Error` member as the payload); the runner's route reads it under an "Error" key."""
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.dumps({"Error": json.loads(raw)}).encode() if raw.strip() else b""
            self.rfile = io.BytesIO(body)
            if "Content-Length" in self.headers:
                self.headers.replace_header("Content-Length", str(len(body)))

        def do_GET(self) -> None:
            self.path = epoch_time_filters(self.path)
            super().do_GET()

        def _send_response(self, response: Any) -> None:
            """Errors with their type where botocore reads it (rest-json: the x-amzn-ErrorType
            header, as Lambda sends it); the runner names it only in the body's "Type", so
            botocore saw every error as its bare HTTP status ("404", never a
            ResourceNotFoundException)."""
            kind = response.body.get("Type") if response.status_code >= 400 else None
            if isinstance(kind, str) and kind.endswith("Exception"):
                response.headers.setdefault("x-amzn-ErrorType", kind)
            super()._send_response(response)

        def log_message(self, format_string: str, *args: Any) -> None:
            pass

    server = WebServer(
        WebServiceConfig(host=host, port=port),
        executor=service.runner._executor,
    )
    server.RequestHandlerClass = Handler
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="local-durable").start()
    return server
