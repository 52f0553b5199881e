"""Step notify_user: tell the user (notifications topic) and the platform (a
`media/transcription.completed` event on the events queue, which fans out to transcode and embed).

The event id derives from the job id, so a retried notification sends an event the worker
recognises as a duplicate instead of starting the fan-out twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lambdas.common.runtime import clients, env, require, step_handler
from sluice.envelope import Event

COMPLETED_EVENT = "media/transcription.completed"


def completed_event(payload: Mapping[str, Any]) -> Event:
    job_id, correlation_id = require(payload, "job_id", "correlation_id")
    return Event(
        name=COMPLETED_EVENT,
        id=f"{job_id}-transcribed",
        correlation_id=correlation_id,
        data={
            "job_id": job_id,
            "source": dict(payload.get("source") or {}),
            "outputs": dict(payload.get("outputs") or {}),
        },
    )


def notify(payload: Mapping[str, Any]) -> dict[str, Any]:
    event = completed_event(payload)
    source = event.data["source"]
    message = {
        "type": "transcription.completed",
        "job_id": event.data["job_id"],
        "source": source,
        "outputs": event.data["outputs"],
        "correlation_id": event.correlation_id,
    }
    published = clients("sns").publish(
        TopicArn=env("NOTIFICATIONS_TOPIC"),
        Subject="Transcript ready",
        Message=json.dumps(message, sort_keys=True),
        MessageAttributes={"type": {"DataType": "String", "StringValue": message["type"]}},
    )
    sent = clients("sqs").send_message(
        QueueUrl=env("EVENTS_QUEUE_URL"), MessageBody=event.to_json()
    )
    return {
        "notification_id": published["MessageId"],
        "event_id": event.id,
        "event_message_id": sent["MessageId"],
    }


handler = step_handler("notify_user")(notify)
