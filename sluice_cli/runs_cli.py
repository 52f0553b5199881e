"""`sluice runs list|show|cancel|replay`: the commands over the runs API (sluice_cli/runs.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from sluice import naming
from sluice.run_control import RunRecords
from sluice_cli.aws import Aws, friendly_errors
from sluice_cli.jobs import (
    LOGS_QUERY,
    failure_handler_functions,
    log_group_prefixes,
    workflow_functions,
)
from sluice_cli.runs import STATUSES, Run, RunNotFound, Runs

_AGE = re.compile(r"(\d+)([smhd])")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _ago(text: str | None) -> datetime | None:
    """`90m`, `24h`, `7d` before now, or an ISO-8601 time."""
    if not text:
        return None
    m = _AGE.fullmatch(text)
    if m:
        return datetime.now(UTC) - timedelta(**{_UNIT[m[2]]: int(m[1])})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: an age like 90m, 24h, 7d or an ISO-8601 time"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _matches(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        path, sep, value = pair.partition("=")
        if not sep or not path:
            raise click.BadParameter(f"{pair!r}: PATH=VALUE, e.g. data.media_id=m-1")
        out[path] = value
    return out


def _runs(aws: Aws) -> Runs:
    functions = workflow_functions(aws)
    if not functions:
        raise click.ClickException(
            f"no workflows found at {aws.where}: deploy the stateless stack (its outputs name them)"
        )
    records = RunRecords(aws.client("dynamodb"), naming.coordination_table(aws.env))
    return Runs(aws.client("lambda"), functions, failure_handler_functions(aws), records)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _table(runs: Sequence[Run]) -> None:
    click.echo(f"{'STARTED':<20} {'STATUS':<10} {'WORKFLOW':<20} NAME")
    for run in runs:
        click.echo(f"{_when(run.started):<20} {run.status:<10} {run.workflow:<20} {run.name}")


_filters = [
    click.option("--workflow", "workflows", multiple=True, help="Only this workflow (repeatable)."),
    click.option(
        "--status",
        "statuses",
        multiple=True,
        type=click.Choice(STATUSES),
        help="Only this status (repeatable).",
    ),
    click.option("--since", help="Started after: 90m, 24h, 7d or an ISO-8601 time."),
    click.option("--until", help="Started before: an age or an ISO-8601 time."),
    click.option("--event-id", help="The run of this event id."),
    click.option("--correlation-id", help="Every run one action started (its correlation id)."),
    click.option(
        "--match",
        "match",
        multiple=True,
        help="PATH=VALUE on the run's event, e.g. data.media_id=m-1 (repeatable).",
    ),
    click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000)),
    click.option(
        "--recorded",
        is_flag=True,
        help="Read the failed-run records (kept 400 days) instead of Lambda's history: failed, "
        "timed-out and cancelled runs, also those whose history has expired.",
    ),
]


def filters(fn: Any) -> Any:
    for option in reversed(_filters):
        fn = option(fn)
    return fn


def _select(runs: Runs, options: dict[str, Any]) -> list[Run]:
    window = dict(
        workflows=options["workflows"] or None,
        since=_ago(options["since"]),
        until=_ago(options["until"]),
        limit=options["limit"],
    )
    try:
        if options["recorded"]:
            statuses = set(options["statuses"] or ())
            found = [r for r in runs.recorded(**window) if not statuses or r.status in statuses]
        else:
            found = runs.list(statuses=options["statuses"] or None, **window)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return runs.matching(
        found,
        event_id=options["event_id"],
        correlation_id=options["correlation_id"],
        match=_matches(options["match"]),
    )


@click.group()
def runs() -> None:
    """Runs of the workflows: list, show every step, cancel, replay."""


@runs.command("list")
@filters
@click.option("--json", "as_json", is_flag=True, help="One JSON document per run.")
@click.pass_obj
@friendly_errors
def list_(aws: Aws, as_json: bool, **options: Any) -> None:
    """Runs, newest first."""
    found = _select(_runs(aws), options)
    if as_json:
        for run in found:
            click.echo(json.dumps(run.to_dict(), default=str, sort_keys=True))
        return
    if not found:
        click.echo("no runs match")
        return
    _table(found)


def _find(runs: Runs, ref: str, workflow: str | None) -> Run:
    try:
        return runs.find(ref, workflow=workflow)
    except RunNotFound as exc:
        raise click.ClickException(str(exc)) from None


@runs.command()
@click.argument("run")
@click.option("--workflow", help="Look for the run in this workflow only.")
@click.option("--json", "as_json", is_flag=True, help="The run and its operations as JSON.")
@click.pass_obj
@friendly_errors
def show(aws: Aws, run: str, workflow: str | None, as_json: bool) -> None:
    """A run (ARN, execution name or event id): every step's input, output or error."""
    api = _runs(aws)
    detail = api.show(_find(api, run, workflow).arn)
    if as_json:
        click.echo(json.dumps(detail.to_dict(), default=str, sort_keys=True, indent=2))
        return
    r = detail.run
    click.secho(f"run {r.name}  ({r.workflow}, {r.status})", bold=True)
    click.echo(f"  arn        {r.arn}")
    click.echo(f"  started    {_when(r.started)}   ended {_when(r.ended)}")
    if r.replay_of:
        click.echo(f"  replays    {r.replay_of}")
    for replay in detail.replays:
        click.echo(f"  replayed   {replay.name} ({replay.status})")
    if r.error:
        click.echo(f"  error      {r.error.get('type')}: {r.error.get('message')}")
    click.echo(f"  input      {json.dumps(r.input, sort_keys=True, default=str)}")
    click.echo("")
    for op in detail.operations:
        took = f"{(op.ended - op.started).total_seconds():.1f}s" if op.ended and op.started else ""
        click.secho(
            f"  {op.kind:<13} {op.name:<32} {op.status:<10} attempt {op.attempt}  {took}",
            bold=op.status in ("Failed", "TimedOut"),
        )
        for key, value in op.details.items():
            click.echo(f"      {key}: {value}")
        if op.input is not None:
            click.echo(f"      input:  {json.dumps(op.input, sort_keys=True, default=str)}")
        if op.output is not None:
            click.echo(f"      output: {json.dumps(op.output, sort_keys=True, default=str)}")
        if op.error:
            click.echo(f"      error:  {op.error.get('type')}: {op.error.get('message')}")
            for line in op.error.get("stack_trace") or []:
                click.echo(f"        {line}")
    event = r.event
    click.echo("")
    click.secho("logs (CloudWatch Logs Insights, log groups starting with):", bold=True)
    for group in log_group_prefixes(aws.env):
        click.echo(f"  {group}")
    query = LOGS_QUERY.format(id=event.correlation_id if event else r.name)
    click.echo("\n".join(f"  {line}" for line in query.splitlines()))


def _bulk(found: list[Run], verb: str, dry_run: bool, yes: bool) -> bool:
    """Print what would be acted on; True when the operator confirmed it."""
    if not found:
        click.echo("no runs match")
        return False
    _table(found)
    if dry_run:
        click.echo(f"dry run: {len(found)} run(s) would be {verb}")
        return False
    return yes or click.confirm(f"{verb} {len(found)} run(s)?", default=False)


@runs.command()
@click.argument("run", required=False)
@filters
@click.option("--reason", default="cancelled by an operator", show_default=True)
@click.option("--dry-run", is_flag=True, help="Show the runs, cancel nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
@friendly_errors
def cancel(
    aws: Aws, run: str | None, reason: str, dry_run: bool, yes: bool, **options: Any
) -> None:
    """Stop one run, or every running run the filters match."""
    api = _runs(aws)
    if run:
        found = [_find(api, run, (options["workflows"] or [None])[0])]
    else:
        if not (options["workflows"] or options["match"] or options["correlation_id"]):
            raise click.UsageError("name a RUN, or select runs with --workflow/--match")
        options["statuses"] = ("RUNNING",)
        found = _select(api, options)
    if not _bulk(found, "cancelled", dry_run, yes or bool(run)):
        return
    with click.progressbar(found, label="cancelling") as bar:
        stopped = [api.cancel(r.arn, reason=reason) for r in bar]
    for r in stopped:
        click.echo(f"{r.name}: {r.status}")


@runs.command()
@click.argument("run", required=False)
@filters
@click.option("--again", is_flag=True, help="Start a further replay even if one was started.")
@click.option("--dry-run", is_flag=True, help="Show the runs, replay nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
@friendly_errors
def replay(
    aws: Aws, run: str | None, again: bool, dry_run: bool, yes: bool, **options: Any
) -> None:
    """Re-run one run with the same input, or every failed run the filters match."""
    api = _runs(aws)
    if run:
        found = [_find(api, run, (options["workflows"] or [None])[0])]
    else:
        options["statuses"] = options["statuses"] or ("FAILED", "TIMED_OUT")
        found = _select(api, options)
    if not _bulk(found, "replayed", dry_run, yes or bool(run)):
        return
    with click.progressbar(found, label="replaying") as bar:
        started = [(r, api.replay(r, again=again)) for r in bar]
    for original, new in started:
        click.echo(f"{original.name} -> {new.name} ({new.status})")
