"""The Lambda Invoke boundary, in process: the exact request the worker makes and how it reads
each answer (botocore's Stubber; moto does not implement DurableExecutionName)."""

from __future__ import annotations

import io
import json

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from adapters import errors
from devtools import lambda_fake
from sluice.envelope import ID_CONFLICT, LAMBDA_REJECTED, Event
from sluice.settings import WebSettings
from tests.worker.conftest import ALIASES, free_port
from worker.dispatch import Delivery, Dispatcher
from worker.observability import Metrics

DLQ = "https://sqs.eu-west-1.amazonaws.com/123456789012/Sluice-test-events-dlq"
DELIVERY = Delivery(message_id="m-1", receive_count=1, queue="Sluice-test-events")


def settings() -> WebSettings:
    return WebSettings.of(env="test", workflow_aliases=ALIASES, events_dlq_url=DLQ)


@pytest.fixture
def clients():
    lam = boto3.client("lambda", region_name="eu-west-1")
    sqs = boto3.client("sqs", region_name="eu-west-1")
    with Stubber(lam) as lam_stub, Stubber(sqs) as sqs_stub:
        yield lam, lam_stub, sqs, sqs_stub
        lam_stub.assert_no_pending_responses()
        sqs_stub.assert_no_pending_responses()


def dispatcher(lam, sqs) -> Dispatcher:
    metrics = Metrics("Sluice/Worker", {"Environment": "test"}, stream=io.StringIO())
    return Dispatcher(settings=settings(), lambda_client=lam, sqs_client=sqs, metrics=metrics)


EVENT = Event(
    name="media/transcription.requested",
    data={"bucket": "media", "key": "uploads/sermon.mp3"},
    id="01JD3XK5Q0VZ8Y6T4W2R1N9M7B",
    ts="2026-11-23T10:00:00Z",
    correlation_id="corr-1",
)
EXPECTED_REQUEST = {
    "FunctionName": ALIASES["transcribe_audio"],
    "InvocationType": "Event",
    "DurableExecutionName": "01JD3XK5Q0VZ8Y6T4W2R1N9M7B",
    "Payload": EVENT.start_payload(),
}


def test_the_invoke_request_names_alias_type_execution_and_payload(clients):
    lam, lam_stub, sqs, _ = clients
    # Given Lambda will start the execution
    lam_stub.add_response(
        "invoke",
        {"StatusCode": 202, "DurableExecutionArn": "arn:aws:lambda:…:durable-execution/x"},
        EXPECTED_REQUEST,
    )
    # When the event is handled
    result = dispatcher(lam, sqs).handle(EVENT.to_json().encode(), DELIVERY)
    # Then the request was exactly the expected one (the Stubber checks it) and sqsd gets 200
    assert (result.status, result.outcome, result.counts["Started"]) == (200, "started", 1)
    assert json.loads(EXPECTED_REQUEST["Payload"])["id"] == EVENT.id


def test_an_id_that_does_not_fit_lambdas_rule_gets_a_derived_execution_name(clients):
    lam, lam_stub, sqs, _ = clients
    ev = Event(name=EVENT.name, data=EVENT.data, id="order:42/retry.1", ts=EVENT.ts)
    lam_stub.add_response(
        "invoke",
        {"StatusCode": 202},
        {
            **EXPECTED_REQUEST,
            "DurableExecutionName": ev.execution_name,
            "Payload": ev.start_payload(),
        },
    )
    assert dispatcher(lam, sqs).handle(ev.to_json().encode(), DELIVERY).status == 200
    assert ev.execution_name.startswith("order_42_retry_1--")


def test_already_started_with_the_same_input_is_200(clients):
    lam, lam_stub, sqs, _ = clients
    # Lambda answers a repeated name + payload with the existing execution
    lam_stub.add_response(
        "invoke", {"StatusCode": 202, "DurableExecutionArn": "arn:existing"}, EXPECTED_REQUEST
    )
    redelivery = Delivery(message_id="m-1", receive_count=3)
    result = dispatcher(lam, sqs).handle(EVENT.to_json().encode(), redelivery)
    assert (result.status, result.counts["Duplicates"]) == (200, 1)


def test_already_started_with_other_input_is_dead_lettered_as_id_conflict(clients):
    lam, lam_stub, sqs, sqs_stub = clients
    lam_stub.add_client_error(
        "invoke",
        service_error_code="DurableExecutionAlreadyStartedException",
        http_status_code=409,
        expected_params=EXPECTED_REQUEST,
    )
    sqs_stub.add_response(
        "send_message",
        {"MessageId": "dlq-1"},
        {
            "QueueUrl": DLQ,
            "MessageBody": EVENT.to_json(),
            "MessageAttributes": {
                "reason": {"DataType": "String", "StringValue": ID_CONFLICT},
                "detail": {
                    "DataType": "String",
                    "StringValue": f"execution '{EVENT.id}' of transcribe_audio already "
                    "started with other input",
                },
                "body_encoding": {"DataType": "String", "StringValue": "text"},
                "sqsd_msgid": {"DataType": "String", "StringValue": "m-1"},
                "receive_count": {"DataType": "String", "StringValue": "1"},
                "source_queue": {"DataType": "String", "StringValue": "Sluice-test-events"},
                "correlation_id": {"DataType": "String", "StringValue": "corr-1"},
                "event_id": {"DataType": "String", "StringValue": EVENT.id},
            },
        },
    )
    result = dispatcher(lam, sqs).handle(EVENT.to_json().encode(), DELIVERY)
    assert (result.status, result.outcome, result.reason) == (200, "dead_lettered", ID_CONFLICT)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("TooManyRequestsException", 429),
        ("EC2ThrottledException", 502),
        ("ServiceException", 500),
        ("ResourceNotReadyException", 502),
    ],
)
def test_throttling_and_5xx_answer_503(clients, code, status):
    lam, lam_stub, sqs, _ = clients
    lam_stub.add_client_error(
        "invoke", service_error_code=code, http_status_code=status, expected_params=EXPECTED_REQUEST
    )
    result = dispatcher(lam, sqs).handle(EVENT.to_json().encode(), DELIVERY)
    assert (result.status, result.outcome, result.reason) == (503, "transient", code)
    assert result.counts["TransientFailures"] == 1


def test_a_network_error_answers_503():
    # Given Lambda's endpoint refuses connections
    closed = f"http://127.0.0.1:{free_port()}"
    config = Config(retries={"total_max_attempts": 1}, connect_timeout=1)
    lam = boto3.client("lambda", region_name="eu-west-1", endpoint_url=closed, config=config)
    sqs = boto3.client("sqs", region_name="eu-west-1", endpoint_url=closed, config=config)
    # When the event is handled
    result = dispatcher(lam, sqs).handle(EVENT.to_json().encode(), DELIVERY)
    # Then sqsd is told to retry
    assert (result.status, result.outcome, result.reason) == (
        503,
        "transient",
        "EndpointConnectionError",
    )


def test_poison_is_retried_when_the_dlq_cannot_take_it(clients):
    lam, _, sqs, sqs_stub = clients
    # Given the DLQ refuses the message
    sqs_stub.add_client_error(
        "send_message", service_error_code="ServiceUnavailable", http_status_code=503
    )
    # When a malformed body arrives
    result = dispatcher(lam, sqs).handle(b"not json", DELIVERY)
    # Then sqsd keeps it (503): nothing is lost
    assert (result.status, result.reason) == (503, "dlq_unavailable")


# --- every error Invoke can return, as botocore's service model lists it ----------------------

INVOKE = botocore.session.get_session().get_service_model("lambda").operation_model("Invoke")
INVOKE_ERRORS = {e.name: e.metadata["error"]["httpStatusCode"] for e in INVOKE.error_shapes}
# the adapters' table: the codes of a request Lambda refuses (the event is poison)
POISON_INVOKE_ERRORS = {code for code, kind in errors.CODES.items() if kind == errors.REJECTED}


def test_the_poison_answers_are_invoke_errors_about_the_request_itself():
    # The errors no retry can fix: the request's content (400) or size (413)
    assert {code: INVOKE_ERRORS[code] for code in POISON_INVOKE_ERRORS} == {
        "InvalidRequestContentException": 400,
        "RequestTooLargeException": 413,
        "SerializedRequestEntityTooLargeException": 413,
    }


@pytest.mark.parametrize(("code", "status"), sorted(INVOKE_ERRORS.items()))
def test_each_invoke_error_is_either_poison_or_retried(clients, code, status):
    lam, lam_stub, sqs, sqs_stub = clients
    lam_stub.add_client_error(
        "invoke", service_error_code=code, http_status_code=status, expected_params=EXPECTED_REQUEST
    )
    if code in POISON_INVOKE_ERRORS or code == "DurableExecutionAlreadyStartedException":
        sqs_stub.add_response("send_message", {"MessageId": "dlq-1"})
    result = dispatcher(lam, sqs).handle(EVENT.to_json().encode(), DELIVERY)
    if code in POISON_INVOKE_ERRORS:
        assert (result.status, result.reason) == (200, LAMBDA_REJECTED)
    elif code == "DurableExecutionAlreadyStartedException":
        assert (result.status, result.reason) == (200, ID_CONFLICT)
    else:
        # throttling, 5xx, and deployment faults (404, 403, 409 …): the redrive policy holds them
        assert (result.status, result.outcome, result.reason) == (503, "transient", code)


@pytest.mark.parametrize("code", ["AccessDeniedException", "ResourceNotFoundException"])
def test_a_deployment_fault_is_retried_not_blamed_on_the_event(clients, code):
    lam, lam_stub, sqs, _ = clients
    lam_stub.add_client_error(
        "invoke", service_error_code=code, http_status_code=403 if "Access" in code else 404
    )
    result = dispatcher(lam, sqs).handle(EVENT.to_json().encode(), DELIVERY)
    assert (result.status, result.reason) == (503, code)


def test_the_lambda_fakes_answers_are_invoke_errors_with_their_model_status():
    # the fake (devtools/lambda_fake.py) answers only as botocore's model says Invoke can
    answers = [
        lambda_fake.THROTTLED,
        lambda_fake.SERVICE_ERROR,
        lambda_fake.INVALID_REQUEST,
        lambda_fake.TOO_LARGE,
        (409, "DurableExecutionAlreadyStartedException"),
    ]
    assert all(INVOKE_ERRORS[kind] == status for status, kind in answers)
    assert set(lambda_fake.Faults().kinds) >= {lambda_fake.THROTTLED, lambda_fake.SERVICE_ERROR}
