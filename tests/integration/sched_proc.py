"""The scheduler process of the multi-process tests: declared tasks whose action logs
`start <task> <key>` / `end <task> <key>` lines (with the pid and the time) to a shared file, and
an event sender that logs the same for event tasks (tasks added at run time, their one-offs).

python -m tests.integration.sched_proc URL PREFIX GROUP LOGFILE [--role ROLE] [--duration S]
    TASK:PERIOD_S:GROUP...

GROUP: the process's consumer group (`--group` of the Procfile process). ROLE: `all` (runners,
reconciler and one-off runner, as the Procfile process), `runner` (the first task's runner only)
or `leader` (the reconciler only). --duration: how long each run of a declared task takes.
Settings (the coordination table, lease, heartbeat, TTL ceiling) come from the environment, as in
the Procfile process (worker/scheduler/__main__.py: build). SCHED_KILL_AFTER_END=n: the process
kills itself (SIGKILL) right after its n-th run ends, before the runner records the tick or
publishes the next token. SCHED_KILL_IN_RUN=n: it kills itself halfway through its n-th run
(after the run's start is logged, before its end).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from datetime import datetime
from typing import Any

from sluice.envelope import Event
from sluice.scheduling.names import Names
from sluice.scheduling.registry import GROUPS, PeriodicTask, Registry, Tick
from sluice.scheduling.schedule import Every
from sluice.settings import SchedulerSettings
from worker.scheduler.__main__ import build


def _noop(tick: Tick) -> None:
    del tick


def declared(specs: list[str] | tuple[str, ...], action: Any = _noop) -> Registry:
    """The registry `TASK:PERIOD_S:GROUP` specs declare (each task runs `action`)."""
    tasks = []
    for spec in specs:
        name, period, group = spec.split(":")
        tasks.append(PeriodicTask(name, Every(float(period)), action=action, group=group))
    return Registry(tasks)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.sched_proc")
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("group", choices=GROUPS)
    parser.add_argument("logfile")
    parser.add_argument("specs", nargs="+", metavar="TASK:PERIOD_S:GROUP")
    parser.add_argument("--role", default="all", choices=("all", "runner", "leader"))
    parser.add_argument("--duration", type=float, default=0.01)
    args = parser.parse_args()
    kill_after = int(os.environ.get("SCHED_KILL_AFTER_END") or 0)
    kill_in = int(os.environ.get("SCHED_KILL_IN_RUN") or 0)
    starts = ends = 0

    def record(line: str) -> None:
        fd = os.open(args.logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{line} {os.getpid()} {time.time():.6f}\n".encode())
        finally:
            os.close(fd)

    def action(tick: Tick) -> None:
        nonlocal starts, ends
        record(f"start {tick.task} {tick.key}")
        starts += 1
        if starts == kill_in:
            time.sleep(args.duration / 2)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(args.duration)
        record(f"end {tick.task} {tick.key}")
        ends += 1
        if ends == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def send(event: Event) -> Any:
        # A tick's event and a one-off's carry the task and the due time (sluice/scheduling).
        due = datetime.fromisoformat(event.data["scheduled_at"].replace("Z", "+00:00"))
        key = round(due.timestamp() * 1000)
        record(f"start {event.data['task']} {key}")
        record(f"end {event.data['task']} {key}")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    scheduler = build(
        declared(args.specs, action),
        args.url,
        SchedulerSettings.read(),
        names=Names(args.prefix),
        send=send,
        group=args.group,
    )
    if args.role == "all":
        with scheduler:
            stop.wait()
        return
    server = scheduler.runners[0] if args.role == "runner" else scheduler.reconciler
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    stop.wait()
    thread.join(5)


if __name__ == "__main__":
    main()
