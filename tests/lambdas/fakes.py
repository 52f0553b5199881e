"""In-memory stand-ins for what step logic is given: no moto, no network.

MemoryS3 is a fake S3 client under the real Storage adapter (so byte-range reads are the real
ones); the others fake the adapters themselves, recording what the logic asked of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from adapters.s3 import Storage
from adapters.transcribe import Job


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data


@dataclass
class MemoryS3:
    """head_object, get_object (with Range) and put_object over a dict (bucket, key) -> bytes."""

    objects: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    ranges: list[str] = field(default_factory=list)

    def _get(self, Bucket: str, Key: str, op: str) -> tuple[bytes, str]:
        try:
            return self.objects[(Bucket, Key)]
        except KeyError:
            raise ClientError(
                {"Error": {"Code": "NoSuchKey"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, op
            ) from None

    def head_object(self, *, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:
        body, content_type = self._get(Bucket, Key, "HeadObject")
        return {"ContentLength": len(body), "ContentType": content_type}

    def get_object(self, *, Bucket: str, Key: str, Range: str = "", **_: Any) -> dict[str, Any]:
        body, _ = self._get(Bucket, Key, "GetObject")
        if Range:
            self.ranges.append(Range)
            start, end = (int(n) for n in Range.removeprefix("bytes=").split("-"))
            body = body[start : end + 1]
        return {"Body": _Body(body)}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, ContentType: str) -> dict:
        self.objects[(Bucket, Key)] = (Body, ContentType)
        return {}


def storage(**objects: bytes) -> tuple[Storage, MemoryS3]:
    """The real Storage adapter over MemoryS3 holding `objects` ("bucket/key" -> bytes)."""
    s3 = MemoryS3()
    for path, body in objects.items():
        bucket, _, key = path.partition("/")
        s3.objects[(bucket, key)] = (body, "application/octet-stream")
    return Storage(s3), s3


@dataclass
class FakeJobs:
    """The jobs table's update and get, as a dict of records."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def update(self, job_id: str, **fields: Any) -> None:
        self.records.setdefault(job_id, {"job_id": job_id}).update(
            {k: v for k, v in fields.items() if v is not None}
        )

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.records.get(job_id)


@dataclass
class FakeNotifications:
    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def publish(self, event: dict[str, Any], *, subject: str) -> str:
        self.published.append((subject, dict(event)))
        return f"note-{len(self.published)}"


@dataclass
class FakeTranscribe:
    """Starts jobs (once per name) and answers polls with the `jobs` it is given."""

    jobs: dict[str, Job] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def start(self, request: dict[str, Any]) -> tuple[Job, bool]:
        self.requests.append(dict(request))
        name = request["TranscriptionJobName"]
        if name in self.jobs:
            return self.jobs[name], False
        self.jobs[name] = Job(name=name, status="QUEUED")
        return self.jobs[name], True

    def job(self, name: str) -> Job:
        return self.jobs[name]
