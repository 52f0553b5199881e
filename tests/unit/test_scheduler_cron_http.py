"""Without a broker, sqsd's cron POSTs run the registry's tasks through the worker's WSGI app."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

from sluice.envelope import parse_events
from sluice.errors import BusinessError
from sluice.scheduling.registry import PeriodicTask, Registry, Tick
from sluice.scheduling.schedule import Every
from sluice.settings import WebSettings
from worker.app import App
from worker.dispatch import Delivery, Result
from worker.scheduler.cron_http import register_cron_routes


@dataclass
class SeenByDispatcher:
    """Stands in for the dispatcher: records what the route hands it and answers 200."""

    bodies: list[bytes] = field(default_factory=list)

    def handle(self, body: bytes, delivery: Delivery) -> Result:
        self.bodies.append(body)
        return Result(200, "started")


def app_with(registry: Registry, environ: dict[str, str] | None = None) -> App:
    settings = WebSettings.of(
        env="test", workflow_aliases={}, events_dlq_url="https://sqs.local/dlq"
    )
    app = App(settings, SeenByDispatcher())  # type: ignore[arg-type]
    register_cron_routes(app, registry, environ=environ or {})
    return app


def post(app: App, path: str, **sqsd: str) -> tuple[str, dict[str, Any]]:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "CONTENT_LENGTH": "0",
        "wsgi.input": io.BytesIO(b""),
        **{f"HTTP_X_AWS_SQSD_{k.upper()}": v for k, v in sqsd.items()},
    }
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h: status.append(s)))
    return status[0], json.loads(body)


def test_an_event_task_post_is_dispatched_as_the_ticks_event():
    # Given an event task
    reg = Registry([PeriodicTask("reindex", Every(300), event="media/embedding.requested")])
    app = app_with(reg)
    # When sqsd POSTs its cron message
    status, body = post(
        app, "/cron/reindex", taskname="reindex", scheduled_at="2026-11-23T10:05:00Z"
    )
    # Then the dispatcher got the tick's event, with the scheduled minute in its id
    assert status.startswith("200")
    (sent,) = app.dispatcher.bodies  # type: ignore[attr-defined]
    (event,) = parse_events(sent)
    assert event.name == "media/embedding.requested"
    assert event.id == body["event_id"] == f"tick-reindex-{1795428300 * 1000}"


def test_a_function_task_post_runs_the_function():
    ran: list[Tick] = []
    app = app_with(Registry([PeriodicTask("beat", Every(60), action=ran.append)]))
    status, body = post(app, "/cron/beat", scheduled_at="2026-11-23T10:05:00Z")
    assert status.startswith("200") and body["outcome"] == "succeeded"
    assert [t.due for t in ran] == [1795428300.0]


def test_a_business_error_is_answered_200_so_sqsd_does_not_retry():
    def refuse(tick: Tick) -> None:
        raise BusinessError("nothing to do")

    app = app_with(Registry([PeriodicTask("beat", Every(60), action=refuse)]))
    status, body = post(app, "/cron/beat")
    assert status.startswith("200") and body["outcome"] == "failed"


def test_a_transient_failure_is_answered_503_so_sqsd_retries():
    def crash(tick: Tick) -> None:
        raise TimeoutError("upstream")

    app = app_with(Registry([PeriodicTask("beat", Every(60), action=crash)]))
    status, _ = post(app, "/cron/beat")
    assert status.startswith("503")


def test_with_a_broker_configured_cron_posts_are_ignored_so_no_tick_runs_twice():
    ran: list[Tick] = []
    reg = Registry([PeriodicTask("beat", Every(60), action=ran.append)])
    app = app_with(reg, {"SLUICE_BROKER_URL": "amqp://broker"})
    status, body = post(app, "/cron/beat")
    assert status.startswith("200") and body["outcome"] == "ignored-broker-schedules"
    assert ran == []
