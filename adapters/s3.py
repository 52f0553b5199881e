"""S3 locations (`s3://bucket/key`, an S3 https URL, `{bucket, key}`) and the object calls of the
steps and tasks, each failure classified by the one table (adapters.errors)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from adapters.errors import classify
from sluice.errors import BusinessError


@dataclass(frozen=True)
class S3Location:
    """An object (or, for outputs, a key prefix) in a bucket."""

    bucket: str
    key: str
    version_id: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def to_dict(self) -> dict[str, str]:
        """`{bucket, key[, version_id]}`, as events and task payloads carry it."""
        out = {"bucket": self.bucket, "key": self.key}
        if self.version_id:
            out["version_id"] = self.version_id
        return out


def location(spec: Any, *, what: str, code: str, field: str = "key") -> S3Location:
    """The location `spec` names, or a business error with reason `code`.

    `spec`: `s3://bucket/key` (taken literally), an S3 https URL, path or virtual-hosted style
    (percent-decoded, as Transcribe writes TranscriptFileUri), or `{bucket, <field>[,
    version_id]}` where `field` is `key` or, for output prefixes, `prefix`.
    """
    bucket: Any = None
    key: Any = None
    version: Any = None
    if isinstance(spec, str) and spec.startswith("s3://"):
        bucket, _, key = spec[5:].partition("/")
    elif isinstance(spec, str) and spec.startswith("https://"):
        url = urlsplit(spec)
        host, path = url.hostname or "", unquote(url.path.lstrip("/"))
        if host.endswith(".amazonaws.com"):
            if host.startswith(("s3.", "s3-")):  # path style: /bucket/key
                bucket, _, key = path.partition("/")
            else:
                bucket, key = host.split(".s3", 1)[0], path
    elif isinstance(spec, Mapping):
        bucket, key, version = spec.get("bucket"), spec.get(field), spec.get("version_id")
    if isinstance(bucket, str) and bucket and isinstance(key, str) and key:
        return S3Location(bucket, key, str(version) if version else None)
    raise BusinessError(
        f"{what}: expected s3://bucket/{field} or {{bucket, {field}}}, got {spec!r}"[:500],
        code=code,
    )


@contextlib.contextmanager
def _classified(where: S3Location, missing: str) -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise classify(exc, what=where.uri, missing=missing) from exc


class Storage:
    """The S3 calls of the steps and tasks over one client; failures are Sluice errors."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def head(self, where: S3Location, *, missing: str = "missing_object") -> dict[str, Any]:
        with _classified(where, missing):
            return dict(self.client.head_object(**_object(where)))

    def read(
        self, where: S3Location, *, max_bytes: int | None = None, missing: str = "missing_object"
    ) -> bytes:
        """The whole object; an object over `max_bytes` is refused (reason `oversize`) unread."""
        if max_bytes is not None:
            size = int(self.head(where, missing=missing).get("ContentLength") or 0)
            if size > max_bytes:
                raise BusinessError(
                    f"{where.uri} is larger than {max_bytes} bytes", code="oversize"
                )
        with _classified(where, missing):
            return bytes(self.client.get_object(**_object(where))["Body"].read())

    def put(self, where: S3Location, body: bytes, content_type: str) -> None:
        with _classified(where, "missing_bucket"):
            self.client.put_object(
                Bucket=where.bucket, Key=where.key, Body=body, ContentType=content_type
            )

    def upload(self, path: Path, where: S3Location, content_type: str) -> None:
        with _classified(where, "missing_bucket"):
            self.client.upload_file(
                str(path), where.bucket, where.key, ExtraArgs={"ContentType": content_type}
            )

    def keys(self, prefix: S3Location) -> list[str]:
        """Every key under `prefix.key` (ListObjectsV2, all pages)."""
        with _classified(prefix, "missing_bucket"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=prefix.bucket, Prefix=prefix.key
            )
            return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def delete(self, where: S3Location, keys: list[str]) -> None:
        """Delete `keys` of `where.bucket` (DeleteObjects: at most 1,000 keys a request)."""
        with _classified(where, "missing_bucket"):
            for at in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[at : at + 1000]]
                answer = self.client.delete_objects(
                    Bucket=where.bucket, Delete={"Objects": batch, "Quiet": True}
                )
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise ClientError(
                        {"Error": {"Code": first.get("Code"), "Message": first.get("Message")}},
                        "DeleteObjects",
                    )

    def download(self, where: S3Location, path: Path, *, missing: str) -> None:
        extra = {"VersionId": where.version_id} if where.version_id else None
        with _classified(where, missing):
            self.client.download_file(where.bucket, where.key, str(path), ExtraArgs=extra)

    def reader(self, where: S3Location, size: int) -> S3RangeReader:
        """A seekable file over the object that fetches only the byte ranges read."""
        return S3RangeReader(self, where, size)

    def read_range(self, where: S3Location, start: int, end: int) -> bytes:
        """Bytes `start`..`end` (inclusive) of the object."""
        with _classified(where, "missing_object"):
            answer = self.client.get_object(**_object(where), Range=f"bytes={start}-{end}")
            return bytes(answer["Body"].read())


def _object(where: S3Location) -> dict[str, str]:
    extra = {"VersionId": where.version_id} if where.version_id else {}
    return {"Bucket": where.bucket, "Key": where.key, **extra}


class S3RangeReader(io.RawIOBase):
    """A seekable, read-only file over an S3 object that fetches only the ranges read.

    Audio parsers read a header, seek to the end for trailing tags and sample a few frames:
    this lets them do so without downloading an hour of audio.
    """

    def __init__(self, storage: Storage, where: S3Location, size: int) -> None:
        super().__init__()
        self._storage, self._where, self._size = storage, where, size
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
        body = self._storage.read_range(self._where, self._pos, self._pos + want - 1)
        n = len(body)
        buffer[:n] = body
        self._pos += n
        self.requests += 1
        self.bytes_read += n
        return n
