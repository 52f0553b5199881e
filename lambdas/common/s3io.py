"""Reading S3 objects by byte range, and S3 locations from URIs."""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import unquote, urlparse

from sluice.errors import BusinessError


class S3RangeReader(io.RawIOBase):
    """A seekable, read-only file over an S3 object that fetches only the ranges read.

    Audio parsers read a header, seek to the end for trailing tags and sample a few frames:
    this lets them do so without downloading an hour of audio.
    """

    def __init__(
        self, s3: Any, *, bucket: str, key: str, size: int, version_id: str | None = None
    ) -> None:
        super().__init__()
        self._s3, self._bucket, self._key, self._size = s3, bucket, key, size
        self._version = {"VersionId": version_id} if version_id else {}
        self._pos = 0
        self.requests = 0
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        end = self._pos + want - 1
        body = self._s3.get_object(
            Bucket=self._bucket, Key=self._key, Range=f"bytes={self._pos}-{end}", **self._version
        )["Body"].read()
        n = len(body)
        buffer[:n] = body
        self._pos += n
        self.requests += 1
        self.bytes_read += n
        return n


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// URI or an S3 https URL (path or virtual-hosted style)."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return parsed.netloc, unquote(parsed.path.lstrip("/"))
    if parsed.scheme == "https" and parsed.netloc.endswith("amazonaws.com"):
        host = parsed.netloc
        path = unquote(parsed.path.lstrip("/"))
        if host.startswith(("s3.", "s3-")):  # path style: /bucket/key
            bucket, _, key = path.partition("/")
            return bucket, key
        return host.split(".s3", 1)[0], path
    raise BusinessError(f"not an S3 location: {uri!r}", code="bad_transcript_uri")
