"""The worker's WSGI app: sqsd's POSTs on the configured path, `/health`, and a route table.

Served by gunicorn (Procfile `web`). Other entry points (cron POSTs, admin paths) register with
`App.route(method, path, handler)`; a handler takes a `Request` and returns a `Response`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from adapters.flow import FlowStore
from sluice.settings import SQS_MAX_MESSAGE_BYTES, WebSettings
from worker.cancels import Canceller
from worker.dispatch import Delivery, Dispatcher
from worker.flow import FlowControl
from worker.invoke import DynamoDB, LambdaInvoker
from worker.observability import (
    Metrics,
    MetricsPublisher,
    configure_logging,
    correlation_id,
    message_id,
)
from worker.routes import Handler, Request, Response
from worker.scheduler.cron_http import register_cron_routes

log = logging.getLogger("sluice.worker")
SQSD_PREFIX = "HTTP_X_AWS_SQSD_"
_REASONS = {
    200: "200 OK",
    400: "400 Bad Request",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    411: "411 Length Required",
    413: "413 Content Too Large",
    503: "503 Service Unavailable",
}


class App:
    """A minimal WSGI app: each request costs microseconds, so the worker's CPU goes to work."""

    def __init__(self, settings: WebSettings, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.routes: dict[tuple[str, str], Handler] = {}
        self.route("POST", settings.http_path, self.events)
        self.route("GET", "/health", self.health)

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method.upper(), path)] = handler

    def events(self, request: Request) -> Response:
        result = self.dispatcher.handle(request.body, Delivery.from_headers(request.sqsd))
        return Response(result.status, {"outcome": result.outcome, "reason": result.reason})

    def health(self, request: Request) -> Response:
        return Response(200, {"status": "ok", "env": self.settings.env})

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        sqsd = {
            key[len(SQSD_PREFIX) :].lower().replace("_", "-"): value
            for key, value in environ.items()
            if key.startswith(SQSD_PREFIX)
        }
        message_id.set(sqsd.get("msgid", ""))
        correlation_id.set(sqsd.get("attr-correlation-id", ""))
        handler = self.routes.get((method, path))
        if handler is None:
            allowed = any(p == path for (_, p) in self.routes)
            response = Response(405 if allowed else 404, {"error": f"no route {method} {path}"})
        else:
            body, problem = _read_body(environ)
            if problem == _TOO_LARGE:
                # Larger than any SQS message: it cannot be from sqsd and cannot go to the DLQ.
                log.warning("request body over SQS's limit refused")
                response = Response(413, {"error": "body larger than an SQS message"})
            elif problem:
                # Never 200 for a body not read whole: sqsd would delete a message nobody read.
                log.warning("request body not read whole", extra={"detail": problem})
                response = Response(400, {"error": f"body not read whole: {problem}"})
            else:
                response = handler(Request(method, path, body, sqsd))
        payload = json.dumps(response.body, separators=(",", ":")).encode()
        start_response(
            _REASONS.get(response.status, f"{response.status} Status"),
            [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
        )
        return [payload]


_TOO_LARGE = "larger than an SQS message"


def _read_body(environ: Mapping[str, Any]) -> tuple[bytes, str]:
    """(body, ""), or (b"", why) when the body is too large or could not be read whole.

    Without a Content-Length (a chunked POST: gunicorn passes no CONTENT_LENGTH) the body runs
    to the end of wsgi.input, read up to one byte past the largest SQS message. A body shorter
    than its Content-Length (the client went away) is reported, never taken for the message.
    """
    declared = environ.get("CONTENT_LENGTH") or ""
    try:
        length = int(declared) if declared else None
    except ValueError:
        return b"", f"bad Content-Length {declared[:40]!r}"
    if length is not None and length > SQS_MAX_MESSAGE_BYTES:
        return b"", _TOO_LARGE
    if length is None and not environ.get("wsgi.input_terminated"):
        return b"", ""  # PEP 3333: without a length, read only an input the server terminates
    try:
        body = environ["wsgi.input"].read(SQS_MAX_MESSAGE_BYTES + 1 if length is None else length)
    except Exception as exc:  # a broken chunk, a reset or timed-out connection
        return b"", f"{type(exc).__name__}: {exc}"[:200]
    if length is None and len(body) > SQS_MAX_MESSAGE_BYTES:
        return b"", _TOO_LARGE
    if length is not None and len(body) < length:
        return b"", f"{len(body)} of {length} bytes"
    return body, ""


def create_app(
    environ: Mapping[str, str] | None = None,
    *,
    lambda_client: Any = None,
    sqs_client: Any = None,
) -> App:
    """Build the app from the environment; clients are created here unless injected (tests)."""
    settings = WebSettings.read(environ)
    configure_logging("sluice-worker")
    session = None
    if lambda_client is None or sqs_client is None:
        import boto3
        from botocore.config import Config

        from worker.credentials import process_session

        # Every client below calls AWS as the web process's own role (when the stack names one).
        session = process_session("web", environ)

        # Retries inside one POST stay short: sqsd retries the whole message anyway.
        config = Config(
            connect_timeout=min(3.0, settings.invoke_timeout_s),
            read_timeout=settings.invoke_timeout_s,
            retries={"mode": "standard", "total_max_attempts": 2},
            max_pool_connections=100,
        )
        # Invoke is the hot path: the lean client costs a fraction of botocore's CPU per call.
        lambda_client = lambda_client or LambdaInvoker.from_environment(
            timeout_s=settings.invoke_timeout_s, session=session
        )
        sqs_client = sqs_client or boto3.client("sqs", config=config)
    s3_client = None
    if settings.claim_check_bucket:
        import boto3
        from botocore.config import Config

        s3_client = boto3.client("s3", config=Config(retries={"total_max_attempts": 2}))
    dimensions = {"Environment": settings.env}
    publisher = None
    if settings.publish_metrics_s:
        import boto3

        publisher = MetricsPublisher(
            boto3.client("cloudwatch"), settings.metrics_namespace, dimensions
        )
        publisher.start(settings.publish_metrics_s)
    metrics = Metrics(settings.metrics_namespace, dimensions, publisher=publisher)
    canceller = None
    if settings.coordination_table:  # some workflow declares `cancel_on` (worker/cancels.py)
        import boto3
        from botocore.config import Config

        short = Config(retries={"mode": "standard", "total_max_attempts": 2})
        canceller = Canceller(
            lambda_client=boto3.client("lambda", config=short),
            dynamodb_client=boto3.client("dynamodb", config=short),
            table=settings.coordination_table,
            failure_handlers=settings.failure_handlers,
        )
    flow_control = None
    # Both or no flow control: its state, and the queue its wake-ups go to.
    if settings.coordination_table and settings.events_queue_url:
        from worker.credentials import process_session

        # Flow control (docs/flow-control.md): its state through the lean DynamoDB client (as the
        # web process's role), its wake-ups on the events queue.
        ddb = DynamoDB.from_environment(
            timeout_s=settings.invoke_timeout_s, session=session or process_session("web", environ)
        )
        flow_control = FlowControl(
            FlowStore(ddb, settings.coordination_table),
            sqs=sqs_client,
            queue_url=settings.events_queue_url,
            canceller=canceller,
        )
    dispatcher = Dispatcher(
        settings=settings,
        lambda_client=lambda_client,
        sqs_client=sqs_client,
        s3_client=s3_client,
        metrics=metrics,
        flow_control=flow_control,
        canceller=canceller,
    )
    app = App(settings, dispatcher)
    # Without a broker, sqsd's cron.yaml POSTs run the periodic tasks (issue 7).
    register_cron_routes(app, environ=environ)
    return app
