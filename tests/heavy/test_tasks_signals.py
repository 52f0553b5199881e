"""The real tasks process with a real ffmpeg child under real signals (issue 12, faults 1 and 2).

A stop is what systemd does to a Procfile unit (KillMode=control-group): SIGTERM to every process
of the unit at the same moment, the ffmpeg child included. The OOM killer SIGKILLs ffmpeg alone.
A crash SIGKILLs the tasks process. None of these is a business failure: the task completes
exactly once (one success callback, outputs written once) and nothing is left in temp.

ffmpeg is held mid-transcode with SIGSTOP while the signals land, so the test does not depend on
how fast this machine transcodes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.envelope import Task
from tests.heavy.conftest import (
    CallbackApi,
    Moto,
    make_audio,
    put_embed_task,
    start_process,
    wait_counts,
)
from worker.heavy import common

CALLBACK = "cb-transcode"


def children(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc)."""
    found: list[int] = []
    parents = {pid}
    changed = True
    while changed:
        changed = False
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in found:
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid in parents:
                found.append(int(entry.name))
                parents.add(int(entry.name))
                changed = True
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def encoder_of(pid: int, timeout_s: float = 60) -> int:
    """The ffmpeg encode (the one writing HLS) that the tasks process `pid` runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in children(pid):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                if any(b"ffmpeg" in a for a in argv[:1]) and b"hls" in argv:
                    return child
        time.sleep(0.02)
    raise TimeoutError("no ffmpeg encode started")


def stop_unit(pid: int) -> None:
    """What systemd does on stop: SIGTERM to the main process and every process of its cgroup."""
    for child in children(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGTERM)
    os.kill(pid, signal.SIGTERM)


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> Iterator[Path]:
    """A private TMPDIR for the tasks processes, checked for leftovers."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    yield tmp


@pytest.fixture
def stray() -> Iterator[list[int]]:
    """pids to SIGKILL at the end whatever happens (a failing test must not leave ffmpeg)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_audio(tmp_path_factory.mktemp("audio") / "sermon.mp3", 20.0).read_bytes()


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Two minutes: for the test that kills ffmpeg as soon as it sees it, without holding it
    first. 20 s of audio was transcoded whole in under a second, before a loaded CI run's poll
    saw the encode (`no ffmpeg encode started`); the kill ends the encode early either way."""
    return make_audio(tmp_path_factory.mktemp("audio") / "long.mp3", 120.0).read_bytes()


def put_transcode_task(moto: Moto, audio: bytes) -> None:
    moto.s3.put_bucket_versioning(Bucket=moto.bucket, VersioningConfiguration={"Status": "Enabled"})
    moto.s3.put_object(Bucket=moto.bucket, Key="uploads/t.mp3", Body=audio)
    task = Task(
        name="media/transcode",
        callback_id=CALLBACK,
        data={
            "source": {"bucket": moto.bucket, "key": "uploads/t.mp3"},
            "output": {"bucket": moto.bucket, "prefix": "hls/t/"},
        },
        correlation_id="corr-signals",
    )
    moto.sqs.send_message(QueueUrl=moto.queue_url, MessageBody=task.to_json())


def outputs_written_once(moto: Moto, prefix: str) -> list[str]:
    """The output keys; fails if any was written more than once (bucket versioning)."""
    versions = moto.s3.list_object_versions(Bucket=moto.bucket, Prefix=prefix).get("Versions", [])
    keys = [v["Key"] for v in versions]
    assert keys and len(keys) == len(set(keys)), f"outputs written more than once: {keys}"
    return keys


def scratch_left(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(common.SCRATCH_PREFIX))


@pytest.mark.slow
def test_a_stop_mid_transcode_finishes_the_task_within_the_grace_period(
    moto_server: Moto, callback_api: CallbackApi, audio: bytes, tmpdir_env: Path, stray: list[int]
) -> None:
    # Given the tasks process transcoding (ffmpeg held mid-way)
    put_transcode_task(moto_server, audio)
    proc = start_process(moto_server, callback_api, grace_s=60, tmpdir=tmpdir_env)
    try:
        ffmpeg = encoder_of(proc.pid)
        stray.append(ffmpeg)
        os.kill(ffmpeg, signal.SIGSTOP)
        # When the unit is stopped: SIGTERM to the process and its ffmpeg at once
        stop_unit(proc.pid)
        time.sleep(0.5)
        os.kill(ffmpeg, signal.SIGCONT)
        code = proc.wait(90)
    finally:
        proc.kill()
    # Then the transcode finished in the grace period: one success, no failure, clean exit
    assert code == 0, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
    assert callback_api.ops("succeed") == [CALLBACK]
    assert callback_api.failures() == []
    assert moto_server.counts() == (0, 0)
    assert "hls/t/master.m3u8" in outputs_written_once(moto_server, "hls/t/")
    assert scratch_left(tmpdir_env) == []


@pytest.mark.slow
def test_a_stop_that_outlasts_the_grace_period_hands_the_transcode_back_clean(
    moto_server: Moto, callback_api: CallbackApi, audio: bytes, tmpdir_env: Path, stray: list[int]
) -> None:
    # Given the tasks process transcoding, ffmpeg held so it cannot finish, a 1 s grace period
    put_transcode_task(moto_server, audio)
    proc = start_process(moto_server, callback_api, grace_s=1, tmpdir=tmpdir_env)
    try:
        ffmpeg = encoder_of(proc.pid)
        stray.append(ffmpeg)
        os.kill(ffmpeg, signal.SIGSTOP)
        # When the unit is stopped
        stop_unit(proc.pid)
        code = proc.wait(60)
    finally:
        proc.kill()
    # Then it reports nothing, hands the task back at once, kills ffmpeg and leaves no scratch
    assert code == 0
    assert callback_api.ops("succeed") == [] and callback_api.failures() == []
    assert moto_server.counts() == (1, 0)
    assert not alive(ffmpeg)
    assert scratch_left(tmpdir_env) == []


@pytest.mark.slow
def test_ffmpeg_killed_by_a_signal_is_a_transient_failure_not_corrupt_audio(
    moto_server: Moto,
    callback_api: CallbackApi,
    long_audio: bytes,
    tmpdir_env: Path,
    stray: list[int],
) -> None:
    # Given the tasks process transcoding
    put_transcode_task(moto_server, long_audio)
    proc = start_process(moto_server, callback_api, tmpdir=tmpdir_env)
    try:
        ffmpeg = encoder_of(proc.pid)
        stray.append(ffmpeg)
        # When the OOM killer takes ffmpeg
        os.kill(ffmpeg, signal.SIGKILL)
        callback_api.wait_for("fail")
    finally:
        proc.terminate()
        proc.wait(30)
    # Then the failure is transient (the workflow retries it), never corrupt_audio
    (error,) = callback_api.failures()
    assert error["ErrorType"] == "TransientError", error
    assert "corrupt_audio" not in error["ErrorMessage"]
    assert callback_api.ops("succeed") == []
    assert scratch_left(tmpdir_env) == []


@pytest.mark.slow
def test_a_killed_tasks_process_takes_ffmpeg_with_it_and_the_next_start_sweeps_its_temp(
    moto_server: Moto, callback_api: CallbackApi, audio: bytes, tmpdir_env: Path, stray: list[int]
) -> None:
    # Given the tasks process transcoding (ffmpeg held mid-way), a 2 s visibility timeout
    put_transcode_task(moto_server, audio)
    settings = {"tmpdir": tmpdir_env, "visibility_timeout_s": 2}
    proc = start_process(moto_server, callback_api, **settings)
    try:
        ffmpeg = encoder_of(proc.pid)
        stray.append(ffmpeg)
        os.kill(ffmpeg, signal.SIGSTOP)
        # When the tasks process is SIGKILLed
        proc.kill()
        proc.wait(10)
    finally:
        proc.kill()
    # Then its ffmpeg dies with it, and its scratch directory is left behind
    deadline = time.monotonic() + 5
    while alive(ffmpeg) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(ffmpeg), "ffmpeg outlived the killed tasks process"
    assert len(scratch_left(tmpdir_env)) == 1
    assert callback_api.ops("succeed") == [] and callback_api.failures() == []
    # When a new tasks process starts: it sweeps the dead run's leftovers and does the task once
    again = start_process(moto_server, callback_api, **settings)
    try:
        callback_api.wait_for("succeed", timeout_s=90)
        wait_counts(moto_server, (0, 0))
        again.terminate()
        assert again.wait(60) == 0
    finally:
        again.kill()
    assert callback_api.ops("succeed") == [CALLBACK] and callback_api.failures() == []
    assert "hls/t/master.m3u8" in outputs_written_once(moto_server, "hls/t/")
    assert scratch_left(tmpdir_env) == []


@pytest.mark.slow
def test_a_killed_tasks_process_mid_embed_is_completed_once_by_the_next(
    moto_server: Moto, callback_api: CallbackApi, tmpdir_env: Path
) -> None:
    moto_server.s3.put_bucket_versioning(
        Bucket=moto_server.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    # Given the tasks process embedding (its first heartbeat has gone out)
    put_embed_task(moto_server, segments=120)
    settings = {"tmpdir": tmpdir_env, "visibility_timeout_s": 2}
    proc = start_process(moto_server, callback_api, **settings)
    try:
        callback_api.wait_for("heartbeat")
        # When it is SIGKILLed before it reports
        proc.kill()
        proc.wait(10)
    finally:
        proc.kill()
    assert callback_api.ops("succeed") == []
    # Then the next process completes the task exactly once
    again = start_process(moto_server, callback_api, **settings)
    try:
        callback_api.wait_for("succeed", timeout_s=120)
        wait_counts(moto_server, (0, 0))
        again.terminate()
        assert again.wait(60) == 0
    finally:
        again.kill()
    assert callback_api.ops("succeed") == ["cb-proc"] and callback_api.failures() == []
    assert len(outputs_written_once(moto_server, "embeddings/p/")) == 2
    assert scratch_left(tmpdir_env) == []


def test_the_sweep_removes_dead_runs_scratch_and_keeps_live_ones(tmp_path: Path) -> None:
    # Given the scratch of this (live) process, of a dead process, and an unrelated directory
    mine = common.scratch_dir("transcode", tmp=tmp_path)
    dead_pid = os.fork()
    if dead_pid == 0:  # pragma: no cover - the child leaves at once
        os._exit(0)
    os.waitpid(dead_pid, 0)
    dead = tmp_path / f"{common.SCRATCH_PREFIX}transcode-{dead_pid}.12345-abcd"
    (dead / "hls").mkdir(parents=True)
    reused = tmp_path / f"{common.SCRATCH_PREFIX}transcode-{os.getpid()}.1-abcd"  # pid reused since
    reused.mkdir()
    other = tmp_path / "sluice-something-else"
    other.mkdir()
    # When the sweep runs
    removed = common.sweep_scratch(tmp=tmp_path)
    # Then only the dead runs' directories are gone
    assert sorted(removed) == sorted([dead, reused])
    assert mine.is_dir() and other.is_dir() and not dead.exists() and not reused.exists()
