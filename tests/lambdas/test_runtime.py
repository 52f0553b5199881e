"""The shared Lambda runtime: correlation id on every log line, AWS errors classified."""

from __future__ import annotations

import io
import json

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from adapters.errors import classify
from lambdas.common.runtime import error_class, logger
from lambdas.steps.fetch_audio_metadata.handler import handler
from sluice.errors import BusinessError, TransientError
from tests.lambdas.audio import wav


def _client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "Op",
    )


def test_every_log_line_of_a_step_carries_the_correlation_id(aws, lambda_context):
    # Given the step logger writing to a buffer (its handler holds the stream it was made with)
    buffer = io.StringIO()
    previous = logger.registered_handler.setStream(buffer)  # type: ignore[attr-defined]
    aws.put_audio("uploads/a.wav", wav(1.0))
    try:
        # When a step runs for a job
        handler(
            {
                "job_id": "j",
                "correlation_id": "corr-42",
                "bucket": aws.bucket,
                "key": "uploads/a.wav",
            },
            lambda_context,
        )
    finally:
        logger.registered_handler.setStream(previous)  # type: ignore[attr-defined]
    # Then every line it logged names the job's correlation id
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert lines, "the step logged nothing"
    assert {line.get("correlation_id") for line in lines} == {"corr-42"}


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_client_error("ThrottlingException"), TransientError),
        (_client_error("SlowDown", 503), TransientError),
        (_client_error("Whatever", 500), TransientError),
        (ReadTimeoutError(endpoint_url="https://s3"), TransientError),
        (_client_error("NoSuchKey", 404), BusinessError),
        (_client_error("AccessDenied", 403), BusinessError),
    ],
)
def test_aws_errors_map_to_the_error_classes(error, expected):
    assert type(classify(error)) is expected


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        ("BusinessError", "business"),  # as Lambda reports a function error
        ("sluice.errors.BusinessError", "business"),  # as the local runner reports it
        ("sluice.errors.PoisonMessage", "business"),
        ("TransientError", "transient"),
        ("Sandbox.Timedout", "transient"),
        (None, "transient"),
    ],
)
def test_failed_invokes_are_classified_by_error_type(error_type, expected):
    assert error_class(error_type) == expected
