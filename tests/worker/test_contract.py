"""The sqsd contract (README, "Worker answers to sqsd"), against the app served by gunicorn.

Every request is shaped like sqsd's (its headers included); the Lambda Invoke boundary is the
local endpoint with durable naming semantics, the DLQ is moto's SQS.
"""

from __future__ import annotations

import base64
import json

from devtools import lambda_fake as lambda_fake_module
from sluice import envelope
from sluice.envelope import Event, execution_name
from tests.worker.conftest import ALIASES, MAX_BODY, attr
from tests.worker.helpers import event, new_msgid, post, s3_notification

TRANSCRIBE = ALIASES["transcribe_audio"]


def started_names(lambda_fake) -> set[str]:
    state, _ = lambda_fake
    return {name for (_, name) in state.started()}


# --- started, or already started: 200 --------------------------------------------------------


def test_a_valid_event_starts_its_workflow_and_answers_200(worker, lambda_fake):
    # Given a valid event routed to transcribe_audio
    ev = event()
    # When sqsd POSTs it
    status, answer = post(worker.url, ev.to_json().encode())
    # Then the worker answers 200 and the execution named after the event id is started
    assert (status, answer["outcome"]) == (200, "started")
    assert lambda_fake[0].started()[(TRANSCRIBE, ev.id)] == json.loads(ev.start_payload())


def test_a_duplicate_delivery_answers_200_and_starts_nothing_new(worker, lambda_fake):
    # Given an event already delivered once
    ev = event()
    body = ev.to_json().encode()
    assert post(worker.url, body)[0] == 200
    # When sqsd delivers it again
    status, answer = post(worker.url, body, receive_count=2)
    # Then the answer is 200 and there is still exactly one execution for the id
    assert (status, answer["outcome"]) == (200, "started")
    assert [k for k in lambda_fake[0].started() if k[1] == ev.id] == [(TRANSCRIBE, ev.id)]


def test_an_s3_upload_notification_starts_the_pipeline_as_media_uploaded(worker, lambda_fake):
    # Given S3's ObjectCreated notification for an upload
    body = s3_notification("media-bucket", "uploads/sermon+one.mp3", new_msgid())
    # When sqsd POSTs it
    status, _ = post(worker.url, body)
    # Then a media/uploaded event for that object started transcribe_audio
    assert status == 200
    (expected,) = envelope.parse_events(body)
    payload = lambda_fake[0].started()[(TRANSCRIBE, expected.execution_name)]
    assert payload["name"] == "media/uploaded"
    assert payload["data"]["key"] == "uploads/sermon one.mp3"


def test_s3_test_event_is_acknowledged_without_starting_anything(worker, lambda_fake):
    # Given the test event S3 sends when the notification is configured
    before = len(lambda_fake[0].requests)
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}).encode()
    # When sqsd POSTs it
    status, answer = post(worker.url, body)
    # Then it is deleted (200) and nothing is invoked
    assert (status, answer["outcome"]) == (200, "ignored")
    assert len(lambda_fake[0].requests) == before


# --- poison: 200 after the DLQ, with the reason ----------------------------------------------


def dead_lettered(worker, queues, body: bytes, reason: str):
    msgid = new_msgid()
    status, answer = post(worker.url, body, msgid=msgid)
    assert (status, answer) == (200, {"outcome": "dead_lettered", "reason": reason})
    (message,) = queues.dead_letters(msgid)
    assert attr(message, "reason") == reason
    assert attr(message, "source_queue") == "Sluice-test-events"
    assert attr(message, "receive_count") == "1"
    assert attr(message, "detail")
    return message


def test_malformed_json_goes_to_the_dlq_with_its_reason(worker, queues):
    message = dead_lettered(worker, queues, b'{"v": 1, "kind": ', envelope.MALFORMED_JSON)
    assert message["Body"] == '{"v": 1, "kind": '
    assert attr(message, "body_encoding") == "text"


def test_invalid_utf8_goes_to_the_dlq_base64_encoded(worker, queues):
    body = b'{"name": "\xff\xfe"}'
    message = dead_lettered(worker, queues, body, envelope.INVALID_UTF8)
    assert attr(message, "body_encoding") == "base64"
    assert base64.b64decode(message["Body"]) == body


def test_a_schema_violation_goes_to_the_dlq(worker, queues):
    doc = event().to_dict()
    del doc["id"]
    dead_lettered(worker, queues, json.dumps(doc).encode(), envelope.SCHEMA_VIOLATION)


def test_a_wrong_envelope_version_goes_to_the_dlq(worker, queues):
    doc = {**event().to_dict(), "v": 2}
    dead_lettered(worker, queues, json.dumps(doc).encode(), envelope.SCHEMA_VIOLATION)


def test_an_unknown_event_name_goes_to_the_dlq(worker, queues, lambda_fake):
    ev = Event(name="billing/invoice.paid", data={})
    before = len(lambda_fake[0].requests)
    dead_lettered(worker, queues, ev.to_json().encode(), envelope.UNKNOWN_EVENT)
    assert len(lambda_fake[0].requests) == before


def test_a_notice_no_workflow_starts_on_is_acknowledged_not_dead_lettered(
    worker, queues, lambda_fake
):
    # media/ready (the fan-in join's outcome) is for consumers outside Sluice
    ev = Event(name="media/ready", id="ready-media-1", data={"job_id": "media-1"})
    before = len(lambda_fake[0].requests)
    msgid = new_msgid()
    status, answer = post(worker.url, ev.to_json().encode(), msgid=msgid)
    assert (status, answer["outcome"]) == (200, "ignored")
    assert queues.dead_letters(msgid) == []
    assert len(lambda_fake[0].requests) == before


def test_an_oversize_body_goes_to_the_dlq_whole(worker, queues):
    ev = event(blob="x" * MAX_BODY)
    message = dead_lettered(worker, queues, ev.to_json().encode(), envelope.OVERSIZE)
    assert message["Body"] == ev.to_json()


def test_an_id_conflict_goes_to_the_dlq_and_leaves_the_first_execution(worker, queues, lambda_fake):
    # Given an event already started
    first = event(key="uploads/a.mp3")
    assert post(worker.url, first.to_json().encode())[0] == 200
    # When another event arrives with the same id but another payload
    other = Event(name=first.name, data={"key": "uploads/b.mp3"}, id=first.id, ts=first.ts)
    message = dead_lettered(worker, queues, other.to_json().encode(), envelope.ID_CONFLICT)
    # Then it is dead-lettered with its event id, and the first execution keeps its input
    assert attr(message, "event_id") == first.id
    assert lambda_fake[0].started()[(TRANSCRIBE, first.id)]["data"] == {"key": "uploads/a.mp3"}


def test_a_body_larger_than_any_sqs_message_is_refused_413(worker):
    status, _ = post(worker.url, b"x" * (1024 * 1024 + 1))
    assert status == 413


# --- transient: 503, nothing dead-lettered, the next delivery starts it -----------------------


def transient(worker, queues, lambda_fake, answer):
    state, _ = lambda_fake
    ev = event()
    state.fail(ev.execution_name, answer)
    msgid = new_msgid()
    status, body = post(worker.url, ev.to_json().encode(), msgid=msgid)
    assert (status, body["outcome"]) == (503, "transient")
    assert queues.dead_letters(msgid) == []
    assert (TRANSCRIBE, ev.id) not in state.started()
    # and sqsd's retry after ErrorVisibilityTimeout starts it
    assert post(worker.url, ev.to_json().encode(), msgid=msgid, receive_count=2)[0] == 200
    assert (TRANSCRIBE, ev.id) in state.started()
    return body


def test_throttling_answers_503_so_sqsd_retries(worker, queues, lambda_fake):
    body = transient(worker, queues, lambda_fake, (429, "TooManyRequestsException"))
    assert body["reason"] == "TooManyRequestsException"


def test_a_lambda_5xx_answers_503_so_sqsd_retries(worker, queues, lambda_fake):
    body = transient(worker, queues, lambda_fake, (500, "ServiceException"))
    assert body["reason"] == "ServiceException"


def test_a_routed_workflow_without_an_alias_answers_503(worker, queues):
    # embed_transcript is routed but not deployed in this worker's settings
    ev = event("media/embedding.requested")
    status, body = post(worker.url, ev.to_json().encode())
    assert (status, body) == (503, {"outcome": "transient", "reason": "no_alias"})


# --- the other routes ---------------------------------------------------------------------------


def test_health_answers_200(worker):
    status, body = post(worker.url, b"", method="GET", path="/health", headers={})
    assert (status, body) == (200, {"status": "ok", "env": "test"})


def test_an_unknown_path_is_404_and_a_wrong_method_405(worker):
    assert post(worker.url, b"", method="GET", path="/nope", headers={})[0] == 404
    assert post(worker.url, b"", method="GET", path="/", headers={})[0] == 405


# --- observability ----------------------------------------------------------------------------


def test_every_log_line_of_a_message_carries_its_correlation_id(worker, lambda_fake):
    # Given an event with its own correlation id whose first start Lambda throttles, so that its
    # message logs a warning besides the EMF line of each delivery
    ev = Event(name="media/transcode.requested", data={"k": 1}, correlation_id="corr-abc-123")
    lambda_fake[0].fail(ev.execution_name, lambda_fake_module.THROTTLED)
    msgid = new_msgid()
    # When sqsd POSTs it, and again after the 503
    assert post(worker.url, ev.to_json().encode(), msgid=msgid)[0] == 503
    assert post(worker.url, ev.to_json().encode(), msgid=msgid, receive_count=2)[0] == 200
    # Then every JSON line about this message has the correlation id
    lines = [json.loads(x) for x in worker.log_lines() if x.startswith("{") and msgid in x]
    assert lines and all(line["correlation_id"] == "corr-abc-123" for line in lines)
    # And its log line is in the one log schema (adapters/logs.py), the Lambdas' too
    (warning,) = [line for line in lines if "_aws" not in line]
    assert {"level", "location", "message", "timestamp", "service"} <= set(warning)
    assert (warning["level"], warning["service"], warning["reason"]) == (
        "WARNING",
        "sluice-worker",
        "TooManyRequestsException",
    )
    # And the EMF line of the delivery that started it counts it
    emf = [line for line in lines if "_aws" in line][-1]
    assert (emf["Received"], emf["Started"], emf["DeadLettered"]) == (1, 1, 0)
    metrics = {m["Name"] for m in emf["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert metrics == {
        "Received",
        "Started",
        "Duplicates",
        "DeadLettered",
        "TransientFailures",
        "Cancelled",
        "FlowDuplicates",
        "FlowSkipped",
        "FlowWaiting",
        "HandlingLatency",
    }
    assert [x["execution_name"] for x in emf["executions"]] == [execution_name(ev.id)]


def test_a_redelivered_start_counts_as_a_duplicate(worker):
    ev = event()
    msgid = new_msgid()
    post(worker.url, ev.to_json().encode(), msgid=msgid)
    post(worker.url, ev.to_json().encode(), msgid=msgid, receive_count=2)
    emf = [json.loads(x) for x in worker.log_lines() if msgid in x and "_aws" in x]
    assert [(m["Started"], m["Duplicates"]) for m in emf] == [(1, 0), (1, 1)]
