"""A scheduler process for the multi-process tests: one task whose action logs `start <key>` /
`end <key>` lines (with the pid and the time) to a shared file.

python -m tests.integration.sched_proc URL PREFIX PERIOD_S DURATION_S LOGFILE [ROLE]

ROLE: `all` (runner and reconciler, as the Procfile process), `runner` or `leader` (reconciler
only). Settings (the tick ledger, lease, heartbeat) come from the environment, as in the Procfile
process (worker/scheduler/__main__.py: build). SCHED_KILL_AFTER_END=n: the process kills itself (SIGKILL) right after its n-th run ends,
before the runner records the tick or publishes the next token.
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
from sluice.settings import SchedulerSettings
from worker.scheduler.__main__ import build


def main() -> None:
    url, prefix, period, duration, logfile = sys.argv[1:6]
    role = sys.argv[6] if len(sys.argv) > 6 else "all"
    kill_after = int(os.environ.get("SCHED_KILL_AFTER_END") or 0)
    ends = 0

    def record(line: str) -> None:
        fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{line} {os.getpid()} {time.time():.6f}\n".encode())
        finally:
            os.close(fd)

    def action(tick: Tick) -> None:
        nonlocal ends
        record(f"start {tick.key}")
        time.sleep(float(duration))
        record(f"end {tick.key}")
        ends += 1
        if ends == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    registry = Registry([PeriodicTask("killme", Every(float(period)), action=action)])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    scheduler = build(registry, url, SchedulerSettings.read(), names=Names(prefix))
    if role == "all":
        with scheduler:
            stop.wait()
        return
    server = scheduler.runners[0] if role == "runner" else scheduler.reconciler
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    stop.wait()
    thread.join(5)


if __name__ == "__main__":
    main()
