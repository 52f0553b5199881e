"""A scheduler process for the runtime-registry and routing tests: declared tasks whose action
logs `start <task> <key>` / `end <task> <key>` (with the pid and time) to a shared file, and an
event sender that logs `start <task> <key>` for the tasks added at run time.

python -m tests.integration.control_proc URL PREFIX GROUP LOGFILE TASK:PERIOD_S:GROUP...

Settings (the coordination table: tick ledger and overrides, lease, heartbeat) come from the
environment, as in the Procfile process (worker/scheduler/__main__.py: build).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

from sluice.envelope import Event
from sluice.scheduling.names import Names
from sluice.scheduling.registry import PeriodicTask, Registry, Tick
from sluice.scheduling.schedule import Every
from sluice.settings import SchedulerSettings
from worker.scheduler.__main__ import build


def _noop(tick: Tick) -> None:
    del tick


def declared(specs: list[str], action: Any = _noop) -> Registry:
    """The registry `TASK:PERIOD_S:GROUP` specs declare (each task runs `action`)."""
    tasks = []
    for spec in specs:
        name, period, group = spec.split(":")
        tasks.append(PeriodicTask(name, Every(float(period)), action=action, group=group))
    return Registry(tasks)


def main() -> None:
    url, prefix, group, logfile, *specs = sys.argv[1:]

    def record(line: str) -> None:
        fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{line} {os.getpid()} {time.time():.6f}\n".encode())
        finally:
            os.close(fd)

    def action(tick: Tick) -> None:
        record(f"start {tick.task} {tick.key}")
        time.sleep(0.01)
        record(f"end {tick.task} {tick.key}")

    def send(event: Event) -> Any:
        task, key = event.id.removeprefix("tick-").rsplit("-", 1)
        record(f"start {task} {key}")
        record(f"end {task} {key}")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    scheduler = build(
        declared(specs, action),
        url,
        SchedulerSettings.read(),
        names=Names(prefix),
        send=send,
        group=group,
    )
    with scheduler:
        stop.wait()


if __name__ == "__main__":
    main()
