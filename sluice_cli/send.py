"""`sluice send NAME --data JSON [--id ID]`: put one event on the events queue."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from sluice.catalog import EVENTS, ROUTES, ROUTES_KNOWN, is_known
from sluice.envelope import Event
from sluice.errors import PoisonMessage
from sluice.producer import send_event, validate
from sluice_cli.aws import Aws, friendly_errors


def parse_data(raw: str) -> dict[str, Any]:
    """`--data`: a JSON object, or `@path` to a file holding one."""
    if raw.startswith("@"):
        path = Path(raw[1:])
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
            """(quote it for the shell: --data '{"key": "value"}')"""
        ) from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"must be a JSON object, got {type(data).__name__}")
    return data


@click.command()
@click.argument("name")
@click.option("--data", "raw_data", required=True, help="The event's data: a JSON object or @file.")
@click.option("--id", "event_id", help="Event id (the idempotency key); default: a new one.")
@click.option("--correlation-id", help="Default: the event id.")
@click.option("--dry-run", is_flag=True, help="Validate and print the envelope, send nothing.")
@click.pass_obj
@friendly_errors
def send(
    aws: Aws,
    name: str,
    raw_data: str,
    event_id: str | None,
    correlation_id: str | None,
    dry_run: bool,
) -> None:
    """Validate an event and send it to the events queue (the same id starts one job only)."""
    data = parse_data(raw_data)
    if not is_known(name):
        raise click.BadParameter(
            f"no workflow handles {name!r} (the worker would dead-letter it); "
            f"known events: {', '.join(sorted(ROUTES if ROUTES_KNOWN else EVENTS))}",
            param_hint="NAME",
        )
    fields: dict[str, Any] = {"name": name, "data": data}
    if event_id:
        fields["id"] = event_id
    if correlation_id:
        fields["correlation_id"] = correlation_id
    try:
        # The producer's checks are the worker's: what passes here is not dead-lettered there.
        event = validate(Event(**fields))
    except PoisonMessage as exc:
        raise click.BadParameter(f"{exc} ({exc.code})") from None
    if dry_run:
        click.echo(event.to_json())
        return
    url = aws.queue_url("events")
    message_id = send_event(aws.client("sqs"), url, event)
    click.echo(f"sent {name} id={event.id} to {url.rsplit('/', 1)[-1]} (message {message_id})")
    click.echo(f"follow it: sluice --env {aws.env} jobs show {event.id}")
