"""Step fetch_audio_metadata: duration, format, channels and sample rate of an uploaded object.

Reads the object's head and only the byte ranges the audio parser (mutagen) asks for.
Non-audio, empty and too-long audio are business errors: no retry can change them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

import mutagen

from lambdas.common.runtime import clients, env, require, step_handler
from lambdas.common.s3io import S3RangeReader
from sluice.errors import BusinessError

# mutagen's type name -> the MediaFormat Amazon Transcribe accepts.
FORMATS = {
    "MP3": "mp3",
    "WAVE": "wav",
    "FLAC": "flac",
    "OggVorbis": "ogg",
    "OggOpus": "ogg",
    "OggFLAC": "ogg",
    "MP4": "mp4",
}
READ_BLOCK = 64 * 1024


def audio_metadata(payload: Mapping[str, Any]) -> dict[str, Any]:
    bucket, key = require(payload, "bucket", "key")
    version_id = payload.get("version_id")
    if bucket != env("MEDIA_BUCKET"):
        raise BusinessError(
            f"s3://{bucket}/{key} is not in the media bucket", code="foreign_bucket"
        )
    max_seconds = int(os.environ.get("MAX_AUDIO_SECONDS", "14400"))
    s3 = clients("s3")
    extra = {"VersionId": version_id} if version_id else {}
    head = s3.head_object(Bucket=bucket, Key=key, **extra)
    size = int(head["ContentLength"])
    if size == 0:
        raise BusinessError(f"s3://{bucket}/{key} is empty", code="empty_audio")
    raw = S3RangeReader(s3, bucket=bucket, key=key, size=size, version_id=version_id)
    try:
        audio = mutagen.File(io.BufferedReader(raw, buffer_size=READ_BLOCK))  # type: ignore[attr-defined]
    except mutagen.MutagenError as exc:
        raise BusinessError(
            f"s3://{bucket}/{key} is not readable audio: {exc}", code="not_audio"
        ) from None
    if audio is None or getattr(audio, "info", None) is None:
        raise BusinessError(f"s3://{bucket}/{key} is not audio", code="not_audio")
    kind = type(audio).__name__
    media_format = FORMATS.get(kind)
    if media_format is None:
        raise BusinessError(f"{kind} audio is not supported by transcription", code="unsupported")
    info = audio.info
    duration = float(getattr(info, "length", 0.0) or 0.0)
    if duration <= 0:
        raise BusinessError(f"s3://{bucket}/{key} holds no audio samples", code="empty_audio")
    if duration > max_seconds:
        raise BusinessError(
            f"audio lasts {duration:.0f} s, over the {max_seconds} s maximum", code="too_long"
        )
    return {
        "bucket": bucket,
        "key": key,
        "version_id": version_id,
        "size": size,
        "content_type": head.get("ContentType"),
        "format": media_format,
        "duration_s": round(duration, 3),
        "channels": int(getattr(info, "channels", 0) or 0),
        "sample_rate": int(getattr(info, "sample_rate", 0) or 0),
        "bytes_read": raw.bytes_read,
    }


handler = step_handler("fetch_audio_metadata")(audio_metadata)
