"""Where flow control keeps what waits (docs/flow-control.md): the coordination table's items
that the worker writes (adapters/flow.py) and the operator reads (`sluice flow waiting`).

One partition per control and key value, `flow#<workflow>#<control>#<key>`. What waits there,
each item with the event, its priority and since when (`arrival_ms`):

- `q#<event id>`: an event a throttle holds back (since its arrival);
- `open`: a debounce's latest event (since the first event of its quiet period);
- `ready#<event id>`: a debounced event whose quiet period ended, its start under way;
- `m#<event id>`: an event waiting in a batch (the batch itself is `batch`, and
  `done#<batch id>` one whose run is being started).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PREFIX = "flow#"
WAITER = "q#"
OPEN = "open"
READY = "ready#"
MEMBER = "m#"


def partition(workflow: str, control: str, key: str) -> str:
    return f"{PREFIX}{workflow}#{control}#{key}"


@dataclass(frozen=True)
class Waiter:
    """An event held back: where, which, how urgent, since when."""

    pk: str
    workflow: str
    key: str
    event_id: str
    event: str  # the event's JSON
    priority: int
    arrival_ms: int

    @property
    def sk(self) -> str:
        return WAITER + self.event_id

    @property
    def control(self) -> str:
        """`throttle`, `debounce` or `batch` (workflow names and controls hold no `#`)."""
        return self.pk[len(PREFIX) :].split("#", 2)[1]


def waiter_from_item(item: Mapping[str, Any]) -> Waiter:
    return Waiter(
        pk=item["pk"]["S"],
        workflow=item["workflow"]["S"],
        key=item["key"]["S"],
        event_id=item["event_id"]["S"],
        event=item["event"]["S"],
        priority=int(item["priority"]["N"]),
        arrival_ms=int(item["arrival_ms"]["N"]),
    )


def waiting(client: Any, table: str, workflow: str | None = None) -> list[Waiter]:
    """Every event a throttle or a debounce holds back, by workflow, key and arrival (a scan of
    the table: an operator's question, never the worker's hot path)."""
    out: list[Waiter] = []
    prefix = PREFIX if workflow is None else f"{PREFIX}{workflow}#"
    kwargs: dict[str, Any] = {
        "TableName": table,
        "FilterExpression": "begins_with(pk, :p) AND attribute_exists(event) AND "
        "(begins_with(sk, :q) OR sk = :o OR begins_with(sk, :r) OR begins_with(sk, :m))",
        "ExpressionAttributeValues": {
            ":p": {"S": prefix},
            ":q": {"S": WAITER},
            ":o": {"S": OPEN},
            ":r": {"S": READY},
            ":m": {"S": MEMBER},
        },
    }
    for page in client.get_paginator("scan").paginate(**kwargs):
        out.extend(waiter_from_item(item) for item in page.get("Items", []))
    return sorted(out, key=lambda w: (w.workflow, w.key, w.arrival_ms, w.event_id))
