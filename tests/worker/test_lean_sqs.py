"""The scheduler's lean SQS client (worker/invoke.py `SQS`) sends an event task's tick as boto3's
client does: against moto's server, the same answer keys, the same message on the queue (body,
attributes and their MD5s, which SQS computes itself), the same error for a missing queue; and
`event_sender`, the scheduler's send, goes through it."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, ParamValidationError

from sluice.catalog import ROUTES
from sluice.envelope import Event, parse_events
from sluice.producer import send_event
from sluice.settings import SchedulerSettings
from tests.worker.conftest import REGION
from worker.invoke import SQS
from worker.scheduler.__main__ import event_sender

CREDS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
EVENT = next(iter(ROUTES))  # an event a workflow takes


@pytest.fixture
def boto(moto_endpoint: str) -> Any:
    return boto3.client("sqs", region_name=REGION, endpoint_url=moto_endpoint)


def received(boto: Any, url: str) -> dict[str, Any]:
    (message,) = boto.receive_message(
        QueueUrl=url, MessageAttributeNames=["All"], WaitTimeSeconds=1
    )["Messages"]
    return message


def test_the_lean_client_sends_the_same_message_as_boto3(boto, moto_endpoint) -> None:
    # Given a queue each, and the same tick event
    urls = {k: boto.create_queue(QueueName=f"lean-sqs-{k}")["QueueUrl"] for k in ("boto3", "lean")}
    event = Event(name=EVENT, data={"task": "t", "n": "é\u2028"}, id="tick-t-1000")
    lean = SQS(region=REGION, credentials=CREDS, endpoint_url=moto_endpoint)
    # When each client sends it through the producer
    ids = {k: send_event(c, urls[k], event) for k, c in (("boto3", boto), ("lean", lean))}
    # Then the same message is on each queue, with the attributes the worker logs
    got = {k: received(boto, url) for k, url in urls.items()}
    assert all(ids[k] == got[k]["MessageId"] for k in ids)
    same = ("Body", "MD5OfBody", "MD5OfMessageAttributes", "MessageAttributes")
    assert {k: got["lean"][k] for k in same} == {k: got["boto3"][k] for k in same}
    assert parse_events(got["lean"]["Body"].encode()) == [event]
    assert got["lean"]["MessageAttributes"]["event_name"]["StringValue"] == EVENT
    # and the answers carry the same keys
    answers = [
        c.send_message(QueueUrl=urls[k], MessageBody="x")
        for k, c in (("boto3", boto), ("lean", lean))
    ]
    assert set(answers[0]) == set(answers[1])


def test_a_missing_queue_is_the_same_client_error(boto, moto_endpoint) -> None:
    url = boto.create_queue(QueueName="lean-sqs-gone")["QueueUrl"]
    boto.delete_queue(QueueUrl=url)
    lean = SQS(region=REGION, credentials=CREDS, endpoint_url=moto_endpoint)
    codes = []
    for client in (boto, lean):
        with pytest.raises(ClientError) as caught:
            client.send_message(QueueUrl=url, MessageBody="x")
        codes.append(caught.value.response["Error"]["Code"])
    assert codes[0] == codes[1], codes


def test_a_binary_attribute_is_refused_before_sending(moto_endpoint) -> None:
    lean = SQS(region=REGION, credentials=CREDS, endpoint_url=moto_endpoint)
    with pytest.raises(ParamValidationError, match="only StringValue"):
        lean.send_message(
            QueueUrl="http://unused/q",
            MessageBody="x",
            MessageAttributes={"b": {"DataType": "Binary", "BinaryValue": b"\0"}},
        )


def test_the_schedulers_event_send_goes_through_the_lean_client(
    boto, moto_endpoint, monkeypatch
) -> None:
    url = boto.create_queue(QueueName="lean-sqs-scheduler")["QueueUrl"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_REGION", REGION)
    for name, value in SchedulerSettings.render(events_queue_url=url).items():
        monkeypatch.setenv(name, value)
    send = event_sender(SchedulerSettings.read())
    assert send is not None
    sent = Event(name=EVENT, data={"task": "t"}, id="tick-t-2000")
    # The closure's client is the lean one (not boto3's, which costs the tick three times more)
    clients = [c.cell_contents for c in send.__closure__ or ()]
    assert any(isinstance(c, SQS) for c in clients), clients
    message_id = send(sent)
    message = received(boto, url)
    assert message["MessageId"] == message_id
    assert parse_events(message["Body"].encode()) == [sent]


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (
            {"x-amzn-query-error": "AWS.SimpleQueueService.NonExistentQueue;Sender"},
            "QueueDoesNotExist",
        ),
        ({"x-amzn-query-error": "NoSemicolon"}, "QueueDoesNotExist"),
        ({"x-amzn-query-error": ";Sender"}, "QueueDoesNotExist"),
        ({}, "ConditionalCheckFailedException"),
        ({}, "ThrottlingException:http://internal.amazon.com/coral/"),
    ],
)
def test_an_error_code_is_read_as_botocores_json_parser_reads_it(
    headers: dict[str, str], body: str, monkeypatch
) -> None:
    """Against botocore's own parser, on the same answer (moto sends only some of these)."""
    from botocore.parsers import create_parser

    answer = json.dumps({"__type": f"com.amazonaws.sqs#{body}", "message": "m"}).encode()
    expected = create_parser("json").parse(
        {"status_code": 400, "headers": headers, "body": answer}, None
    )["Error"]["Code"]
    lean = SQS(region=REGION, credentials=CREDS, endpoint_url="http://127.0.0.1:9")
    monkeypatch.setattr(lean, "post", lambda *_: (400, headers, answer))
    with pytest.raises(ClientError) as caught:
        lean.send_message(QueueUrl="q", MessageBody="x")
    assert caught.value.response["Error"]["Code"] == expected


def test_a_client_without_a_region_names_its_service(tmp_path, monkeypatch) -> None:
    # The scheduler builds its SQS and ledger clients at start: without a region it stops,
    # saying which client needed one (it used to name Lambda Invoke, whatever the client).
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(RuntimeError, match="AWS_REGION/AWS_DEFAULT_REGION: no region for sqs's"):
        SQS.from_environment()
