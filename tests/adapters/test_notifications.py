"""Job events on the notifications topic (moto's SNS, read back through a subscribed queue)."""

from __future__ import annotations

import json

from adapters.notifications import Notifications


def test_an_event_is_published_as_json_with_its_type_as_an_attribute(aws):
    event = {"type": "transcription.completed", "job_id": "j", "correlation_id": "c"}
    message_id = Notifications(aws.sns, aws.topic_arn).publish(event, subject="Transcript ready")
    (got,) = aws.sqs.receive_message(QueueUrl=aws.inbox_url)["Messages"]
    envelope = json.loads(got["Body"])
    assert envelope["MessageId"] == message_id
    assert (envelope["Subject"], json.loads(envelope["Message"])) == ("Transcript ready", event)
    assert envelope["MessageAttributes"]["type"]["Value"] == "transcription.completed"
