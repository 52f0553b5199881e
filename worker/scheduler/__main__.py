"""The Procfile `scheduler` process: run the registry's ticks, or idle when there is no broker.

`python -m worker.scheduler` runs until SIGTERM/SIGINT. Without a configured broker it only
waits (EB supervises every Procfile process, so exiting would make it restart us in a loop).
`python -m worker.scheduler --cron-yaml` prints the cron.yaml the registry generates.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from sluice.envelope import Event
from sluice.scheduling.names import Names
from sluice.scheduling.oneoff_records import OneOffRecords
from sluice.scheduling.overrides import OverrideStore
from sluice.scheduling.registry import GROUPS, REGISTRY, Registry, cron_yaml
from sluice.settings import SchedulerSettings
from worker.invoke import SQS, DynamoDB
from worker.observability import configure_logging
from worker.scheduler.broker_metrics import BrokerFigures, management_url, publish_every
from worker.scheduler.ledger import Ledger, MemoryLedger, TableLedger
from worker.scheduler.oneoff import OneOffLedger, OneOffRunner
from worker.scheduler.overlap import (
    LambdaRuns,
    LastRuns,
    MemoryLastRuns,
    OverlapGuard,
    TableLastRuns,
)
from worker.scheduler.runner import Backoff, Scheduler, SendEvent, broker_url, freeze_heap


def event_sender(settings: SchedulerSettings, *, session: Any = None) -> SendEvent | None:
    """Event tasks send through the shared producer to the events queue (None: no queue set),
    with `session`'s credentials (the process's role)."""
    queue_url = settings.events_queue_url
    if not queue_url:
        return None
    from sluice.producer import send_event

    # Through the lean client (worker/invoke.py): boto3 spent more CPU on a send than the rest of
    # the tick (bench-scheduler, its clients phase).
    sqs = SQS.from_environment(session=session)

    def send(event: Event) -> Any:
        return send_event(sqs, queue_url, event)

    return send


def overlap_guard(
    settings: SchedulerSettings, last_runs: LastRuns, *, lambda_client: Any = None
) -> OverlapGuard | None:
    """What keeps an event task's runs from overlapping (worker/scheduler/overlap.py): None, said
    loudly, when no workflow alias is configured (outside the stacks, which always set them)."""
    if not settings.workflow_aliases:
        logging.getLogger("sluice.scheduler").warning(
            "NO OVERLAP CHECK: no SLUICE_ALIAS_* is set, so an event task's tick cannot see "
            "whether its previous run still runs; runs of one task may overlap."
        )
        return None
    if lambda_client is None:
        import boto3

        lambda_client = boto3.client("lambda")
    runs = LambdaRuns(lambda_client, settings.workflow_aliases)
    return OverlapGuard(last_runs, runs, pending_s=settings.overlap_pending_s)


def build(
    registry: Registry,
    url: str,
    settings: SchedulerSettings,
    *,
    names: Names,
    send: SendEvent | None = None,
    dynamodb: Any = None,
    group: str = GROUPS[0],
    lambda_client: Any = None,
    session: Any = None,
) -> Scheduler:
    """The scheduler the settings describe, running the tasks of consumer `group`. Its tick
    ledger and the runtime overrides are in the coordination table; without one it keeps the
    ledger in this process's memory and says so loudly: one scheduler process keeps the
    guarantee, several may then run a tick twice, and tasks cannot be changed at run time
    (README: the scheduler). `dynamodb`: the table's client for all of it (tests); by default
    boto3's, and the lean one for the ledger, both with `session`'s credentials (the process's
    role)."""
    ledger: Ledger
    overrides: OverrideStore | None = None
    oneoff_ledger: Ledger | None = None
    records: OneOffRecords | None = None
    last_runs: LastRuns = MemoryLastRuns()
    if settings.coordination_table:
        ticks = dynamodb
        if dynamodb is None:
            import boto3

            dynamodb = boto3.client("dynamodb")
            # The ledger's claim and finish are two writes every tick: through the lean client
            # (worker/invoke.py), as the web process's flow control. Through boto3 they cost
            # the scheduler process more CPU than the rest of the tick (bench-scheduler, its
            # clients phase).
            ticks = DynamoDB.from_environment(session=session)
        ledger = TableLedger(ticks, settings.coordination_table, names.prefix)
        overrides = OverrideStore(dynamodb, settings.coordination_table, names.prefix)
        oneoff_ledger = OneOffLedger(dynamodb, settings.coordination_table, names.prefix)
        records = OneOffRecords(dynamodb, settings.coordination_table, names.prefix)
        last_runs = TableLastRuns(dynamodb, settings.coordination_table, names.prefix)
    else:
        logging.getLogger("sluice.scheduler").warning(
            "NO TICK LEDGER: SLUICE_COORDINATION_TABLE is not set, so ticks are recorded in "
            "this process only. With more than one scheduler process a tick may run twice; "
            "runtime changes (sluice schedules add|pause|…) are not applied."
        )
        ledger = MemoryLedger()
    oneoffs = OneOffRunner(
        registry,
        url,
        names=names,
        group=group,
        max_ttl_ms=settings.max_ttl_ms,
        send=send,
        ledger=oneoff_ledger or ledger,
        records=records,
        lease_s=settings.lease_s,
        heartbeat_s=settings.heartbeat_s,
        backoff=Backoff.of(settings),
    )
    scheduler = Scheduler(
        registry,
        url,
        names=names,
        send=send,
        ledger=ledger,
        lease_s=settings.lease_s,
        heartbeat_s=settings.heartbeat_s,
        backoff=Backoff.of(settings),
        hold_s=settings.hold_s,
        overrides=overrides,
        group=group,
        oneoffs=oneoffs,
        overlap=overlap_guard(settings, last_runs, lambda_client=lambda_client),
    )
    # One-offs of tasks added at run time, and of tasks moved to another group, run as the
    # process's runtime registry says (README: one-off tasks).
    oneoffs.live = scheduler.live
    return scheduler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.scheduler")
    parser.add_argument("--cron-yaml", action="store_true", help="print cron.yaml and exit")
    parser.add_argument("--prefix", default=None, help="exchange/queue name prefix")
    parser.add_argument(
        "--group",
        default=GROUPS[0],
        choices=GROUPS,
        help="run the ticks of the tasks declared for this consumer group",
    )
    args = parser.parse_args(argv)
    if args.cron_yaml:
        sys.stdout.write(cron_yaml(REGISTRY))
        return 0
    configure_logging("sluice-scheduler")
    log = logging.getLogger("sluice.scheduler")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from worker.credentials import process_session

    # the broker secret, the events queue and the table, as its own role
    session = process_session("scheduler")
    settings = SchedulerSettings.read()
    url = broker_url(settings)
    if url is None:
        log.info("no broker configured: periodic tasks run from cron.yaml; idling")
        stop.wait()
        return 0
    names = Names(args.prefix) if args.prefix else Names()
    scheduler = build(
        REGISTRY,
        url,
        settings,
        names=names,
        send=event_sender(settings, session=session),
        group=args.group,
        session=session,
    ).start()
    log.info(
        "scheduler (group %s) started: %s",
        args.group,
        ", ".join(r.task.name for r in scheduler.runners),
    )
    if settings.metrics_namespace:  # the figures the alarms read (no per-queue AWS metrics)
        import boto3

        figures = BrokerFigures(
            url,
            REGISTRY,
            names,
            management=settings.management_url or management_url(url),
            lifecycle=scheduler.lifecycle,
        )
        publish_every(60, figures, boto3.client("cloudwatch"), settings.metrics_namespace, {}, stop)
    freeze_heap()
    stop.wait()
    scheduler.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
