"""The producer client validates before sending, and batches within SQS's limits (moto's SQS server)."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest

from sluice import envelope
from sluice.envelope import Event
from sluice.errors import PoisonMessage
from sluice.producer import send_event, send_events
from tests.worker.helpers import event


@pytest.fixture
def queue(moto_endpoint):
    # moto's server, not mock_aws(): the in-process mock resets the backends the session's
    # server shares, which would wipe the other worker tests' queues.
    sqs = boto3.client("sqs", region_name="eu-west-1", endpoint_url=moto_endpoint)
    url = sqs.create_queue(QueueName=f"producer-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    yield sqs, url
    sqs.delete_queue(QueueUrl=url)


def received(sqs, url) -> list[dict]:
    out: list[dict] = []
    while batch := sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages", []):
        out.extend(batch)
        for m in batch:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return out


def test_send_event_puts_the_envelope_with_its_correlation_attributes(queue):
    sqs, url = queue
    ev = event()
    send_event(sqs, url, ev)
    (message,) = received(sqs, url)
    assert json.loads(message["Body"]) == ev.to_dict()
    attrs = message["MessageAttributes"]
    assert attrs["correlation_id"]["StringValue"] == ev.correlation_id
    assert attrs["event_name"]["StringValue"] == ev.name


def test_send_event_accepts_a_plain_envelope_dict(queue):
    sqs, url = queue
    ev = event()
    send_event(sqs, url, ev.to_dict())
    assert json.loads(received(sqs, url)[0]["Body"])["id"] == ev.id


def test_an_event_no_workflow_handles_is_refused_before_sending(queue):
    sqs, url = queue
    with pytest.raises(PoisonMessage) as caught:
        send_event(sqs, url, Event(name="billing/invoice.paid", data={}))
    assert caught.value.code == envelope.UNKNOWN_EVENT
    assert received(sqs, url) == []


def test_a_notice_is_sent_though_no_workflow_starts_on_it(queue):
    sqs, url = queue
    send_event(sqs, url, Event(name="media/failed", id="failed-m1", data={"failed": ["x"]}))
    assert json.loads(received(sqs, url)[0]["Body"])["id"] == "failed-m1"


def test_an_oversize_event_is_refused_before_sending(queue):
    sqs, url = queue
    with pytest.raises(PoisonMessage) as caught:
        send_event(sqs, url, event(blob="x" * envelope.MAX_BODY_BYTES))
    assert caught.value.code == envelope.OVERSIZE


def test_a_batch_with_one_invalid_event_sends_nothing(queue):
    sqs, url = queue
    bad = {**event().to_dict(), "v": 9}
    with pytest.raises(PoisonMessage):
        send_events(sqs, url, [event(), bad])
    assert received(sqs, url) == []


def test_a_batch_of_25_goes_out_in_sqs_sized_batches(queue):
    sqs, url = queue
    events = [event(key=f"uploads/{i}.mp3") for i in range(25)]
    result = send_events(sqs, url, events)
    assert result.sent == [e.id for e in events]
    assert result.failed == {}
    assert sorted(json.loads(m["Body"])["id"] for m in received(sqs, url)) == sorted(result.sent)


def test_batches_also_respect_the_total_size_limit(queue):
    sqs, url = queue
    # four ~100 KiB events: no batch may exceed 256 KiB in total
    events = [event(key=f"k{i}", blob="x" * 100_000) for i in range(4)]
    calls = []
    real = sqs.send_message_batch

    def spy(**kwargs):
        calls.append(sum(len(e["MessageBody"]) for e in kwargs["Entries"]))
        return real(**kwargs)

    sqs.send_message_batch = spy
    result = send_events(sqs, url, events)
    assert len(result.sent) == 4
    assert all(size <= envelope.MAX_BODY_BYTES for size in calls)
    assert len(calls) == 2
