"""A scheduler process for the SIGKILL test: one task that logs `start <due>` / `end <due>` lines.

python -m tests.integration.sched_proc URL PREFIX PERIOD_S DURATION_S LOGFILE
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from sluice.scheduling.names import Names
from sluice.scheduling.registry import PeriodicTask, Registry, Tick
from sluice.scheduling.schedule import Every
from worker.scheduler.runner import Scheduler


def main() -> None:
    url, prefix, period, duration, logfile = sys.argv[1:6]

    def record(line: str) -> None:
        fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{line} {os.getpid()} {time.time():.6f}\n".encode())
        finally:
            os.close(fd)

    def action(tick: Tick) -> None:
        record(f"start {tick.key}")
        time.sleep(float(duration))
        record(f"end {tick.key}")

    registry = Registry([PeriodicTask("killme", Every(float(period)), action=action)])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Scheduler(registry, url, names=Names(prefix)):
        stop.wait()


if __name__ == "__main__":
    main()
