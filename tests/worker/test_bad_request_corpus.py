"""A generated corpus of bad requests (Hypothesis, plus issue 12's cases): every answer is a row
of the README's contract table, the worker never crashes, and `/health` answers afterwards.

The bulk runs against the WSGI app in-process (its real dispatcher, the lean Invoke client on the
Lambda fake, moto's SQS and S3); a sample of the same corpus then goes through the real gunicorn.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice import envelope
from sluice.catalog import ROUTES
from sluice.settings import SQS_MAX_MESSAGE_BYTES, WebSettings
from tests.worker.conftest import ALIASES, CLAIM_BUCKET, MAX_BODY, attr
from tests.worker.helpers import event, new_msgid, post, sqsd_headers
from worker.app import App
from worker.dispatch import Dispatcher
from worker.invoke import LambdaInvoker
from worker.observability import Metrics

REASONS = {
    envelope.MALFORMED_JSON,
    envelope.INVALID_UTF8,
    envelope.SCHEMA_VIOLATION,
    envelope.UNKNOWN_EVENT,
    envelope.OVERSIZE,
    envelope.ID_CONFLICT,
    envelope.LAMBDA_REJECTED,
}
OUTCOMES_200 = {"started", "dead_lettered", "ignored"}

# --- the corpus ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
odd_text = st.text(max_size=40) | st.sampled_from(
    ["evt-1\n", "a\r\nX: 1", "x\x00", "", " ", "a--b"]
)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """An event envelope with some fields mutated, removed or added."""
    doc: dict[str, Any] = event(draw(st.sampled_from(sorted(ROUTES)))).to_dict()
    doc["id"] = f"corpus-{new_msgid()}"
    doc["correlation_id"] = doc["id"]
    mutations = {
        "v": st.sampled_from([1, True, 1.0, "1", 2, None, 0]),
        "kind": st.sampled_from(["event", "task", "", None]),
        "id": odd_text,
        "name": st.sampled_from([*ROUTES, "billing/invoice.paid", "NoSlash", "media/uploaded\n"]),
        "ts": st.sampled_from(["2026-11-23T10:00:00Z", "yesterday", "2026-11-23T10:00:00", 5]),
        "data": json_values,
        "correlation_id": odd_text,
    }
    for key in draw(st.lists(st.sampled_from(sorted(mutations)), max_size=3, unique=True)):
        doc[key] = draw(mutations[key])
    for key in draw(st.lists(st.sampled_from(sorted(doc)), max_size=1)):
        del doc[key]
    if draw(st.booleans()):
        doc[draw(st.text(min_size=1, max_size=5))] = draw(json_values)
    text = json.dumps(doc, allow_nan=True)
    return text.encode()


CASES = [
    b'{"data": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b'{"n": ' + b"7" * 5000 + b"}",
    b'{"x": NaN}',
    b'{"x": 1e400}',
    b'{"Records": []}',
    b'{"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}]}',
    b'{"Service": "Amazon S3", "Event": "s3:TestEvent"}',
    b"\xff\xfe" * 100,
    b"",
    b"null",
    b"[]",
    b'"a string"',
]
bodies = (
    st.sampled_from(CASES)
    | envelopes()
    | st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
)
# How the body travels: whole, without Content-Length (chunked), or short of its Content-Length.
transports = st.sampled_from(["whole", "chunked", "short", "bad_length"])


# --- the app in-process --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(lambda_fake, queues, media_bucket) -> App:
    settings_ = WebSettings.of(
        env="test",
        workflow_aliases=ALIASES,
        events_dlq_url=queues.dlq_url,
        max_body_bytes=MAX_BODY,
        claim_check_bucket=CLAIM_BUCKET,
    )
    invoker = LambdaInvoker(
        region="eu-west-1",
        credentials=Credentials("AKID", "secret"),
        endpoint_url=lambda_fake[1],
        timeout_s=5,
    )
    metrics = Metrics("Sluice/Worker", {"Environment": "test"}, stream=io.StringIO())
    dispatcher = Dispatcher(
        settings=settings_,
        lambda_client=invoker,
        sqs_client=queues.sqs,
        s3_client=media_bucket,
        metrics=metrics,
    )
    return App(settings_, dispatcher)


def call(app: App, body: bytes, transport: str, msgid: str) -> tuple[int, dict[str, Any]]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/",
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,  # as gunicorn says: a chunked body ends at its last chunk
        **{
            "HTTP_" + k.upper().replace("-", "_"): v
            for k, v in sqsd_headers(msgid).items()
            if k.startswith("X-Aws-Sqsd")
        },
    }
    if transport == "whole":
        environ["CONTENT_LENGTH"] = str(len(body))
    elif transport == "short":
        environ["CONTENT_LENGTH"] = str(len(body) + 10)
    elif transport == "bad_length":
        environ["CONTENT_LENGTH"] = "12x"
    statuses: list[str] = []
    raw = b"".join(app(environ, lambda status, headers: statuses.append(status)))
    return int(statuses[0].split()[0]), json.loads(raw)


def check_contract(status: int, answer: dict[str, Any], transport: str, body: bytes, dlq) -> None:
    """The README's table: which answer each class of request may get."""
    if transport in ("short", "bad_length"):
        assert status == 400, (status, answer)  # never 200 for a body not read whole
        assert dlq() == []
        return
    if len(body) > SQS_MAX_MESSAGE_BYTES:
        assert status == 413
        return
    assert status in (200, 503), (status, answer)
    if status == 503:  # the only deployment fault here: embed_transcript has no alias
        assert answer == {"outcome": "transient", "reason": "no_alias"}
        return
    assert answer["outcome"] in OUTCOMES_200, answer
    dead = dlq()
    if answer["outcome"] == "dead_lettered":
        assert answer["reason"] in REASONS
        assert [attr(m, "reason") for m in dead] == [answer["reason"]]
        assert kept(dead[0]) == body  # the whole body, however it travelled
    else:
        assert dead == []


def kept(message: dict[str, Any]) -> bytes:
    """The body a DLQ message holds (its body_encoding)."""
    encoding = attr(message, "body_encoding")
    if encoding == "base64":
        return base64.b64decode(message["Body"])
    return b"" if encoding == "empty" else message["Body"].encode()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=bodies, transport=transports)
def test_every_answer_is_a_row_of_the_contract_table(app, queues, body, transport):
    msgid = new_msgid()
    status, answer = call(app, body, transport, msgid)
    check_contract(status, answer, transport, body, lambda: queues.dead_letters(msgid))


# --- the same corpus through the real gunicorn --------------------------------------------------


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=bodies)
def test_the_real_worker_answers_the_corpus_by_the_table_and_stays_healthy(worker, queues, body):
    msgid = new_msgid()
    status, answer = post(worker.url, body, msgid=msgid)
    check_contract(status, answer, "whole", body, lambda: queues.dead_letters(msgid))
    assert worker.process.poll() is None
    assert post(worker.url, b"", method="GET", path="/health", headers={})[0] == 200
