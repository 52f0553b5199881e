"""The lean Invoke client answers exactly like boto3's `invoke` and signs exactly like botocore."""

from __future__ import annotations

import socketserver
import threading

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    ParamValidationError,
)

from devtools.lambda_fake import SERVICE_ERROR, THROTTLED
from tests.worker.conftest import ALIASES, free_port
from worker.invoke import API, LambdaInvoker

ALIAS = ALIASES["transcribe_audio"]
CREDS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token")


@pytest.fixture
def invoker(lambda_fake) -> LambdaInvoker:
    return LambdaInvoker(region="eu-west-1", credentials=CREDS, endpoint_url=lambda_fake[1])


def test_the_signature_is_botocores_for_the_same_request_and_time():
    # Given the request the client makes, at a fixed time
    invoker = LambdaInvoker(region="eu-west-1", credentials=CREDS)
    path = f"{API}arn%3Aaws%3Alambda%3Aeu-west-1%3A123456789012%3Afunction%3Ax%3Alive/invocations"
    headers = {
        "Content-Type": "application/json",
        "X-Amz-Invocation-Type": "Event",
        "X-Amz-Durable-Execution-Name": "01JD3-abc_1",
    }
    payload = b'{"id":"01JD3-abc_1"}'
    ours = invoker.sign(path, headers, payload, "20261123T100000Z")
    # When botocore's SigV4 signer signs the same request at the same time
    request = AWSRequest(
        method="POST",
        url=f"https://lambda.eu-west-1.amazonaws.com{path}",
        data=payload,
        headers={
            **headers,
            "X-Amz-Date": "20261123T100000Z",
            "X-Amz-Security-Token": "session-token",
        },
    )
    request.context["timestamp"] = "20261123T100000Z"
    auth = SigV4Auth(CREDS, "lambda", "eu-west-1")
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    # Then both signatures are the same
    assert ours["Authorization"].endswith(f"Signature={expected}")
    assert ours["X-Amz-Security-Token"] == "session-token"


def test_a_new_name_starts_an_execution_with_the_exact_request(invoker, lambda_fake):
    state, _ = lambda_fake
    answer = invoker.invoke(
        FunctionName=ALIAS,
        InvocationType="Event",
        DurableExecutionName="lean-1",
        Payload=b'{"a":1}',
    )
    assert answer["StatusCode"] == 202
    assert answer["DurableExecutionArn"].endswith("/durable-execution/lean-1/local")
    call = [r for r in state.requests if r.execution_name == "lean-1"][-1]
    assert (call.function_name, call.invocation_type, call.payload) == (ALIAS, "Event", b'{"a":1}')


def test_the_same_name_and_payload_returns_the_existing_execution(invoker):
    first = invoker.invoke(FunctionName=ALIAS, DurableExecutionName="lean-2", Payload=b"{}")
    again = invoker.invoke(FunctionName=ALIAS, DurableExecutionName="lean-2", Payload=b"{}")
    assert again["DurableExecutionArn"] == first["DurableExecutionArn"]


def test_the_same_name_with_other_input_raises_already_started(invoker):
    invoker.invoke(FunctionName=ALIAS, DurableExecutionName="lean-3", Payload=b'{"a":1}')
    with pytest.raises(ClientError) as caught:
        invoker.invoke(FunctionName=ALIAS, DurableExecutionName="lean-3", Payload=b'{"a":2}')
    assert caught.value.response["Error"]["Code"] == "DurableExecutionAlreadyStartedException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409


@pytest.mark.parametrize("answer", [THROTTLED, SERVICE_ERROR])
def test_throttling_and_5xx_raise_client_errors_with_their_codes(invoker, lambda_fake, answer):
    lambda_fake[0].fail("lean-4", answer)
    with pytest.raises(ClientError) as caught:
        invoker.invoke(FunctionName=ALIAS, DurableExecutionName="lean-4", Payload=b"{}")
    assert caught.value.response["Error"]["Code"] == answer[1]
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == answer[0]


def test_an_unreachable_endpoint_raises_a_connection_error():
    invoker = LambdaInvoker(
        region="eu-west-1", credentials=CREDS, endpoint_url=f"http://127.0.0.1:{free_port()}"
    )
    with pytest.raises(EndpointConnectionError):
        invoker.invoke(FunctionName=ALIAS, DurableExecutionName="lean-5", Payload=b"{}")


def test_missing_credentials_fail_the_call_not_the_start(monkeypatch, lambda_fake):
    # Given no credentials anywhere, the client still builds (the web process boots)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", lambda_fake[1])
    invoker = LambdaInvoker.from_environment()
    # When it is called, Then the error is botocore's (the dispatcher answers 503)
    with pytest.raises(BotoCoreError):
        invoker.invoke(FunctionName=ALIAS, DurableExecutionName="lean-6", Payload=b"{}")


class OneAnswerPerConnection(socketserver.BaseRequestHandler):
    """Answers one request per connection with a chunked 409, then closes without saying so
    (like a load balancer dropping an idle kept-alive connection)."""

    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.request.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        while len(body) < length:
            body += self.request.recv(65536)
        payload = b'{"Type":"User","message":"already started"}'
        self.request.sendall(
            b"HTTP/1.1 409 Conflict\r\n"
            b"x-amzn-ErrorType: DurableExecutionAlreadyStartedException:http://internal\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + f"{len(payload[:10]):x}\r\n".encode()
            + payload[:10]
            + b"\r\n"
            + f"{len(payload[10:]):x}\r\n".encode()
            + payload[10:]
            + b"\r\n0\r\n\r\n"
        )


def test_a_dropped_keep_alive_connection_is_reopened_and_chunked_errors_are_read():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), OneAnswerPerConnection)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        invoker = LambdaInvoker(
            region="eu-west-1",
            credentials=CREDS,
            endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
        )
        for _ in range(2):  # the second call finds its kept-alive connection closed
            with pytest.raises(ClientError) as caught:
                invoker.invoke(FunctionName=ALIAS, DurableExecutionName="lean-7", Payload=b"{}")
            error = caught.value.response["Error"]
            assert error == {
                "Code": "DurableExecutionAlreadyStartedException",
                "Message": "already started",
            }
    finally:
        server.shutdown()


class Recorder(socketserver.BaseRequestHandler):
    """Keeps every byte a client writes; answers each complete request with a 202."""

    received: list[bytes] = []

    def handle(self) -> None:
        while data := self.request.recv(65536):
            Recorder.received.append(data)
            if b"\r\n\r\n" in data:
                self.request.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("value", ["evt-1\n", "evt-1\r\nX-Injected: 1", "a\x00b", "a\x7f"])
def test_a_header_value_with_a_control_character_is_refused_before_any_byte_is_written(value):
    Recorder.received = []
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        invoker = LambdaInvoker(
            region="eu-west-1",
            credentials=CREDS,
            endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
        )
        # whatever its caller checked, the client refuses (botocore's own validation error)
        with pytest.raises(ParamValidationError):
            invoker.invoke(FunctionName=ALIAS, DurableExecutionName=value, Payload=b"{}")
        assert Recorder.received == []
        # and the connection stays usable for the next, innocent call
        answer = invoker.invoke(FunctionName=ALIAS, DurableExecutionName="evt-2", Payload=b"{}")
        assert answer["StatusCode"] == 202
        request = b"".join(Recorder.received)
        assert request.count(b"\r\n\r\n") == 1 and b"Authorization: AWS4-HMAC-SHA256" in request
    finally:
        server.shutdown()
