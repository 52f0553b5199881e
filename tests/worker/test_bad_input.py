"""Issue 12's faults at the worker's door, on the real gunicorn: bodies sqsd's POST may arrive
as (chunked, short), poison the decoder cannot carry, Lambda's answers that no retry fixes, a
dead letter too large for the DLQ, re-sent events with a new timestamp, ids with a newline and a
garbage cron header. Each answer is the README's contract table."""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
from urllib.parse import urlsplit

from sluice import envelope
from sluice.envelope import Event
from sluice.settings import SQS_MAX_MESSAGE_BYTES, WebSettings
from tests.worker.conftest import ALIASES, CLAIM_BUCKET, attr
from tests.worker.helpers import event, new_msgid, post, sqsd_headers
from worker.dispatch import Delivery, Dispatcher
from worker.observability import Metrics

TRANSCRIBE = ALIASES["transcribe_audio"]


def raw_post(url: str, head: dict[str, str], chunks: list[bytes], *, close: bool = False) -> int:
    """A POST written by hand: `chunks` go out as they are; `close` half-closes the socket after
    them (a client that sends fewer bytes than it announced). The answer's status, or 0."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
        sock.sendall(f"POST / HTTP/1.1\r\nHost: localhost\r\n{lines}\r\n".encode())
        for chunk in chunks:
            sock.sendall(chunk)
        if close:
            sock.shutdown(socket.SHUT_WR)
        answer = sock.makefile("rb").readline()
    return int(answer.split()[1]) if answer else 0


def dlq_reasons(queues, msgid: str) -> list[str | None]:
    return [attr(m, "reason") for m in queues.dead_letters(msgid)]


# --- fault 4: a body we did not read whole is never answered 200 -----------------------------


def test_a_chunked_post_is_read_whole_and_started(worker, queues, lambda_fake):
    ev = event()
    raw = ev.to_json().encode()
    msgid = new_msgid()
    parts = urlsplit(worker.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        # no Content-Length: http.client sends the iterable as chunks
        conn.request(
            "POST", "/", iter([raw[:10], raw[10:]]), sqsd_headers(msgid), encode_chunked=True
        )
        answer = conn.getresponse()
        status, doc = answer.status, json.loads(answer.read())
    finally:
        conn.close()
    assert (status, doc["outcome"]) == (200, "started")
    assert lambda_fake[0].started()[(TRANSCRIBE, ev.execution_name)]["id"] == ev.id
    assert queues.dead_letters(msgid) == []


def test_a_body_shorter_than_its_content_length_is_not_acknowledged(worker, queues):
    raw = event().to_json().encode()
    msgid = new_msgid()
    head = {**sqsd_headers(msgid), "Content-Length": str(len(raw) + 100)}
    status = raw_post(worker.url, head, [raw], close=True)
    assert status not in (0, 200)
    assert queues.dead_letters(msgid) == []


# --- fault 5: poison is dead-lettered with its reason, never looped on 503 --------------------


def dead_lettered(worker, queues, raw: bytes) -> tuple[str, dict]:
    msgid = new_msgid()
    status, answer = post(worker.url, raw, msgid=msgid)
    assert (status, answer["outcome"]) == (200, "dead_lettered"), answer
    (message,) = queues.dead_letters(msgid)
    assert attr(message, "reason") == answer["reason"]
    return answer["reason"], message


def test_json_nested_past_the_recursion_limit_is_malformed_json(worker, queues):
    # 3,000 levels (Python's limit is 1,000) within the test worker's 8 KiB body limit
    raw = b'{"data": ' + b"[" * 3_000 + b"]" * 3_000 + b"}"
    assert dead_lettered(worker, queues, raw)[0] == envelope.MALFORMED_JSON


def test_a_5000_digit_integer_is_malformed_json(worker, queues):
    doc = event().to_json().replace('"key":', '"n": ' + "7" * 5000 + ', "key":')
    assert dead_lettered(worker, queues, doc.encode())[0] == envelope.MALFORMED_JSON


def test_nan_in_data_is_malformed_json_and_never_reaches_lambda(worker, queues, lambda_fake):
    ev = event()
    raw = ev.to_json().replace('"key":', '"x": NaN, "key":').encode()
    before = len(lambda_fake[0].requests)
    assert dead_lettered(worker, queues, raw)[0] == envelope.MALFORMED_JSON
    assert len(lambda_fake[0].requests) == before


def test_lambdas_400_and_413_are_poison_with_their_reason(worker, queues, lambda_fake):
    for answer in ((400, "InvalidRequestContentException"), (413, "RequestTooLargeException")):
        ev = event()
        lambda_fake[0].fail(ev.execution_name, answer)
        reason, message = dead_lettered(worker, queues, ev.to_json().encode())
        assert reason == envelope.LAMBDA_REJECTED
        assert answer[1] in (attr(message, "detail") or "")


def test_invalid_utf8_near_the_sqs_limit_is_kept_in_the_bucket(worker, queues, media_bucket):
    # base64 makes 900 KB into 1.2 MB: more than any SQS message
    raw = b'{"x": "' + b"\xff" * 900_000 + b'"}'
    reason, message = dead_lettered(worker, queues, raw)
    assert reason == envelope.OVERSIZE
    assert attr(message, "body_encoding") == "s3"
    bucket, _, key = message["Body"].removeprefix("s3://").partition("/")
    assert (bucket, key.startswith("dead-letters/")) == (CLAIM_BUCKET, True)
    assert media_bucket.get_object(Bucket=bucket, Key=key)["Body"].read() == raw


# --- fault 6: a re-sent event with a new timestamp is a duplicate, not a conflict ---------------


def test_a_resent_event_with_a_new_timestamp_is_a_duplicate(worker, queues, lambda_fake):
    first = Event(name="media/transcription.requested", data={"key": "a"}, ts="2026-11-23T10:00Z")
    again = Event(name=first.name, data=first.data, id=first.id, ts="2026-11-23T10:05:00Z")
    assert post(worker.url, first.to_json().encode())[0] == 200
    msgid = new_msgid()
    status, answer = post(worker.url, again.to_json().encode(), msgid=msgid)
    assert (status, answer["outcome"]) == (200, "started")
    assert queues.dead_letters(msgid) == []
    assert [k for k in lambda_fake[0].started() if k[1] == first.id] == [(TRANSCRIBE, first.id)]


def test_the_same_id_with_other_data_is_still_a_conflict(worker, queues):
    first = event(key="uploads/a.mp3")
    assert post(worker.url, first.to_json().encode())[0] == 200
    other = Event(name=first.name, data={"key": "uploads/b.mp3"}, id=first.id, ts=first.ts)
    assert dead_lettered(worker, queues, other.to_json().encode())[0] == envelope.ID_CONFLICT


# --- fault 3: an id ending in a newline --------------------------------------------------------


def test_an_id_ending_in_a_newline_is_poison_and_the_next_event_starts(worker, queues, lambda_fake):
    doc = {**event().to_dict(), "id": "evt-newline-1\n"}
    raw = json.dumps(doc).encode()
    assert dead_lettered(worker, queues, raw)[0] == envelope.SCHEMA_VIOLATION
    innocent = event()
    assert post(worker.url, innocent.to_json().encode())[0] == 200
    assert (TRANSCRIBE, innocent.execution_name) in lambda_fake[0].started()


# --- fault 7: a garbage Scheduled-At on the cron route ---------------------------------------


def test_a_garbage_scheduled_at_is_dead_lettered_not_a_500(worker, queues):
    msgid = new_msgid()
    headers = {**sqsd_headers(msgid), "X-Aws-Sqsd-Taskname": "heartbeat"}
    headers["X-Aws-Sqsd-Scheduled-At"] = "yesterday at noon"
    status, answer = post(worker.url, b"", path="/cron/heartbeat", headers=headers)
    assert (status, answer["outcome"]) == (200, "dead_lettered")
    assert dlq_reasons(queues, msgid) == [envelope.SCHEMA_VIOLATION]


def test_without_a_bucket_a_dead_letter_too_large_for_sqs_goes_truncated(queues):
    # Given a dispatcher with no claim-check bucket, talking to moto's SQS
    settings = WebSettings.of(env="test", workflow_aliases=ALIASES, events_dlq_url=queues.dlq_url)
    metrics = Metrics("Sluice/Worker", {"Environment": "test"}, stream=io.StringIO())
    dispatcher = Dispatcher(
        settings=settings, lambda_client=None, sqs_client=queues.sqs, metrics=metrics
    )
    raw = b'{"x": "' + b"\xff" * 900_000 + b'"}'
    msgid = new_msgid()
    # When the body is poison too large for the DLQ even base64-encoded
    result = dispatcher.handle(raw, Delivery(message_id=msgid, queue="Sluice-test-events"))
    # Then it is dead-lettered (not looped on 503) with its reason and the original size
    assert (result.status, result.reason) == (200, envelope.OVERSIZE)
    (message,) = queues.dead_letters(msgid)
    assert attr(message, "body_truncated") == str(len(raw))
    kept = base64.b64decode(message["Body"])
    assert raw.startswith(kept) and len(kept) > 500_000
    size = len(message["Body"]) + sum(
        len(k) + len("String") + len(v["StringValue"].encode())
        for k, v in message["MessageAttributes"].items()
    )
    assert size <= SQS_MAX_MESSAGE_BYTES
