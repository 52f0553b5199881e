"""Without a broker: sqsd's cron POSTs (from cron.yaml) become the task's tick on the web process.

Each registered task gets `POST /cron/<task>`. An event task's POST is handed to the worker's
dispatcher as the tick's event (its id comes from the scheduled minute, so a repeated POST starts
nothing new); a function task runs its function here. Where a broker is configured, the broker
scheduler owns the ticks and these POSTs are acknowledged and ignored, so one cron.yaml serves
every environment and no tick runs twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sluice.envelope import SCHEMA_VIOLATION
from sluice.errors import BusinessError, PoisonMessage
from sluice.scheduling.registry import CRON_URL_PREFIX, REGISTRY, PeriodicTask, Registry, cron_tick
from sluice.scheduling.schedule import ScheduleError
from sluice.settings import SchedulerSettings
from worker.dispatch import Delivery
from worker.routes import Handler, Request, Response

log = logging.getLogger("sluice.scheduler")


def register_cron_routes(
    app: Any, registry: Registry | None = None, environ: Mapping[str, str] | None = None
) -> None:
    """Add `POST /cron/<task>` for every task of `registry` to the worker's WSGI `app`."""
    reg = registry or REGISTRY
    broker = SchedulerSettings.read(environ).broker_configured

    def handler_for(task: PeriodicTask) -> Handler:
        def handle(request: Request) -> Response:
            named = request.sqsd.get("taskname")
            if named and named != task.name:
                log.warning("cron POST for %s arrived on %s's path", named, task.name)
            if broker:
                return Response(200, {"task": task.name, "outcome": "ignored-broker-schedules"})
            delivery = Delivery.from_headers(request.sqsd)
            try:
                _, tick = cron_tick(task.name, request.sqsd.get("scheduled-at"), registry=reg)
            except ScheduleError as exc:
                # No retry can mend the header: poison, with its reason, like a bad event.
                poison = PoisonMessage(f"cron POST for {task.name}: {exc}", code=SCHEMA_VIOLATION)
                result = app.dispatcher.reject(request.body, delivery, poison)
                return Response(
                    result.status,
                    {"task": task.name, "outcome": result.outcome, "reason": result.reason},
                )
            if task.action is None:
                event = task.tick_event(tick)
                result = app.dispatcher.handle(event.to_json().encode(), delivery)
                return Response(
                    result.status,
                    {"task": task.name, "event_id": event.id, "outcome": result.outcome},
                )
            try:
                task.action(tick)
            except BusinessError as exc:
                # Not retried (a retry cannot help); the next scheduled minute runs as usual.
                log.warning("cron task %s failed: %s", task.name, exc)
                return Response(200, {"task": task.name, "outcome": "failed", "error": str(exc)})
            except Exception:
                log.exception("cron task %s failed; sqsd will retry", task.name)
                return Response(503, {"task": task.name, "outcome": "retry"})
            return Response(200, {"task": task.name, "outcome": "succeeded"})

        return handle

    for task in reg:
        app.route("POST", CRON_URL_PREFIX + task.name, handler_for(task))
