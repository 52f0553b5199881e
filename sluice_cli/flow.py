"""`sluice flow waiting`: the events flow control holds back (docs/flow-control.md), read from
the coordination table: for which workflow, control and key, at which priority, since when."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import click

from sluice import naming
from sluice.flowstate import waiting as held
from sluice_cli.aws import Aws, friendly_errors


@click.group()
def flow() -> None:
    """Flow control: what waits to start."""


@flow.command()
@click.option("--workflow", help="Only this workflow's events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per waiting event.")
@click.pass_obj
@friendly_errors
def waiting(aws: Aws, workflow: str | None, as_json: bool) -> None:
    """The events a throttle, a debounce or a batch holds back, by workflow, key and arrival (for a
    debounce: its latest event, since the first of its quiet period)."""
    table = naming.coordination_table(aws.env)
    found = held(aws.client("dynamodb"), table, workflow)
    now = time.time()
    if as_json:
        for w in found:
            click.echo(
                json.dumps(
                    {
                        "workflow": w.workflow,
                        "control": w.control,
                        "key": w.key,
                        "event_id": w.event_id,
                        "priority": w.priority,
                        "since": _iso(w.arrival_ms),
                        "waited_s": round(now - w.arrival_ms / 1000, 3),
                    },
                    sort_keys=True,
                )
            )
        return
    if not found:
        click.echo(f"nothing waits in {table}" + (f" for {workflow}" if workflow else ""))
        return
    click.echo(
        f"{'WORKFLOW':<20} {'CONTROL':<9} {'KEY':<24} {'EVENT':<34} {'PRIO':>4}  "
        f"{'SINCE':<24} WAITED"
    )
    for w in found:
        click.echo(
            f"{w.workflow:<20} {w.control:<9} {w.key:<24} {w.event_id:<34} {w.priority:>4}  "
            f"{_iso(w.arrival_ms):<24} {int(now - w.arrival_ms / 1000)} s"
        )
    click.echo(f"{len(found)} waiting")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
