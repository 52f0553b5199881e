"""The end of a local run: the summary it prints and the JSON report (`--report`) tests read."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devtools.local.run import Pipeline
    from devtools.local.view import Snapshot


def report(p: Pipeline, snap: Snapshot, upload: str) -> dict[str, Any]:
    return {
        "upload": upload,
        "complete": snap.complete,
        "executions": [
            {k: e[k] for k in ("workflow", "name", "status")}
            | {"operations": list(dict.fromkeys(n for n, _ in e["operations"]))}
            for e in snap.executions
        ],
        "outputs": snap.outputs,
        "job": json.loads(json.dumps(snap.job, default=_number)) if snap.job else None,
        "events_handled": snap.events_handled,
        "dead_letters": snap.dead_letters,
        "scheduler": None
        if snap.tokens is None
        else {"tokens": {t: list(c) for t, c in snap.tokens.items()}, "ticks": snap.ticks},
        "not_run": p.missing,
    }


def _number(value: Any) -> Any:
    """DynamoDB's Decimals as JSON numbers."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def summary(snap: Snapshot, p: Pipeline) -> str:
    lines = ["", "Sluice local run: " + ("COMPLETE" if snap.complete else "NOT COMPLETE")]
    for e in snap.executions:
        lines.append(f"  {e['workflow']:<18} {e['status']:<10} {e['name']}")
    for name, keys in snap.outputs.items():
        lines.append(f"  {name:<18} {len(keys)} object(s) " + (keys[0] if keys else ""))
    for task, counts in (snap.tokens or {}).items():
        lines.append(f"  scheduler {task:<8} tokens hatchery/processor {counts[0]}/{counts[1]}")
    for note in p.missing:
        lines.append(f"  not run: {note}")
    return "\n".join(lines)
