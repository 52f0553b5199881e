"""Lean clients for the AWS calls on the worker's hot path: Lambda Invoke with a durable name,
DynamoDB's item calls for flow control (`DynamoDB`, docs/flow-control.md) and the scheduler's
tick ledger, and SQS's SendMessage for the scheduler's event ticks (`SQS`).

botocore spends 1-3 ms of CPU per call (model validation, event hooks, signing, urllib3); at
sqsd's rate that is most of an instance. This client makes exactly one request shape: SigV4
signed (the day's signing key cached), written as HTTP/1.1 over one kept-alive socket per thread
(TLS to Lambda's regional endpoint). It answers like boto3's `invoke`: the same keyword
arguments, the same response keys, the same exceptions (botocore's ClientError with Error.Code,
BotoCoreError for the network and missing credentials), so the dispatcher cannot tell them apart.
Credentials come from botocore's provider chain (the instance profile on EB, refreshed by
botocore). Its signature is checked against botocore's signer in tests/worker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import socket
import ssl
import threading
import time
from typing import Any, Self
from urllib.parse import quote, urlsplit

from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    ParamValidationError,
)

from worker.credentials import LazyCredentials

SERVICE = "lambda"
API = "/2015-03-31/functions/"
# A control character (CR/LF above all) in a header value would end the header block early: the
# request arrives split in two, without its signature, and the garbage half poisons the next
# request on the kept-alive connection. Refused here whatever the caller validated.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


class SignedClient:
    """SigV4-signed POSTs to one AWS service over one kept-alive connection per thread."""

    service = SERVICE

    def __init__(
        self,
        *,
        region: str,
        credentials: Any,
        endpoint_url: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.region = region
        self.credentials = credentials  # botocore Credentials (refreshable)
        url = endpoint_url or f"https://{self.service}.{region}.amazonaws.com"
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        default_port = (self.https and self.port == 443) or (not self.https and self.port == 80)
        self.host_header = self.host if default_port else f"{self.host}:{self.port}"
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._keys: dict[tuple[str, str], bytes] = {}
        self._paths: dict[str, str] = {}
        self._canonical: dict[str, str] = {}
        self.scope_tail = f"{region}/{self.service}/aws4_request"

    @classmethod
    def from_environment(cls, *, timeout_s: float = 10.0, session: Any = None) -> Self:
        """An invoker with `session`'s region and credentials (the process's, by default)."""
        if session is None:
            import botocore.session

            session = botocore.session.get_session()
        region = session.get_config_variable("region") or os.environ.get("AWS_REGION", "")
        if not region:
            raise RuntimeError(
                f"AWS_REGION/AWS_DEFAULT_REGION: no region for {cls.service}'s client"
            )
        return cls(
            region=region,
            # Resolved at the first call, not at boot: a slow instance metadata service must
            # not keep the web process from starting (a call without credentials is a 503).
            credentials=LazyCredentials(session),
            endpoint_url=os.environ.get(f"AWS_ENDPOINT_URL_{cls.service.upper()}")
            or os.environ.get("AWS_ENDPOINT_URL"),
            timeout_s=timeout_s,
        )

    # -- signing ---------------------------------------------------------------------------

    def _signing_key(self, secret: str, day: str) -> bytes:
        key = self._keys.get((secret, day))
        if key is None:
            k = _hmac(f"AWS4{secret}".encode(), day)
            k = _hmac(k, self.region)
            k = _hmac(k, self.service)
            key = _hmac(k, "aws4_request")
            self._keys = {(secret, day): key}  # one day, one key: the cache never grows
        return key

    def sign(
        self, path: str, headers: dict[str, str], payload: bytes, amz_date: str
    ) -> dict[str, str]:
        """`headers` plus Host, X-Amz-Date, the token and Authorization (SigV4, header form)."""
        creds = self.credentials.get_frozen_credentials()
        day = amz_date[:8]
        signed = {k.lower(): v.strip() for k, v in headers.items()}
        signed["host"] = self.host_header
        signed["x-amz-date"] = amz_date
        if creds.token:
            signed["x-amz-security-token"] = creds.token
        names = sorted(signed)
        # Services other than S3 sign the path URI-encoded once more (botocore does the same).
        canonical_uri = self._canonical.get(path)
        if canonical_uri is None:
            canonical_uri = self._canonical[path] = quote(path, safe="/~")
        canonical = "\n".join(
            [
                "POST",
                canonical_uri,
                "",
                "".join(f"{n}:{signed[n]}\n" for n in names),
                ";".join(names),
                hashlib.sha256(payload).hexdigest(),
            ]
        )
        scope = f"{day}/{self.scope_tail}"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        signature = hmac.new(
            self._signing_key(creds.secret_key, day), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        out = dict(headers)
        out["Host"] = self.host_header
        out["X-Amz-Date"] = amz_date
        if creds.token:
            out["X-Amz-Security-Token"] = creds.token
        out["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        return out

    # -- transport -------------------------------------------------------------------------
    # HTTP/1.1 by hand over one kept-alive socket per thread: http.client's request building and
    # email-parser header parsing cost ~0.3 ms per call, a third of the per-event budget.

    def _connection(self) -> _Connection:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _Connection(self.host, self.port, https=self.https, timeout_s=self.timeout_s)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def post(self, path: str, headers: dict[str, str], payload: bytes) -> tuple[int, dict, bytes]:
        """(status, headers, body) of one signed POST."""
        # A kept-alive connection the server has closed fails on first use: one fresh retry
        # (safe: every call made through these clients is idempotent or harmless twice: Lambda
        # starts a name once, flow control's writes are conditional on the event id, an event
        # sent twice is one start for the worker, and a ledger claim repeated after it took
        # effect is refused, its tick at worst abandoned: at most once holds, as with boto3's
        # own retries).
        for attempt in (1, 2):
            signed = self.sign(
                path, headers, payload, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            )
            signed["Content-Length"] = str(len(payload))
            _check_header_values(signed)
            fresh = getattr(self._local, "conn", None) is None
            try:
                conn = self._connection()
                status, answer_headers, body = conn.exchange(path, signed, payload)
            except _StaleConnection as exc:
                self._drop()
                if attempt == 2 or fresh:
                    raise EndpointConnectionError(endpoint_url=self.host, error=exc) from None
                continue
            except OSError as exc:  # refused, unreachable, timed out, reset mid-answer
                self._drop()
                raise EndpointConnectionError(endpoint_url=self.host, error=exc) from None
            if answer_headers.get("connection", "").lower() == "close":
                self._drop()
            return status, answer_headers, body
        raise AssertionError("unreachable")


class LambdaInvoker(SignedClient):
    """`invoke(FunctionName=, InvocationType=, DurableExecutionName=, Payload=)` like boto3's."""

    def invoke(
        self,
        *,
        FunctionName: str,
        InvocationType: str = "Event",
        DurableExecutionName: str,
        Payload: bytes,
    ) -> dict[str, Any]:
        path = self._paths.get(FunctionName)
        if path is None:  # a handful of aliases: quote each once
            path = self._paths[FunctionName] = f"{API}{quote(FunctionName, safe='')}/invocations"
        headers = {
            "Content-Type": "application/json",
            "X-Amz-Invocation-Type": InvocationType,
            "X-Amz-Durable-Execution-Name": DurableExecutionName,
        }
        # Lambda starts a name once: a repeat (the transport's retry) is the same start.
        return self._answer(*self.post(path, headers, Payload))

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        meta = {"HTTPStatusCode": status, "RequestId": headers.get("x-amzn-requestid", "")}
        if status < 300:
            answer: dict[str, Any] = {"StatusCode": status, "ResponseMetadata": meta}
            arn = headers.get("x-amz-durable-execution-arn")
            if arn:
                answer["DurableExecutionArn"] = arn
            return answer
        code = headers.get("x-amzn-errortype", "").split(":", 1)[0]
        doc = _json_object(body)
        message = doc.get("message") or doc.get("Message") or body[:200].decode("utf-8", "replace")
        code = code or str(doc.get("__type", "")) or f"HTTP{status}"
        raise ClientError(
            {"Error": {"Code": code, "Message": message}, "ResponseMetadata": meta}, "Invoke"
        )


def _check_header_values(headers: dict[str, str]) -> None:
    """botocore's ParamValidationError (as boto3 raises for a bad parameter) before any write."""
    for name, value in headers.items():
        if _CONTROL.search(value):
            raise ParamValidationError(
                report=f"header {name} holds a control character: {value[:80]!r}"
            )


class _StaleConnection(OSError):
    """The server closed a kept-alive connection before answering."""


class _Connection:
    """One HTTP/1.1 connection: send a POST, read one answer (Content-Length or chunked)."""

    def __init__(self, host: str, port: int, *, https: bool, timeout_s: float) -> None:
        sock = socket.create_connection((host, port), timeout=timeout_s)
        if https:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.reader = sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def exchange(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        try:
            self.sock.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body)
            status_line = self.reader.readline(65537)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _StaleConnection(str(exc)) from None
        if not status_line:
            raise _StaleConnection("connection closed before the answer")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise OSError(f"not an HTTP answer: {status_line[:60]!r}")
        status = int(parts[1])
        answer: dict[str, str] = {}
        while True:
            line = self.reader.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            answer[name.strip().lower()] = value.strip()
        if answer.get("transfer-encoding", "").lower() == "chunked":
            return status, answer, self._chunked()
        length = answer.get("content-length")
        if length is not None:
            return status, answer, self.reader.read(int(length))
        answer["connection"] = "close"  # the body runs to the end of the connection
        return status, answer, self.reader.read()

    def _chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.reader.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.reader.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.reader.read(size))
            self.reader.readline(65537)


class _JsonClient(SignedClient):
    """A service of AWS's JSON 1.0 protocol (X-Amz-Target names the operation): boto3's answers
    (the response document plus ResponseMetadata) and its ClientError codes."""

    TARGET = ""

    def _call(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        headers = {
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": self.TARGET + operation,
        }
        status, answer_headers, body = self.post("/", headers, json.dumps(request).encode())
        doc = _json_object(body)
        meta = {"HTTPStatusCode": status, "RequestId": answer_headers.get("x-amzn-requestid", "")}
        if status < 300:
            return {**doc, "ResponseMetadata": meta}
        # As botocore's JSON parser reads the code: `__type` less its namespace and anything
        # after a colon; a service that kept its Query protocol's codes (SQS: awsQueryCompatible
        # in botocore's model) names the old code in x-amzn-query-error ("Code;Sender"), and
        # botocore reports that one when the header has both parts.
        code = str(doc.get("__type", "")).split(":", 1)[0].rsplit("#", 1)[-1]
        query = answer_headers.get("x-amzn-query-error", "").split(";")
        if len(query) == 2 and query[0]:
            code = query[0]
        code = code or f"HTTP{status}"
        message = doc.get("message") or doc.get("Message") or body[:200].decode("utf-8", "replace")
        error: dict[str, Any] = {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": meta,
        }
        for key in ("Item", "CancellationReasons"):  # as botocore parses them
            if key in doc:
                error[key] = doc[key]
        raise ClientError(error, operation)  # type: ignore[arg-type]


class DynamoDB(_JsonClient):
    """boto3's low-level DynamoDB client for the calls flow control (adapters/flow.py) and the
    scheduler's tick ledger (worker/scheduler/ledger.py, two writes a tick) make:
    the same keyword arguments and answers (attribute values as DynamoDB writes them), the same
    ClientError codes (with the item of a failed condition when asked for it). No retries of
    its own: a failure is the message's 503, which sqsd retries, or the tick's token given back
    for a second later (the scheduler's ledger down)."""

    service = "dynamodb"
    TARGET = "DynamoDB_20120810."

    def query(self, **request: Any) -> dict[str, Any]:
        return self._call("Query", request)

    def get_item(self, **request: Any) -> dict[str, Any]:
        return self._call("GetItem", request)

    def put_item(self, **request: Any) -> dict[str, Any]:
        return self._call("PutItem", request)

    def update_item(self, **request: Any) -> dict[str, Any]:
        return self._call("UpdateItem", request)

    def delete_item(self, **request: Any) -> dict[str, Any]:
        return self._call("DeleteItem", request)

    def transact_write_items(self, **request: Any) -> dict[str, Any]:
        return self._call("TransactWriteItems", request)


class SQS(_JsonClient):
    """boto3's SQS client for the one call the scheduler makes every event tick, `send_message`
    (sluice/producer.py's send_event), in SQS's JSON protocol (botocore's model for SQS): the
    same keyword arguments and answer. String attributes only, as the producer sends. No
    retries of its own: a failed send fails the tick's attempt, which the runner retries after
    its backoff."""

    service = "sqs"
    TARGET = "AmazonSQS."

    def send_message(self, **request: Any) -> dict[str, Any]:
        for name, value in request.get("MessageAttributes", {}).items():
            if "StringValue" not in value:
                raise ParamValidationError(report=f"attribute {name}: only StringValue is sent")
        return self._call("SendMessage", request)


def _json_object(body: bytes) -> dict[str, Any]:
    """An answer's body as a JSON object; {} when it is empty or not one."""
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
