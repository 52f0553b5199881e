"""`sluice schedules list|reseed`: the periodic tasks (worker/scheduler registry) and their tokens.

`list` reads the registry in code; with a broker (`--broker-url` / SLUICE_BROKER_URL) it also
shows how many tokens wait in each task's hatchery and processor queues (exactly one is healthy).
`reseed` asks the scheduler's reconciler to restore a lost token; it needs the broker.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import click

BROKER_ENV = "SLUICE_BROKER_URL"


def _registry() -> Any:
    try:
        from worker.scheduler.registry import REGISTRY
    except ImportError as exc:
        raise click.ClickException(
            f"the scheduler registry (worker/scheduler) cannot be imported: {exc}; run the CLI "
            "from the Sluice checkout (`pip install -e .` there)"
        ) from None
    return REGISTRY


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(schedule: Any) -> str:
    if hasattr(schedule, "expression"):
        return f"cron {schedule.expression} (UTC)"
    period = schedule.period_s
    text = f"every {period:g} s"
    return text + (f" (+{schedule.offset_s:g} s)" if getattr(schedule, "offset_s", 0) else "")


def token_counts(
    broker_url: str, tasks: list[str], names: Any = None
) -> dict[str, tuple[int, int]]:
    """Task -> (messages in its hatchery queue, in its processor queue), read passively; -1 for a
    queue the scheduler has not declared yet."""
    import pika

    from worker.scheduler.topology import Names

    names = names or Names()
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    except pika.exceptions.AMQPError as exc:
        raise click.ClickException(
            f"cannot connect to the broker at {_redact(broker_url)}: {exc!r}; check "
            f"--broker-url / {BROKER_ENV}"
        ) from None
    counts: dict[str, tuple[int, int]] = {}
    try:
        for task in tasks:
            found = []
            for queue in (names.hatchery(task), names.processor(task)):
                channel = connection.channel()
                try:
                    ok = channel.queue_declare(queue=queue, passive=True)
                    found.append(int(ok.method.message_count))
                    channel.close()
                except pika.exceptions.ChannelClosedByBroker:
                    found.append(-1)  # not declared yet: the scheduler has not started
            counts[task] = (found[0], found[1])
    finally:
        connection.close()
    return counts


def _redact(url: str) -> str:
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


@click.group()
def schedules() -> None:
    """Periodic tasks: what runs when, and their broker tokens."""


@schedules.command("list")
@click.option("--broker-url", envvar=BROKER_ENV, help="amqp(s):// URL: also count the tokens.")
@click.option("--prefix", hidden=True, help="Exchange/queue name prefix (tests).")
def list_(broker_url: str | None, prefix: str | None) -> None:
    """The registered periodic tasks and when each is next due."""
    from worker.scheduler.topology import Names

    registry = _registry()
    now = time.time()
    names = Names(prefix) if prefix else Names()
    counts = token_counts(broker_url, list(registry.names), names) if broker_url else {}
    header = f"{'task':<24} {'schedule':<28} {'next due':<21} {'does':<36}"
    if counts:
        header += " tokens (hatchery/processor)"
    click.echo(header)
    for task in registry:
        does = f"event {task.event}" if task.event else f"runs {task.action.__name__}()"
        line = (
            f"{task.name:<24} {describe(task.schedule):<28} "
            f"{_iso(task.schedule.first_after(now)):<21} {does:<36}"
        )
        if task.name in counts:
            hatchery, processor = counts[task.name]
            if hatchery < 0:
                line += " not declared (scheduler not started)"
            else:
                total = hatchery + processor
                state = "ok" if total == 1 else ("LOST: reseed" if total == 0 else "DUPLICATE")
                line += f" {hatchery}/{processor} {state}"
        click.echo(line.rstrip())
    if not broker_url:
        click.echo(
            f"(no broker: tokens not shown; without a broker cron.yaml drives these tasks — "
            f"pass --broker-url or set {BROKER_ENV} to see them)"
        )


@schedules.command()
@click.argument("task", required=False)
@click.option("--broker-url", envvar=BROKER_ENV, help="amqp(s):// URL of the scheduler's broker.")
@click.option("--prefix", hidden=True, help="Exchange/queue name prefix (tests).")
@click.option("--wait", "wait_s", default=10.0, show_default=True, help="Extra seconds to wait.")
def reseed(task: str | None, broker_url: str | None, prefix: str | None, wait_s: float) -> None:
    """Restore the token of TASK (or of every task) when it was lost; never makes a second."""
    registry = _registry()
    if task is not None and task not in registry:
        raise click.BadParameter(
            f"unknown task {task!r}; registered: {', '.join(registry.names)}", param_hint="TASK"
        )
    if not broker_url:
        raise click.ClickException(
            f"reseed needs the broker: pass --broker-url or set {BROKER_ENV} (without a broker, "
            "cron.yaml drives the tasks and there are no tokens to reseed)"
        )
    from worker.scheduler.registry import Registry
    from worker.scheduler.runner import Reconciler
    from worker.scheduler.topology import Names, quiet_window_s

    names = Names(prefix) if prefix else Names()
    tasks = [registry.get(task)] if task else list(registry)
    before = token_counts(broker_url, [t.name for t in tasks], names)
    if _leader_present(broker_url, names):
        click.echo(
            "a scheduler is running: its reconciler (the leader) re-seeds a lost token within "
            "one period; nothing to do here"
        )
        _echo_tokens(before)
        return
    # No scheduler leads: run the scheduler's own reconciler until every token is back. It seeds
    # only a task with no token and no activity for its quiet window, so it never makes a second.
    window = max(quiet_window_s(t) for t in tasks)
    reconciler = Reconciler(Registry(tasks), broker_url, names=names)
    stop = threading.Event()
    thread = threading.Thread(target=reconciler.serve, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 2 * window + wait_s
    after = before
    try:
        with click.progressbar(length=len(tasks), label="re-seeding") as bar:
            while time.monotonic() < deadline:
                after = token_counts(broker_url, [t.name for t in tasks], names)
                held = sum(1 for c in after.values() if sum(c) == 1)
                bar.update(held - bar.pos)
                if held == len(tasks):
                    break
                time.sleep(0.2)
    finally:
        stop.set()
        thread.join(10)
    _echo_tokens(after, before)
    lost = [t for t, c in after.items() if sum(c) != 1]
    if lost:
        raise click.ClickException(f"no single token for {', '.join(lost)} after re-seeding")


def _leader_present(url: str, names: Any) -> bool:
    """Whether a scheduler's reconciler holds the leader lock (an exclusive queue)."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(names.leader_queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        return bool(exc.reply_code == 405)  # RESOURCE_LOCKED: held; 404: nobody leads
    finally:
        connection.close()


def _echo_tokens(
    now: dict[str, tuple[int, int]], before: dict[str, tuple[int, int]] | None = None
) -> None:
    for task, counts in now.items():
        was = f"{sum(max(c, 0) for c in before[task])} -> " if before else ""
        click.echo(f"{task}: tokens {was}{sum(max(c, 0) for c in counts)}")
