"""The one table of AWS error codes, as each caller reads it."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from adapters import errors
from sluice.errors import BusinessError, PoisonMessage, TransientError


def client_error(code: str, status: int = 400, op: str = "Op") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        op,
    )


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (client_error("SlowDown", 503), errors.TRANSIENT),
        (client_error("ThrottlingException"), errors.TRANSIENT),
        (client_error("TooManyRequestsException", 429), errors.TRANSIENT),
        (client_error("Whatever", 500), errors.TRANSIENT),
        (client_error("Whatever", 429), errors.TRANSIENT),
        (EndpointConnectionError(endpoint_url="https://s3"), errors.TRANSIENT),
        (ReadTimeoutError(endpoint_url="https://s3"), errors.TRANSIENT),
        (ConnectionClosedError(endpoint_url="https://s3"), errors.TRANSIENT),
        (client_error("NoSuchKey", 404), errors.MISSING),
        (client_error("404", 404), errors.MISSING),
        (client_error("RequestTooLargeException", 413), errors.REJECTED),
        (ParamValidationError(report="bad"), errors.REJECTED),
        (client_error("DurableExecutionAlreadyStartedException", 409), errors.CONFLICT),
        (client_error("AccessDeniedException", 403), None),
        (client_error("ResourceNotFoundException", 404), None),
        (NoCredentialsError(), None),
    ],
)
def test_each_failure_has_its_kind(exc, kind):
    assert errors.kind(exc) == kind


@pytest.mark.parametrize(
    ("exc", "cls", "code"),
    [
        (client_error("SlowDown", 503), TransientError, "aws_throttled_or_unavailable"),
        (ReadTimeoutError(endpoint_url="https://s3"), TransientError, "aws_unreachable"),
        (client_error("NoSuchKey", 404), BusinessError, "missing_transcript"),
        (client_error("AccessDenied", 403), BusinessError, "aws_AccessDenied"),
        (
            client_error("RequestTooLargeException", 413),
            BusinessError,
            "aws_RequestTooLargeException",
        ),
        (NoCredentialsError(), BusinessError, "aws_sdk_error"),
        (KeyError("bug"), TransientError, "unexpected"),
    ],
)
def test_a_step_or_task_turns_each_into_a_sluice_error(exc, cls, code):
    error = errors.classify(exc, what="s3://b/k", missing="missing_transcript")
    assert (type(error), error.code) == (cls, code)
    assert str(error).startswith("s3://b/k")


def test_a_missing_object_says_which_and_a_sluice_error_passes_through():
    assert str(errors.classify(client_error("NoSuchKey", 404), what="s3://b/k")) == (
        "s3://b/k does not exist"
    )
    poison = PoisonMessage("x", code="bad")
    assert errors.classify(poison) is poison


def test_the_code_of_a_client_error_and_of_anything_else():
    assert errors.code(client_error("SlowDown")) == "SlowDown"
    assert errors.code(NoCredentialsError()) == ""
