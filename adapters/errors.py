"""What an AWS SDK failure means: one table of error codes, read by every caller.

A step or a heavy task turns a failure into a Sluice error (`classify`): transient ones are
retried, the rest fail the job. The worker's dispatcher reads the same kinds for Lambda's Invoke
answers (`kind`): a refused request or an id conflict is the event's fault (poison), anything
else is retried, because a missing function or permission is the deployment's.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, ParamValidationError
from botocore.exceptions import ConnectionError as BotoConnectionError

from sluice.errors import BusinessError, SluiceError, TransientError

TRANSIENT = "transient"  # try again later: throttling, capacity, the service's own faults
MISSING = "missing"  # the object, bucket or version does not exist
REJECTED = "rejected"  # the request itself is refused (its content or size): no retry helps
CONFLICT = "conflict"  # a durable execution of that name already started with other input

CODES: Mapping[str, str] = MappingProxyType(
    {
        **dict.fromkeys(
            (
                "Throttling",
                "ThrottlingException",
                "ThrottledException",
                "TooManyRequestsException",
                "RequestLimitExceeded",
                "RequestThrottled",
                "SlowDown",
                "ProvisionedThroughputExceededException",
                "RequestTimeout",
                "RequestTimeoutException",
                "InternalError",
                "InternalFailure",
                "InternalServerError",
                "InternalServerException",
                "ServiceUnavailable",
                "ServiceUnavailableException",
                "LimitExceededException",
                "TransactionInProgressException",
                "KMSThrottlingException",
            ),
            TRANSIENT,
        ),
        **dict.fromkeys(("NoSuchKey", "NoSuchBucket", "404", "NotFound", "NoSuchVersion"), MISSING),
        # Invoke's errors about the request itself (botocore's Lambda model: 400 and 413).
        **dict.fromkeys(
            (
                "InvalidRequestContentException",
                "RequestTooLargeException",
                "SerializedRequestEntityTooLargeException",
            ),
            REJECTED,
        ),
        "DurableExecutionAlreadyStartedException": CONFLICT,
    }
)


def code(exc: BaseException) -> str:
    """The AWS error code of a ClientError (`NoSuchKey`), else ""."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def kind(exc: BaseException) -> str | None:
    """The table's kind of an SDK failure; None when the caller must judge (any other 4xx, a
    missing credential or region: not the input's fault, and not retried within a job)."""
    if isinstance(exc, ClientError):
        found = CODES.get(code(exc))
        if found is not None:
            return found
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return TRANSIENT if status >= 500 or status == 429 else None
    if isinstance(exc, BotoConnectionError | HTTPClientError):  # refused, reset, timed out
        return TRANSIENT
    if isinstance(exc, ParamValidationError):  # refused before sending
        return REJECTED
    return None


def classify(exc: BaseException, *, what: str = "", missing: str = "missing_object") -> SluiceError:
    """The Sluice error of a failure (Sluice errors pass through; anything unknown is transient).

    `what` names the object or call for the message (`s3://bucket/key`); `missing` is the reason
    code of a missing object (`missing_transcript`).
    """
    if isinstance(exc, SluiceError):
        return exc
    found = kind(exc)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        detail = f"{exc.operation_name}: {code(exc)}: {error.get('Message', '')}".rstrip(": ")
    else:
        detail = f"{type(exc).__name__}: {exc}"
    message = f"{what}: {detail}" if what else detail
    if found == TRANSIENT:
        unreachable = not isinstance(exc, ClientError)
        return TransientError(
            message, code="aws_unreachable" if unreachable else "aws_throttled_or_unavailable"
        )
    if found == MISSING:
        return BusinessError(f"{what} does not exist" if what else message, code=missing)
    if isinstance(exc, ClientError):
        return BusinessError(message, code=f"aws_{code(exc) or 'client_error'}")
    if isinstance(exc, BotoCoreError):
        return BusinessError(message, code="aws_sdk_error")
    return TransientError(message, code="unexpected")
