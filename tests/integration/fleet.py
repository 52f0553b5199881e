"""Several scheduler processes (tests/integration/sched_proc.py) on one task, and what their
shared run log says: ticks run twice, overlapping runs, stale runs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT


@dataclass
class Run:
    key: int  # the tick's due time, ms
    pid: int
    started: float
    ended: float | None = None

    @property
    def lateness_s(self) -> float:
        return self.started - self.key / 1000


class Fleet:
    """Scheduler processes sharing one broker (and one tick ledger when `env` names it)."""

    def __init__(
        self, url: str, prefix: str, log: Path, *, period: float, duration: float, env: dict
    ) -> None:
        self.url, self.prefix, self.log = url, prefix, log
        self.period, self.duration, self.env = period, duration, env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, role: str = "all", **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.sched_proc", self.url, self.prefix,
             str(self.period), str(self.duration), str(self.log), role],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **self.env, **env},
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def lines(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split() for line in self.log.read_text().splitlines() if line.strip()]

    def runs(self) -> list[Run]:
        runs: dict[tuple[int, int], Run] = {}
        out: list[Run] = []
        for kind, key, pid, at in self.lines():
            if kind == "start":
                run = Run(int(key), int(pid), float(at))
                runs[(run.key, run.pid)] = run
                out.append(run)
            elif (int(key), int(pid)) in runs:
                runs[(int(key), int(pid))].ended = float(at)
        return out

    def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen in {timeout} s")
            time.sleep(0.005)

    def wait_runs(self, count: int, timeout: float, pid: int | None = None) -> None:
        self.wait(
            lambda: len([r for r in self.runs() if r.ended and pid in (None, r.pid)]) >= count,
            timeout,
            f"{count} runs" + (f" by {pid}" if pid else ""),
        )

    def running(self) -> Run | None:
        """The run in progress now (its start logged, its end not yet), if any."""
        open_runs = [r for r in self.runs() if r.ended is None]
        return open_runs[-1] if open_runs else None

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def twice(runs: list[Run]) -> list[int]:
    """Ticks started more than once (by any processes)."""
    return sorted(k for k, n in Counter(r.key for r in runs).items() if n > 1)


def overlaps(runs: list[Run], *, exclude: set[tuple[int, int]] = frozenset()) -> int:
    """Runs that started while another (finished) run was still in progress."""
    done = sorted(
        (r for r in runs if r.ended is not None and (r.key, r.pid) not in exclude),
        key=lambda r: r.started,
    )
    count, busy_until = 0, float("-inf")
    for run in done:
        if run.started < busy_until:
            count += 1
        busy_until = max(busy_until, run.ended or run.started)
    return count


def stale(runs: list[Run], period: float, slack: float = 0.1) -> list[Run]:
    """Runs of a tick that was no longer the latest due one when they started."""
    return [r for r in runs if r.lateness_s > period + slack]
