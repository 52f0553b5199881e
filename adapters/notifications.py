"""The job events users subscribe to: one SNS message per event on the notifications topic."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class Notifications:
    """Publishes job events (`{"type": "transcription.completed", ...}`) to one topic."""

    def __init__(self, client: Any, topic_arn: str) -> None:
        self.client, self.topic_arn = client, topic_arn

    def publish(self, event: Mapping[str, Any], *, subject: str) -> str:
        """Publish `event` as sorted JSON, its `type` also as a message attribute (subscription
        filters); the SNS message id."""
        answer = self.client.publish(
            TopicArn=self.topic_arn,
            Subject=subject,
            Message=json.dumps(event, sort_keys=True),
            MessageAttributes={"type": {"DataType": "String", "StringValue": str(event["type"])}},
        )
        return str(answer["MessageId"])
