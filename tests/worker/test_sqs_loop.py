"""The whole loop: events on moto's SQS queue, an sqsd-equivalent driver, the worker on gunicorn.

N messages including duplicates, poison and a throttled start go through; exactly the distinct
valid events start one execution each, every poison message is in the DLQ with its reason, and
nothing else is left on either queue.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from devtools.lambda_fake import THROTTLED
from devtools.sqsd import SqsdDriver
from sluice import envelope
from sluice.envelope import Event
from sluice.producer import send_events
from tests.worker.conftest import ALIASES, attr
from tests.worker.helpers import event, s3_notification

TRANSCRIBE = ALIASES["transcribe_audio"]


def count(queues, url: str) -> int:
    attrs = queues.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


@pytest.mark.slow
def test_distinct_events_start_once_and_poison_lands_in_the_dlq(worker, queues, lambda_fake):
    state, _ = lambda_fake
    queues.dead.extend(queues.drain(queues.dlq_url))  # earlier tests' leftovers stay apart
    before = set(state.started())
    # Given 20 distinct valid events, 6 re-sent duplicates, 3 S3 uploads (one notified twice)...
    valid = [event(key=f"uploads/{i}.mp3") for i in range(20)]
    send_events(queues.sqs, queues.url, valid)
    send_events(queues.sqs, queues.url, valid[:6])
    uploads = [s3_notification("media", f"uploads/u{i}.mp3", f"etag-{i}") for i in range(3)]
    for body in [*uploads, uploads[0]]:
        queues.sqs.send_message(QueueUrl=queues.url, MessageBody=body.decode())
    # ... one event whose first start is throttled (sqsd must retry it) ...
    state.fail(valid[7].execution_name, THROTTLED)
    # ... and one poison message of each kind that can travel through SQS
    conflict = Event(name=valid[3].name, data={"other": True}, id=valid[3].id, ts=valid[3].ts)
    no_id = {k: v for k, v in event().to_dict().items() if k != "id"}
    poison = {
        envelope.MALFORMED_JSON: "{not json",
        envelope.SCHEMA_VIOLATION: json.dumps(no_id),
        envelope.UNKNOWN_EVENT: Event(name="billing/invoice.paid", data={}).to_json(),
        envelope.OVERSIZE: event(blob="x" * 9000).to_json(),
    }
    for body in poison.values():
        queues.sqs.send_message(QueueUrl=queues.url, MessageBody=body)

    # When the driver feeds the queue to the worker until it is empty (conflict sent last, so
    # the first execution of that id exists already)
    driver = SqsdDriver(
        queues.sqs, queues.url, worker.url + "/", connections=4, error_visibility_timeout_s=0
    )
    try:
        driver.drain()
        queues.sqs.send_message(QueueUrl=queues.url, MessageBody=conflict.to_json())
        driver.drain()
    finally:
        driver.close()

    # Then exactly the distinct valid events started, one execution each
    expected = {e.execution_name for e in valid} | {
        e.execution_name for body in uploads for e in envelope.parse_events(body)
    }
    new = set(state.started()) - before
    assert sorted(new) == sorted((TRANSCRIBE, name) for name in expected)
    invoked = Counter(r.execution_name for r in state.requests if r.execution_name in expected)
    assert invoked[valid[7].execution_name] == 2  # throttled, then started on redelivery
    # and every poison message is in the DLQ with its reason
    dead = queues.drain(queues.dlq_url)
    reasons = sorted(attr(m, "reason") or "" for m in dead)
    assert reasons == sorted([*poison, envelope.ID_CONFLICT])
    by_reason = {attr(m, "reason"): m["Body"] for m in dead}
    assert by_reason[envelope.ID_CONFLICT] == conflict.to_json()
    assert all(by_reason[r] == body for r, body in poison.items())
    # and nothing else is left
    assert count(queues, queues.url) == 0
    assert driver.stats.retried == 1
    assert driver.stats.deleted == driver.stats.received - 1
