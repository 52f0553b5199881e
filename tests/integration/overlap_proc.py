"""A scheduler process for the overlap test: one event task whose ticks go through the worker's
dispatcher to the durable runner the test serves (AWS_ENDPOINT_URL_LAMBDA). Each send is logged
as `sent <event id> <pid> <time>` to a shared file, and the start as `ready - <pid> <time>`.

python -m tests.integration.overlap_proc URL PREFIX PERIOD_S LOGFILE

Settings (tick ledger, lease, workflow aliases) come from the environment, as in the Procfile
process. SCHED_KILL_WHEN=path: the process kills itself (SIGKILL) right after its first send once
that file exists, while the run it started goes on and before its runner finishes the tick.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import boto3

from sluice.envelope import Event
from sluice.scheduling.names import Names
from sluice.scheduling.registry import PeriodicTask, Registry
from sluice.scheduling.schedule import Every
from sluice.settings import SchedulerSettings, WebSettings
from worker.dispatch import Delivery, Dispatcher
from worker.observability import Metrics
from worker.scheduler.__main__ import build

TASK = "overlap-probe"
EVENT = "media/embedding.requested"  # starts embed_transcript (sluice.catalog.ROUTES)
WORKFLOW = "embed_transcript"


def dispatcher(lambda_client: Any = None, aliases: Mapping[str, str] | None = None) -> Dispatcher:
    """The worker's dispatcher, as sqsd would give it the event: it starts the workflow (the
    aliases: the environment's SLUICE_ALIAS_* by default)."""
    return Dispatcher(
        settings=WebSettings.read(
            {
                **(os.environ if aliases is None else aliases),
                "SLUICE_ENV": "test",
                "SLUICE_EVENTS_DLQ_URL": "https://sqs.eu-west-1.amazonaws.com/1/dlq",
            }
        ),
        lambda_client=lambda_client or boto3.client("lambda"),
        sqs_client=None,
        metrics=Metrics("Sluice-test/Worker", {"Environment": "test"}, stream=io.StringIO()),
    )


def main() -> None:
    url, prefix, period, logfile = sys.argv[1:5]
    kill_when = os.environ.get("SCHED_KILL_WHEN")
    worker = dispatcher()

    def record(kind: str, what: str) -> None:
        fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{kind} {what} {os.getpid()} {time.time():.6f}\n".encode())
        finally:
            os.close(fd)

    def send(event: Event) -> None:
        result = worker.handle(event.to_json().encode(), Delivery(message_id=event.id))
        if result.status != 200:
            raise RuntimeError(f"the worker answered {result.status}: {result.reason}")
        record("sent", event.id)
        if kill_when and os.path.exists(kill_when):
            os.kill(os.getpid(), signal.SIGKILL)

    task = PeriodicTask(TASK, Every(float(period)), event=EVENT, data={"key": "k"})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    settings = SchedulerSettings.read()
    with build(Registry([task]), url, settings, names=Names(prefix), send=send):
        record("ready", "-")
        stop.wait()


if __name__ == "__main__":
    main()
