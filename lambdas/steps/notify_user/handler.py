"""Step notify_user: tell the user (notifications topic) and the platform (a
`media/transcription.completed` event on the events queue, which fans out to transcode and embed).

The event id derives from the job id, so a retried notification sends an event the worker
recognises as a duplicate instead of starting the fan-out twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from adapters.notifications import Notifications
from lambdas.common import aws
from lambdas.common.runtime import clients, env, require, step_handler
from sluice.envelope import Event
from sluice.producer import send_event

COMPLETED_EVENT = "media/transcription.completed"


def completed_event(
    job_id: str, correlation_id: str, *, source: Mapping[str, Any], outputs: Mapping[str, Any]
) -> Event:
    return Event(
        name=COMPLETED_EVENT,
        id=f"{job_id}-transcribed",
        correlation_id=correlation_id,
        data={"job_id": job_id, "source": dict(source), "outputs": dict(outputs)},
    )


@dataclass(frozen=True)
class Notified:
    notification_id: str
    event_id: str
    event_message_id: str


def announce(
    event: Event, *, notifications: Notifications, send: Callable[[Event], str]
) -> Notified:
    """Publish "transcript ready" for the user, then send the completed event to the platform."""
    published = notifications.publish(
        {
            "type": "transcription.completed",
            "job_id": event.data["job_id"],
            "source": event.data["source"],
            "outputs": event.data["outputs"],
            "correlation_id": event.correlation_id,
        },
        subject="Transcript ready",
    )
    return Notified(published, event.id, send(event))


def notify(payload: Mapping[str, Any]) -> dict[str, Any]:
    job_id, correlation_id = require(payload, "job_id", "correlation_id")
    event = completed_event(
        job_id,
        correlation_id,
        source=payload.get("source") or {},
        outputs=payload.get("outputs") or {},
    )
    queue_url = env("events_queue_url")
    notified = announce(
        event,
        notifications=aws.notifications(),
        send=lambda ev: send_event(clients("sqs"), queue_url, ev),
    )
    return asdict(notified)


handler = step_handler("notify_user")(notify)
