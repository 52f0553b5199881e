"""What both heavy steps share: input limits, S3 locations and the context a task runs in."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from sluice.errors import BusinessError, TransientError

MISSING = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound", "NoSuchVersion"})
THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"})


@dataclass(frozen=True)
class Limits:
    """Inputs past these limits are refused up front (business errors), not half-processed."""

    max_audio_bytes: int = 2 * 1024**3
    max_audio_seconds: int = 4 * 3600
    max_transcript_bytes: int = 50 * 1024**2
    max_chunks: int = 20_000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        env = os.environ if environ is None else environ
        d = cls()
        return cls(
            max_audio_bytes=int(env.get("SLUICE_MAX_AUDIO_BYTES") or d.max_audio_bytes),
            max_audio_seconds=int(env.get("SLUICE_MAX_AUDIO_SECONDS") or d.max_audio_seconds),
            max_transcript_bytes=int(
                env.get("SLUICE_MAX_TRANSCRIPT_BYTES") or d.max_transcript_bytes
            ),
            max_chunks=int(env.get("SLUICE_MAX_CHUNKS") or d.max_chunks),
        )


@dataclass(frozen=True)
class TaskContext:
    """What a heavy step gets besides its task: clients, limits, and a liveness hook.

    `progress()` is cheap to call often; the tasks process uses it to know the step is alive.
    """

    s3: Any
    limits: Limits = Limits()
    progress: Callable[[], None] = lambda: None


def location(spec: Any, what: str) -> tuple[str, str]:
    """(bucket, key or prefix) of a `{"bucket": ..., "key"|"prefix": ...}` or an s3:// URI."""
    if isinstance(spec, str) and spec.startswith("s3://"):
        bucket, _, key = spec[5:].partition("/")
        if bucket and key:
            return bucket, key
    if isinstance(spec, Mapping):
        b, k = spec.get("bucket"), spec.get("key") or spec.get("prefix")
        if isinstance(b, str) and b and isinstance(k, str) and k:
            return b, k
    raise BusinessError(
        f"{what}: expected s3://bucket/key or {{bucket, key}}, got {spec!r}", code="bad_task"
    )


def s3_error(exc: ClientError, what: str, missing_code: str) -> Exception:
    """A Sluice error for an S3 failure: missing objects are business errors, throttling transient."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in MISSING:
        return BusinessError(f"{what} does not exist", code=missing_code)
    if code in THROTTLED or status >= 500:
        return TransientError(f"{what}: S3 {code or status}", code="s3_unavailable")
    return BusinessError(f"{what}: S3 {code or status}", code=f"s3_{code or status}")
