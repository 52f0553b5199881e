"""Helpers for scheduler tests and the benchmark: recorded runs, the control-event tap, stats."""

from __future__ import annotations

import itertools
import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika

from devtools.stats import percentile
from sluice.scheduling.names import Names
from sluice.scheduling.registry import Tick
from worker.scheduler.topology import declare


@dataclass
class Run:
    due: float
    started: float
    ended: float | None = None


@dataclass
class Recorder:
    """A task action that records each run (due, start, end) and takes `duration_s`."""

    duration_s: float = 0.0
    fail: Callable[[Tick], None] | None = None
    runs: list[Run] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, tick: Tick) -> None:
        run = Run(tick.due, time.time())
        with self.lock:
            self.runs.append(run)
        if self.fail is not None:
            self.fail(tick)
        if self.duration_s:
            time.sleep(self.duration_s)
        run.ended = time.time()

    def completed(self) -> list[Run]:
        with self.lock:
            return [r for r in self.runs if r.ended is not None]

    def wait_for(self, count: int, timeout: float) -> list[Run]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.completed()
            if len(done) >= count:
                return done
            time.sleep(0.01)
        raise AssertionError(f"only {len(self.completed())} of {count} runs in {timeout} s")


class ControlTap:
    """Consumes the control exchange on its own connection and thread."""

    def __init__(self, url: str, names: Names) -> None:
        self.url, self.names = url, names
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn = pika.BlockingConnection(pika.URLParameters(self.url))
                ch = conn.channel()
                declare(ch, self.names, [])
                queue = ch.queue_declare("", exclusive=True).method.queue
                ch.queue_bind(queue, self.names.control_exchange, routing_key="#")
                self._ready.set()
                for method, _, body in ch.consume(queue, auto_ack=True, inactivity_timeout=0.05):
                    if self._stop.is_set():
                        break
                    if method is not None:
                        self.events.append(json.loads(body))
                conn.close()
            except pika.exceptions.AMQPError:
                time.sleep(0.2)  # the broker restarts in one test: follow it

    def __enter__(self) -> ControlTap:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("control tap did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def of(self, event: str, task: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in list(self.events)
            if e["event"] == event and (task is None or e["task"] == task)
        ]

    def wait_for(self, event: str, task: str | None = None, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.of(event, task)
            if found:
                return found[-1]
            time.sleep(0.005)
        raise AssertionError(f"no {event} event for {task} in {timeout} s")


def lateness_ms(runs: list[Run]) -> dict[str, float]:
    late = [(r.started - r.due) * 1000 for r in runs]
    return {
        "n": len(late),
        "p50_ms": round(percentile(late, 50), 2),
        "p99_ms": round(percentile(late, 99), 2),
        "max_ms": round(max(late), 2),
        "mean_ms": round(statistics.fmean(late), 2),
    }


def grid_steps(runs: list[Run], period: float) -> list[int]:
    """The number of periods between consecutive runs' due times (1 everywhere: nothing skipped)."""
    dues = [r.due for r in runs]
    return [round((b - a) / period) for a, b in itertools.pairwise(dues)]
