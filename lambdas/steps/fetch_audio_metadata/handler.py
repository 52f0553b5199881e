"""Step fetch_audio_metadata: duration, format, channels and sample rate of an uploaded object.

Reads the object's head and only the byte ranges the audio parser (mutagen) asks for.
Non-audio, empty and too-long audio are business errors: no retry can change them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import mutagen

from adapters.s3 import S3Location, Storage
from lambdas.common import aws
from lambdas.common.runtime import env, require, settings, step_handler
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


@dataclass(frozen=True)
class AudioMetadata:
    bucket: str
    key: str
    version_id: str | None
    size: int
    content_type: str | None
    format: str
    duration_s: float
    channels: int
    sample_rate: int
    bytes_read: int


def measure(
    audio: S3Location, *, storage: Storage, media_bucket: str, max_seconds: int
) -> AudioMetadata:
    """What the audio object holds, read by byte ranges; business errors for what cannot be
    transcribed."""
    where = audio.uri
    if audio.bucket != media_bucket:
        raise BusinessError(f"{where} is not in the media bucket", code="foreign_bucket")
    head = storage.head(audio)
    size = int(head["ContentLength"])
    if size == 0:
        raise BusinessError(f"{where} is empty", code="empty_audio")
    raw = storage.reader(audio, size)
    try:
        parsed = mutagen.File(io.BufferedReader(raw, buffer_size=READ_BLOCK))  # type: ignore[attr-defined]
    except mutagen.MutagenError as exc:
        raise BusinessError(f"{where} is not readable audio: {exc}", code="not_audio") from None
    if parsed is None or getattr(parsed, "info", None) is None:
        raise BusinessError(f"{where} is not audio", code="not_audio")
    kind = type(parsed).__name__
    media_format = FORMATS.get(kind)
    if media_format is None:
        raise BusinessError(f"{kind} audio is not supported by transcription", code="unsupported")
    info = parsed.info
    duration = float(getattr(info, "length", 0.0) or 0.0)
    if duration <= 0:
        raise BusinessError(f"{where} holds no audio samples", code="empty_audio")
    if duration > max_seconds:
        raise BusinessError(
            f"audio lasts {duration:.0f} s, over the {max_seconds} s maximum", code="too_long"
        )
    return AudioMetadata(
        bucket=audio.bucket,
        key=audio.key,
        version_id=audio.version_id,
        size=size,
        content_type=head.get("ContentType"),
        format=media_format,
        duration_s=round(duration, 3),
        channels=int(getattr(info, "channels", 0) or 0),
        sample_rate=int(getattr(info, "sample_rate", 0) or 0),
        bytes_read=raw.bytes_read,
    )


def audio_metadata(payload: Mapping[str, Any]) -> dict[str, Any]:
    bucket, key = require(payload, "bucket", "key")
    meta = measure(
        S3Location(bucket, key, payload.get("version_id") or None),
        storage=aws.storage(),
        media_bucket=env("media_bucket"),
        max_seconds=settings().max_audio_seconds,
    )
    return asdict(meta)


handler = step_handler("fetch_audio_metadata")(audio_metadata)
