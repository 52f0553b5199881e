"""`sluice schedules list|reseed|add|set|pause|resume|remove`: the periodic tasks and their tokens.

`list` reads the declared registry; with a broker (`--broker-url` / SLUICE_BROKER_URL) it shows
the effective one (the runtime overrides in the coordination table applied: where each task came
from, paused or removed) and how many tokens wait in each task's hatchery and processor queues
(exactly one is healthy). `add|set|pause|resume|remove` change tasks at run time through the
Python API in sluice_cli/schedule_control.py; they need the broker scheduler (cron.yaml, the
fallback without a broker, is fixed at deploy).
`reseed` checks the tokens and whether a scheduler runs: a running scheduler's reconciler (the
leader) restores a lost token within one period, and nothing but a running scheduler can consume
one, so the CLI never publishes tokens itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import click
from botocore.exceptions import BotoCoreError, ClientError

from sluice import naming
from sluice.scheduling.names import START_LATENESS, Names
from sluice.scheduling.overrides import (
    Entry,
    OverrideError,
    OverrideStore,
    effective,
    parse_data,
    parse_period,
)
from sluice.scheduling.registry import GROUPS, OVERLAP, REGISTRY, Registry, Token
from sluice_cli.aws import Aws, default_endpoint, friendly_errors
from sluice_cli.schedule_control import ScheduleControl

BROKER_ENV = "SLUICE_BROKER_URL"
# What the cron.yaml fallback (no broker) cannot do, said by every runtime command and the docs.
NO_BROKER_CHANGES = (
    "runtime changes need the broker scheduler: without a broker, cron.yaml drives the tasks, and "
    "EB reads it only at deploy, so tasks cannot be added, removed, paused, resumed or re-timed, "
    "nor their payload changed, at run time; change sluice/scheduling/registry.py and deploy "
    f"(pass --broker-url or set {BROKER_ENV} if the environment has a broker)"
)


def _registry() -> Registry:
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


@dataclass(frozen=True)
class Status:
    """A task's last outcome (event and tick) and the lateness of its last start, from its
    status queue (the last few lifecycle events, read without consuming them)."""

    outcome: str = "-"
    due: float | None = None
    lateness_ms: float | None = None

    def describe(self) -> str:
        when = f" {_iso(self.due)}" if self.due is not None else ""
        late = f"{self.lateness_ms:.0f} ms" if self.lateness_ms is not None else "-"
        return f"{self.outcome + when:<32} {late:>9}"


def last_status(broker_url: str, tasks: list[str], names: Any = None) -> dict[str, Status]:
    """Task -> its Status; a task whose status queue is not declared yet is left out."""
    import pika

    names = names or Names()
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    found: dict[str, Status] = {}
    try:
        for task in tasks:
            channel = connection.channel()
            try:
                events = [json.loads(m[2]) for m in _take(channel, names.status(task), 100)]
            except pika.exceptions.ChannelClosedByBroker:
                continue  # not declared: the scheduler has not started
            finally:
                if channel.is_open:
                    channel.close()  # unacknowledged: all go back
            # A run's outcome carries its start's lateness; a queue declared by an older
            # version may still hold `started` events, which carried it themselves.
            outcomes = [e for e in events if e.get("event") != "started"]
            late = [
                e[START_LATENESS] if START_LATENESS in e else e["lateness_s"]
                for e in events
                if START_LATENESS in e or (e.get("event") == "started" and "lateness_s" in e)
            ]
            last = outcomes[-1] if outcomes else None
            found[task] = Status(
                last["event"] if last else "-",
                last.get("due") if last else None,
                late[-1] * 1000 if late else None,
            )
    finally:
        connection.close()
    return found


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
    registry = _registry()
    now = time.time()
    names = Names(prefix) if prefix else Names()
    entries = effective(registry, {})
    if broker_url:
        try:
            entries = _control(broker_url, names).entries()
        except (BotoCoreError, ClientError) as exc:
            click.echo(f"(runtime overrides not read: {exc}; showing the declared tasks)")
    tasks = [e.task.name for e in entries]
    counts = token_counts(broker_url, tasks, names) if broker_url else {}
    status = last_status(broker_url, tasks, names) if broker_url else {}
    header = (
        f"{'task':<24} {'schedule':<28} {'next due':<21} {'does':<36} {'group':<10} "
        f"{'from':<11} {'state':<18}"
    )
    if counts:
        header += f" {'last outcome':<32} {'lateness':>9} tokens (hatchery/processor)"
    click.echo(header)
    for entry in entries:
        task = entry.task
        action = getattr(task.action, "__name__", "its action")
        does = f"event {task.event}" if task.event else f"runs {action}()"
        due = _iso(task.schedule.first_after(now)) if entry.active else "-"
        line = (
            f"{task.name:<24} {describe(task.schedule):<28} {due:<21} {does:<36} "
            f"{task.group:<10} {entry.origin:<11} {entry.state:<18}"
        )
        if task.name in counts:
            line += " " + status.get(task.name, Status()).describe()
            hatchery, processor = counts[task.name]
            if hatchery < 0:
                line += " not declared (scheduler not started)"
            else:
                total = hatchery + processor
                # A delivered token (a run under way; kept across ticks with
                # SLUICE_SCHEDULER_HOLD_S) is out of the queues' count.
                state = (
                    "ok"
                    if total == 1
                    else (
                        "none waiting: held by its runner, or lost" if total == 0 else "DUPLICATE"
                    )
                )
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
def reseed(task: str | None, broker_url: str | None, prefix: str | None) -> None:
    """Check the token of TASK (or of every task); a running scheduler restores a lost one."""
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
    from sluice.scheduling.names import Names

    names = Names(prefix) if prefix else Names()
    tasks = [registry.get(task)] if task else list(registry)
    counts = token_counts(broker_url, [t.name for t in tasks], names)
    _echo_tokens(counts)
    if not _leader_present(broker_url, names):
        raise click.ClickException(
            "no scheduler is running: start the worker's scheduler process; its reconciler "
            "restores every lost token within one period (a token nothing consumes would only wait)"
        )
    lost = [t for t, c in counts.items() if sum(max(n, 0) for n in c) != 1]
    if lost:
        click.echo(
            f"a scheduler is running: its reconciler (the leader) re-seeds {', '.join(lost)} "
            "within one period if lost (a token delivered to its runner is not in the count: a "
            "run under way, or kept across ticks); `sluice schedules list` shows when it did"
        )
    else:
        click.echo("a scheduler is running and every task holds its one token: nothing to do")


@schedules.group()
def dlq() -> None:
    """Ticks dead-lettered by the scheduler (queue `sluice.sched.dead`): read them, run them again."""


def _take(channel: Any, queue: str, limit: int) -> list[tuple[Any, Any, bytes]]:
    """Up to `limit` messages, taken unacknowledged from `queue` on `channel` (closing the
    channel gives them back)."""
    taken: list[tuple[Any, Any, bytes]] = []
    while len(taken) < limit:
        method, props, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break
        taken.append((method, props, body))
    return taken


def _describe_dead(props: Any, body: bytes) -> str:
    headers = dict(props.headers or {})
    try:
        token = Token.decode(body)
    except ValueError:
        return f"(not a tick) {body[:80]!r}"
    task, due = token.task, _iso(token.due)
    # A token the broker dead-lettered by itself (its delivery limit) has no reason of ours.
    reason = headers.get("reason") or (
        "delivery-limit" if headers.get("x-death") or headers.get("x-first-death-reason") else "?"
    )
    attempts = headers.get("attempts", "?")
    error = str(headers.get("error", ""))[:120]
    return f"{task:<24} {due:<21} {reason!s:<16} {attempts!s:<8} {error}".rstrip()


def _dlq_channel(broker_url: str | None) -> tuple[Any, Any]:
    import pika

    if not broker_url:
        raise click.ClickException(
            f"the dead-letter queue is on the broker: pass --broker-url or set {BROKER_ENV}"
        )
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    except pika.exceptions.AMQPError as exc:
        raise click.ClickException(
            f"cannot connect to the broker at {_redact(broker_url)}: {exc!r}"
        ) from None
    return connection, connection.channel()


_DEAD_HEADER = f"{'task':<24} {'due':<21} {'reason':<16} {'attempts':<8} error"


@dlq.command()
@click.option("--broker-url", envvar=BROKER_ENV, help="amqp(s):// URL of the scheduler's broker.")
@click.option("--limit", default=50, show_default=True, help="Show at most this many.")
@click.option("--prefix", hidden=True, help="Exchange/queue name prefix (tests).")
def peek(broker_url: str | None, limit: int, prefix: str | None) -> None:
    """Show dead-lettered ticks without consuming them."""
    names = Names(prefix) if prefix else Names()
    connection, channel = _dlq_channel(broker_url)
    try:
        # Taken unacknowledged, then given back by closing the channel: nothing is consumed.
        taken = _take(channel, names.dead_queue, limit)
        click.echo(f"{len(taken)} dead-lettered tick(s) in {names.dead_queue}")
        if taken:
            click.echo(_DEAD_HEADER)
        for _, props, body in taken:
            click.echo(_describe_dead(props, body))
    finally:
        connection.close()


@dlq.command()
@click.option("--broker-url", envvar=BROKER_ENV, help="amqp(s):// URL of the scheduler's broker.")
@click.option("--limit", default=50, show_default=True, help="Redrive at most this many.")
@click.option("--yes", is_flag=True, help="Do not ask first.")
@click.option("--prefix", hidden=True, help="Exchange/queue name prefix (tests).")
def redrive(broker_url: str | None, limit: int, yes: bool, prefix: str | None) -> None:
    """Move dead-lettered ticks back to their tasks: each runs once more."""
    import pika

    names = Names(prefix) if prefix else Names()
    registry = _registry()
    connection, channel = _dlq_channel(broker_url)
    try:
        taken = _take(channel, names.dead_queue, limit)
        if not taken:
            click.echo(f"no dead-lettered ticks in {names.dead_queue}")
            return
        click.echo(_DEAD_HEADER)
        for _, props, body in taken:
            click.echo(_describe_dead(props, body))
        if not yes and not click.confirm(f"run these {len(taken)} tick(s) again?"):
            click.echo("nothing redriven")
            return
        channel.confirm_delivery()
        moved = kept = 0
        for method, _, body in taken:
            try:
                token = replace(Token.decode(body), attempt=1, redrive=True)
            except ValueError:
                token = None
            if token is None or token.task not in registry:
                kept += 1  # not a tick of a registered task: left where it is
                continue
            # Published (confirmed) before the dead letter is acked: a failure in between
            # leaves a copy in both places, never in neither.
            try:
                channel.basic_publish(
                    names.processor_exchange,
                    token.task,
                    token.encode(),
                    pika.BasicProperties(delivery_mode=2, content_type="application/json"),
                    mandatory=True,
                )
            except pika.exceptions.UnroutableError:
                click.echo(f"{token.task}: no scheduler has declared its queue; left in the queue")
                kept += 1
                continue
            channel.basic_ack(method.delivery_tag)
            moved += 1
        click.echo(f"redriven: {moved}; left in the queue: {kept}")
    finally:
        connection.close()


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


# -- changes at run time --------------------------------------------------------------------------


def _control(broker_url: str | None, names: Names) -> ScheduleControl:
    """The runtime registry's API on the coordination table of --env (where --endpoint-url,
    --profile and --region point) and the broker."""
    if not broker_url:
        raise click.ClickException(NO_BROKER_CHANGES)
    ctx = click.get_current_context()
    aws = ctx.find_object(Aws) or Aws(env="dev", endpoint_url=default_endpoint())
    store = OverrideStore(aws.client("dynamodb"), naming.coordination_table(aws.env), names.prefix)
    return ScheduleControl(_registry(), store, broker_url, names)


def _echo_entry(entry: Entry, control: ScheduleControl) -> None:
    task = entry.task
    click.echo(
        f"{task.name}: {describe(task.schedule)}, group {task.group}, {entry.origin}, {entry.state}"
    )
    if control.prompted:
        click.echo("every running scheduler process applies it now")
    else:
        click.echo(
            "stored; no scheduler process was told (none has started on this broker yet, or the "
            "broker is unreachable): each applies it when it starts or within a few seconds"
        )


def _run(op: str, name: str, broker_url: str | None, prefix: str | None, **fields: Any) -> None:
    control = _control(broker_url, Names(prefix) if prefix else Names())
    try:
        entry = getattr(control, op)(name, **fields)
    except OverrideError as exc:
        hint = {"every_s": "--every", "period": "--every", "cron": "--cron", "task": "NAME"}
        field = hint.get(exc.field, f"--{exc.field}")
        raise click.BadParameter(str(exc), param_hint=field) from None
    _echo_entry(entry, control)


def _period(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_period(value)
    except OverrideError as exc:
        raise click.BadParameter(str(exc)) from None


def _data(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        return parse_data(value)
    except OverrideError as exc:
        raise click.BadParameter(str(exc)) from None


_broker = click.option(
    "--broker-url", envvar=BROKER_ENV, help="amqp(s):// URL of the scheduler's broker."
)
_prefix = click.option("--prefix", hidden=True, help="Exchange/queue name prefix (tests).")
_every = click.option(
    "--every", "every_s", callback=_period, help="Period: 250ms, 30s, 5m, 1h, 1d (or seconds)."
)
_cron = click.option("--cron", help='5-field cron expression, UTC, e.g. "0 3 * * *".')
_payload = click.option("--data", callback=_data, help="The event's data: a JSON object.")
_group = click.option(
    "--group", type=click.Choice(GROUPS), help="The consumer group (process) that runs it."
)
_overlap = click.option(
    "--overlap",
    type=click.Choice(OVERLAP),
    help="While the last tick's run still runs: skip the tick (the default) or allow a second run.",
)


@schedules.command()
@click.argument("name")
@_every
@_cron
@click.option("--event", help="The event each tick sends (one a workflow takes).")
@_payload
@_group
@_overlap
@_broker
@_prefix
@friendly_errors
def add(name: str, broker_url: str | None, prefix: str | None, **fields: Any) -> None:
    """Add task NAME at run time (it sends an event each tick), or bring back a removed
    declared task."""
    _run("add", name, broker_url, prefix, **fields)


@schedules.command("set")
@click.argument("name")
@_every
@_cron
@_payload
@_group
@_overlap
@_broker
@_prefix
@friendly_errors
def set_(name: str, broker_url: str | None, prefix: str | None, **fields: Any) -> None:
    """Change task NAME's period or cron (from its next tick, on the new grid), payload, group
    or overlap."""
    _run("set", name, broker_url, prefix, **fields)


@schedules.command()
@click.argument("name")
@_broker
@_prefix
@friendly_errors
def pause(name: str, broker_url: str | None, prefix: str | None) -> None:
    """Stop task NAME's ticks in every scheduler process until `resume` (a run already started
    finishes)."""
    _run("pause", name, broker_url, prefix)


@schedules.command()
@click.argument("name")
@_broker
@_prefix
@friendly_errors
def resume(name: str, broker_url: str | None, prefix: str | None) -> None:
    """Run task NAME's ticks again, from its next tick (the paused ones are not made up)."""
    _run("resume", name, broker_url, prefix)


@schedules.command()
@click.argument("name")
@_broker
@_prefix
@friendly_errors
def remove(name: str, broker_url: str | None, prefix: str | None) -> None:
    """Remove task NAME: it runs no tick in any process. A declared task is disabled (its code
    stays); `add NAME` brings either kind back."""
    _run("remove", name, broker_url, prefix)


def _oneoffs(broker_url: str | None, table: str | None, prefix: str | None) -> Any:
    """The one-off API on the broker and the coordination table the options name (the table
    defaults to the `--env`'s, reached through the CLI's AWS target)."""
    import boto3

    from sluice import naming
    from sluice_cli.aws import Aws
    from sluice_cli.oneoff import OneOffs

    if not broker_url:
        raise click.ClickException(
            f"one-off tasks wait on the broker: pass --broker-url or set {BROKER_ENV}"
        )
    aws = click.get_current_context().find_object(Aws)
    if table is None:
        if aws is None:
            raise click.ClickException(
                "one-off tasks are recorded in the coordination table: pass --table or set "
                "SLUICE_COORDINATION_TABLE"
            )
        table = naming.coordination_table(aws.env)
    dynamodb = aws.client("dynamodb") if aws is not None else boto3.client("dynamodb")
    names = Names(prefix) if prefix else Names()
    return OneOffs(broker_url, dynamodb, table, names=names, registry=_registry())


_BROKER = click.option(
    "--broker-url", envvar=BROKER_ENV, help="amqp(s):// URL of the scheduler's broker."
)
_TABLE = click.option(
    "--table",
    envvar="SLUICE_COORDINATION_TABLE",
    help="Coordination table (default: Sluice-<env>-coordination).",
)
_PREFIX = click.option("--prefix", hidden=True, help="Exchange/queue name prefix (tests).")


@schedules.command()
@click.argument("when", metavar="TIME", required=False)
@click.argument("task", required=False)
@click.option("--payload", help="JSON object: an event task's data for this run.")
@click.option("--id", "oneoff_id", help="The one-off's id (default: a new one).")
@click.option("--list", "list_", is_flag=True, help="List the one-offs instead (pending first).")
@click.option("--all", "all_", is_flag=True, help="With --list: finished and cancelled too.")
@_BROKER
@_TABLE
@_PREFIX
def at(
    when: str | None,
    task: str | None,
    payload: str | None,
    oneoff_id: str | None,
    list_: bool,
    all_: bool,
    broker_url: str | None,
    table: str | None,
    prefix: str | None,
) -> None:
    """Run TASK (declared, or added at run time) once at TIME (ISO 8601, UTC unless it says; or
    +90s, +15m, +2h, +3d), exactly once, up to a year ahead, in a process of its task's consumer
    group. `--list` shows the pending one-offs."""
    from sluice_cli.oneoff import OneOffError, parse_time

    oneoffs = _oneoffs(broker_url, table, prefix)
    click.get_current_context().call_on_close(oneoffs.close)
    if list_:
        records = [r for r in oneoffs.list() if all_ or r.pending]
        click.echo(f"{'id':<18} {'task':<24} {'due':<26} {'state':<10} payload")
        for r in records:
            state = r.ended_as or r.state
            body = json.dumps(dict(r.oneoff.payload), separators=(",", ":"))
            click.echo(
                f"{r.oneoff.id:<18} {r.oneoff.task:<24} {r.oneoff.due_iso:<26} {state:<10} {body}"
            )
        if not records:
            click.echo("(no pending one-off tasks)")
        return
    if when is None or task is None:
        raise click.UsageError("give TIME and TASK (or --list)")
    try:
        data = json.loads(payload) if payload else {}
        if not isinstance(data, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--payload")
        job = oneoffs.at(parse_time(when), task, data, oneoff_id=oneoff_id)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    except OneOffError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{job.id} {job.task} at {job.due_iso}")


@schedules.command()
@click.argument("oneoff_id", metavar="ID")
@_BROKER
@_TABLE
@_PREFIX
def cancel(oneoff_id: str, broker_url: str | None, table: str | None, prefix: str | None) -> None:
    """Cancel the one-off task ID before it starts."""
    from sluice_cli.oneoff import OneOffError

    try:
        record = _oneoffs(broker_url, table, prefix).cancel(oneoff_id)
    except OneOffError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"cancelled {record.oneoff.id} ({record.oneoff.task} at {record.oneoff.due_iso})")
