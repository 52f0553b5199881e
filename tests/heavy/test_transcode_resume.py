"""Resumable transcodes (issue 18): a transcode killed part-way resumes from its last durable
chunk of HLS segments, and what it finally writes is byte for byte what an uninterrupted run
writes.

The outputs of an interrupted-then-resumed run are compared with an uninterrupted run of the
same input, every object and its content type; bucket versioning tells how often each object
was written, so a resumed run that redid durable work shows as a second version.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.heavy.conftest import (
    Aws,
    CallbackApi,
    Moto,
    make_audio,
    media_duration,
    start_process,
    wait_counts,
)
from tests.heavy.test_tasks_signals import CALLBACK, put_transcode_task, scratch_left
from worker.heavy import transcode
from worker.heavy.common import TaskContext

SEGMENT = "{rendition}/seg_{n:05d}.ts"


def objects(s3: Any, bucket: str, prefix: str) -> dict[str, tuple[bytes, str]]:
    """Every object under `prefix`: key relative to it -> (bytes, content type)."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            got = s3.get_object(Bucket=bucket, Key=o["Key"])
            out[o["Key"][len(prefix) :]] = (got["Body"].read(), got["ContentType"])
    return out


def versions(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    """How many times each key under `prefix` was written (bucket versioning)."""
    counts: dict[str, int] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            counts[v["Key"][len(prefix) :]] = counts.get(v["Key"][len(prefix) :], 0) + 1
    return counts


def reference(moto: Moto, prefix: str) -> dict[str, tuple[bytes, str]]:
    """An uninterrupted run of the same task (in this process, same ffmpeg, same bucket)."""
    transcode.run(
        {
            "source": {"bucket": moto.bucket, "key": "uploads/t.mp3"},
            "output": {"bucket": moto.bucket, "prefix": prefix},
        },
        TaskContext(s3=moto.s3),
    )
    return objects(moto.s3, moto.bucket, prefix)


def wait_for_key(moto: Moto, key: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        got = moto.s3.list_objects_v2(Bucket=moto.bucket, Prefix=key).get("Contents", [])
        if any(o["Key"] == key for o in got):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} was not written within {timeout_s} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Long enough for three chunks at the default chunk length (two whole, one part)."""
    seconds = 2 * transcode.DEFAULT_CHUNK_S + 10
    return make_audio(tmp_path_factory.mktemp("long") / "long.mp3", seconds).read_bytes()


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> Iterator[Path]:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    yield tmp


@pytest.mark.slow
def test_a_tasks_process_killed_mid_transcode_is_resumed_by_the_next_without_redoing_chunks(
    moto_server: Moto, callback_api: CallbackApi, long_audio: bytes, tmpdir_env: Path
) -> None:
    # Given a transcode task for 130 s of audio and the real tasks process working on it
    put_transcode_task(moto_server, long_audio)
    per_chunk = int(transcode.DEFAULT_CHUNK_S // transcode.SEGMENT_S)
    settings = {"tmpdir": tmpdir_env, "visibility_timeout_s": 2}
    proc = start_process(moto_server, callback_api, **settings)
    try:
        # When it is SIGKILLed once the second chunk's first segment is in S3 (the first chunk
        # is then complete), before the transcode ends
        wait_for_key(moto_server, "hls/t/" + SEGMENT.format(rendition="aac_128k", n=per_chunk))
        proc.kill()
        proc.wait(10)
    finally:
        proc.kill()
    present = versions(moto_server.s3, moto_server.bucket, "hls/t/")
    assert transcode.MASTER not in present, "the transcode ended before the kill"
    # And a new tasks process takes the task up again
    again = start_process(moto_server, callback_api, **settings)
    try:
        callback_api.wait_for("succeed", timeout_s=240)
        wait_counts(moto_server, (0, 0))
        again.terminate()
        assert again.wait(60) == 0
    finally:
        again.kill()
    # Then the outputs are byte for byte an uninterrupted run's, reported once
    assert callback_api.ops("succeed") == [CALLBACK] and callback_api.failures() == []
    resumed = objects(moto_server.s3, moto_server.bucket, "hls/t/")
    assert resumed == reference(moto_server, "hls/ref/")
    # And the first chunk's segments, durable before the kill, were written once, not redone
    written = versions(moto_server.s3, moto_server.bucket, "hls/t/")
    for rendition in ("aac_64k", "aac_128k"):
        first = [SEGMENT.format(rendition=rendition, n=n) for n in range(per_chunk)]
        assert [written[k] for k in first] == [1] * per_chunk, written
    assert scratch_left(tmpdir_env) == []


# --- in this process: a crash at a chosen point, then the task again -----------------------

CHUNK_S = 12  # two segments a chunk
SECONDS = 40.0  # chunks 0-2 whole, chunk 3 four seconds


class Crash(BaseException):
    """The process dying at this point: nothing after it runs, no handler catches it."""


class Recording:
    """The S3 client, recording each object written and crashing at the one named."""

    def __init__(self, s3: Any, crash_at: str | None = None) -> None:
        self._s3, self.crash_at = s3, crash_at
        self.written: list[str] = []

    def _write(self, key: str, call: Any) -> Any:
        if self.crash_at is not None and key.endswith(self.crash_at):
            raise Crash(key)
        self.written.append(key)
        return call()

    def upload_file(self, path: str, bucket: str, key: str, **kw: Any) -> Any:
        return self._write(key, lambda: self._s3.upload_file(path, bucket, key, **kw))

    def put_object(self, **kw: Any) -> Any:
        return self._write(kw["Key"], lambda: self._s3.put_object(**kw))

    def delete_objects(self, **kw: Any) -> Any:
        return self._write("(delete)", lambda: self._s3.delete_objects(**kw))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)


def task(aws: Aws, prefix: str) -> dict[str, Any]:
    return {
        "source": {"bucket": aws.bucket, "key": "uploads/s.mp3"},
        "output": {"bucket": aws.bucket, "prefix": prefix},
    }


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The index of every chunk an ffmpeg encoded, in order."""
    calls: list[int] = []
    real = transcode._encode_chunk

    def counting(*args: Any, **kw: Any) -> Any:
        calls.append(kw["index"])
        return real(*args, **kw)

    monkeypatch.setattr(transcode, "_encode_chunk", counting)
    return calls


@pytest.fixture
def source(aws: Aws, tmp_path: Path) -> Path:
    src = make_audio(tmp_path / "s.mp3", SECONDS)
    aws.s3.upload_file(str(src), aws.bucket, "uploads/s.mp3")
    aws.s3.put_bucket_versioning(Bucket=aws.bucket, VersioningConfiguration={"Status": "Enabled"})
    return src


def run_task(aws: Aws, prefix: str, client: Any) -> dict[str, Any]:
    return transcode.run(task(aws, prefix), TaskContext(s3=client, transcode_chunk_s=CHUNK_S))


@pytest.mark.parametrize(
    ("crash_at", "durable_chunks"),
    [
        ("aac_64k/seg_00000.ts", 0),  # before the first segment is stored
        ("aac_64k/seg_00004.ts", 2),  # mid-way: chunks 0 and 1 stored, chunk 2 being stored
        ("aac_64k/index.m3u8", 4),  # just before the playlists: every chunk stored
        ("(delete)", 4),  # after the master, before the manifests are removed
    ],
)
def test_a_transcode_crashed_at_any_point_resumes_to_the_uninterrupted_bytes(
    aws: Aws, source: Path, encoded: list[int], crash_at: str, durable_chunks: int
) -> None:
    # Given an uninterrupted run's outputs
    expected_result = run_task(aws, "hls/ref/", aws.s3)
    expected = objects(aws.s3, aws.bucket, "hls/ref/")
    assert encoded == [0, 1, 2, 3]
    encoded.clear()
    # And a run of the same task that dies at `crash_at`
    with pytest.raises(Crash):
        run_task(aws, "hls/cut/", Recording(aws.s3, crash_at))
    encoded.clear()
    # When the task runs again
    again = Recording(aws.s3)
    result = run_task(aws, "hls/cut/", again)
    # Then it encoded only the chunks that were not stored, and stored each of their segments once
    assert encoded == list(range(durable_chunks, 4))
    redone = [k for k in again.written if k.endswith(".ts")]
    per_chunk = 2 * int(CHUNK_S // transcode.SEGMENT_S)  # both renditions
    last_chunk = 2  # four seconds: one segment per rendition
    assert len(redone) == len(set(redone))
    assert len(redone) == (
        per_chunk * (3 - durable_chunks) + last_chunk if durable_chunks < 4 else 0
    )
    # And its outputs and its result are byte for byte the uninterrupted run's
    assert objects(aws.s3, aws.bucket, "hls/cut/") == expected
    assert result == {**expected_result, "master": result["master"]}
    assert not any(k.startswith("hls/cut/.resume/") for k in aws.keys("hls/cut/"))


def test_chunks_of_another_source_at_the_same_output_are_not_reused(
    aws: Aws, source: Path, encoded: list[int], tmp_path: Path
) -> None:
    # Given a run that crashed mid-way, then a new version of the source at the same key
    with pytest.raises(Crash):
        run_task(aws, "hls/cut/", Recording(aws.s3, "aac_64k/seg_00004.ts"))
    other = make_audio(tmp_path / "other.mp3", SECONDS, freq=660)
    aws.s3.upload_file(str(other), aws.bucket, "uploads/s.mp3")
    encoded.clear()
    # When the task runs again
    run_task(aws, "hls/cut/", aws.s3)
    # Then every chunk is encoded from the new source, and the outputs are its uninterrupted run's
    assert encoded == [0, 1, 2, 3]
    run_task(aws, "hls/ref/", aws.s3)
    assert objects(aws.s3, aws.bucket, "hls/cut/") == objects(aws.s3, aws.bucket, "hls/ref/")


def test_chunk_joins_add_no_time_the_renditions_last_as_long_as_the_source(
    aws: Aws, source: Path, tmp_path: Path
) -> None:
    # Given 40 s of audio transcoded in four chunks
    run_task(aws, "hls/j/", aws.s3)
    for rendition in ("aac_64k", "aac_128k"):
        local = tmp_path / rendition
        local.mkdir()
        for key in aws.keys(f"hls/j/{rendition}/"):
            aws.s3.download_file(aws.bucket, key, str(local / key.rsplit("/", 1)[1]))
        # When the playlist is decoded whole
        decoded = media_duration(local / "index.m3u8")
        # Then it lasts as long as the source: a fresh encoder per chunk, joined naively, would
        # add a priming frame and a padded frame (~46 ms) at each of the three joins
        assert decoded == pytest.approx(SECONDS, abs=0.04)
