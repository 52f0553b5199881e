"""Scheduler processes (tests/integration/sched_proc.py) on one broker and run log, and what that
log says: ticks run twice, overlapping runs, stale runs."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from devtools.rabbitmq import RabbitNode
from sluice.scheduling.names import Names
from tests.conftest import ROOT

# The task a fleet's processes declare when the test names none.
TASK = "killme"


@dataclass
class Run:
    task: str
    key: int  # the tick's due time, ms
    pid: int
    started: float
    ended: float | None = None

    @property
    def due(self) -> float:
        return self.key / 1000

    @property
    def lateness_s(self) -> float:
        return self.started - self.due


class Fleet:
    """Scheduler processes sharing one broker (and one coordination table when `env` names it).
    Unless a process is started with its own `specs`, it declares one task, `killme`, every
    `period` seconds, whose runs take `duration` seconds."""

    def __init__(
        self,
        url: str,
        prefix: str,
        log: Path,
        *,
        env: dict[str, str],
        period: float = 3600.0,
        duration: float = 0.01,
    ) -> None:
        self.url, self.prefix, self.log = url, prefix, log
        self.period, self.duration, self.env = period, duration, env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        role: str = "all",
        *,
        group: str = "scheduler",
        specs: tuple[str, ...] = (),
        **env: str,
    ) -> subprocess.Popen[bytes]:
        """A scheduler process of consumer `group` declaring `specs` (TASK:PERIOD_S:GROUP)."""
        specs = specs or (f"{TASK}:{self.period}:scheduler",)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.sched_proc", self.url, self.prefix, group,
             str(self.log), *specs, "--role", role, "--duration", str(self.duration)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **self.env, **env},
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def runs(self, task: str | None = None) -> list[Run]:
        """Every run started (of `task`, or of any), in the order they started."""
        if not self.log.exists():
            return []
        runs: dict[tuple[str, int, int], Run] = {}
        out: list[Run] = []
        for line in self.log.read_text().splitlines():
            if not line.strip():
                continue
            kind, name, key, pid, at = line.split()
            ident = (name, int(key), int(pid))
            if task not in (None, name):
                continue
            if kind == "start":
                runs[ident] = Run(name, int(key), int(pid), float(at))
                out.append(runs[ident])
            elif ident in runs:
                runs[ident].ended = float(at)
        return out

    def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen in {timeout} s")
            time.sleep(0.005)

    def wait_runs(
        self,
        count: int,
        timeout: float,
        pid: int | None = None,
        *,
        task: str | None = None,
        after: float = 0.0,
    ) -> list[Run]:
        """The finished runs (of `task`, by `pid`, started after `after`), once `count` are."""

        def done() -> list[Run]:
            return [
                r for r in self.runs(task) if r.ended and pid in (None, r.pid) and r.started > after
            ]

        what = f"{count} runs" + (f" of {task}" if task else "") + (f" by {pid}" if pid else "")
        self.wait(lambda: len(done()) >= count, timeout, what)
        return done()

    def running(self) -> Run | None:
        """The run in progress now (its start logged, its end not yet), if any."""
        open_runs = [r for r in self.runs() if r.ended is None]
        return open_runs[-1] if open_runs else None

    def stop_one(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM (after SIGCONT, for a frozen one), then SIGKILL if it does not end."""
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            self.stop_one(proc)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def listeners(rabbit: RabbitNode, names: Names) -> int:
    """Queues bound to the registry exchange (one per listening scheduler process)."""
    exchange = urllib.parse.quote(names.registry_exchange, safe="")
    request = urllib.request.Request(  # noqa: S310 - the test node's management API on loopback
        f"{rabbit.management_url}/api/exchanges/%2F/{exchange}/bindings/source",
        headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback
            return len(json.load(answer))
    except OSError:
        return 0


def twice(runs: list[Run]) -> list[int]:
    """Ticks started more than once (by any processes)."""
    return sorted(k for k, n in Counter(r.key for r in runs).items() if n > 1)


def overlaps(runs: list[Run], *, exclude: Collection[tuple[int, int]] = frozenset()) -> int:
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
