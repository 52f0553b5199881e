"""What both heavy steps share: input limits, the context a task runs in, and the child processes
and scratch directories a step may leave behind when its process dies. (S3 locations, reads and
the classification of AWS errors are the shared adapters': adapters/s3.py, adapters/errors.py.)"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.s3 import Storage
from sluice.settings import TasksSettings


@dataclass(frozen=True)
class Limits:
    """Inputs past these limits are refused up front (business errors), not half-processed."""

    max_audio_bytes: int = TasksSettings.model_fields["max_audio_bytes"].default
    max_audio_seconds: int = TasksSettings.model_fields["max_audio_seconds"].default
    max_transcript_bytes: int = TasksSettings.model_fields["max_transcript_bytes"].default
    max_chunks: int = TasksSettings.model_fields["max_chunks"].default

    @classmethod
    def of(cls, settings: TasksSettings) -> Limits:
        """The tasks process's limits (its settings, read once at start)."""
        return cls(
            max_audio_bytes=settings.max_audio_bytes,
            max_audio_seconds=settings.max_audio_seconds,
            max_transcript_bytes=settings.max_transcript_bytes,
            max_chunks=settings.max_chunks,
        )


@dataclass(frozen=True)
class TaskContext:
    """What a heavy step gets besides its task: clients, limits, and a liveness hook.

    `progress()` is cheap to call often; the tasks process uses it to know the step is alive.
    """

    s3: Any
    limits: Limits = Limits()
    progress: Callable[[], None] = lambda: None
    # Seconds of audio per transcode chunk, the work a resumed transcode may redo (transcode.py).
    transcode_chunk_s: int = TasksSettings.model_fields["transcode_chunk_s"].default

    @property
    def storage(self) -> Storage:
        return Storage(self.s3)


# --- child processes (ffmpeg) ---------------------------------------------------------------------
# A stop (deploy, scale-in) reaches every process of the tasks unit at once: systemd's default
# KillMode=control-group sends SIGTERM to the whole cgroup, children included, whatever their
# process group. So a child must not die of that SIGTERM (the tasks process decides, within its
# grace period, whether the child finishes or is killed and its task handed back), and must die
# when the tasks process dies (a crash, SIGKILL) instead of running on as an orphan.

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
_children: set[subprocess.Popen[Any]] = set()
_children_lock = threading.Lock()


def _child_setup(parent: int) -> None:  # pragma: no cover - runs in the child, before exec
    # Blocked, not ignored: ffmpeg installs its own SIGTERM handler, a blocked signal stays
    # pending across exec. Its own session keeps it out of a signal to our process group.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    if _prctl is not None:
        # Killed when the thread that started it ends (the task's thread, which waits for it,
        # so in practice: when the tasks process dies).
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)


@contextlib.contextmanager
def child(args: Sequence[str], **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """Run `args` as a child that survives a stop and dies with this process (see above).

    On leaving the block the child is killed if it still runs (an exception in the caller).
    `kill_children()` kills every child started here (the end of a drain).
    """
    proc = subprocess.Popen(
        args,
        start_new_session=True,
        # Between fork and exec: only system calls (no locks, no imports), safe with threads.
        preexec_fn=functools.partial(_child_setup, os.getpid()),
        **popen,
    )
    with _children_lock:
        _children.add(proc)
    try:
        yield proc
    finally:
        with _children_lock:
            _children.discard(proc)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def kill_children() -> int:
    """SIGKILL every running child (the grace period is over); how many there were."""
    with _children_lock:
        running = [p for p in _children if p.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    return len(running)


def signal_name(returncode: int) -> str:
    """`SIGKILL` for -9: how a child that died of a signal is described."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


# --- scratch directories ------------------------------------------------------------------------
# A task's scratch directory is named after its owner (pid and the process's start time, so a
# reused pid is not taken for the owner): a process starting up removes the leftovers of dead
# runs (tens of MB per transcode) and never touches those of a live one.

SCRATCH_PREFIX = "sluice-"
_SCRATCH = re.compile(r"sluice-[a-z]+-(\d+)\.(\d+)-.+")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc (not Linux): only the pid can tell
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "0"
    return stat.rsplit(")", 1)[1].split()[19]


def scratch_dir(kind: str, *, tmp: str | Path | None = None) -> Path:
    """A new scratch directory for one `kind` of task, owned by this process."""
    owner = f"{os.getpid()}.{_start_time(os.getpid()) or 0}"
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{kind}-{owner}-", dir=tmp))


def sweep_scratch(*, tmp: str | Path | None = None) -> list[Path]:
    """Remove the scratch directories of processes that no longer run; the removed paths."""
    root = Path(tmp or tempfile.gettempdir())
    removed = []
    for entry in root.iterdir() if root.is_dir() else ():
        m = _SCRATCH.fullmatch(entry.name)
        if m is None or not entry.is_dir():
            continue
        started = _start_time(int(m[1]))
        if started is not None and started in (m[2], "0"):
            continue  # its owner still runs
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed
