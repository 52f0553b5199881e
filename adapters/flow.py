"""Flow control state in the coordination table (docs/flow-control.md).

One partition per control and key value (sluice.flowstate: `flow#<workflow>#<control>#<key>`):

- `window`: the current fixed window of a rate limit or throttle: its `start` (epoch seconds)
  and the `ids` (a string set) of the events admitted in it. Admitting is one conditional update
  (room left, or the id already in), so racing workers never admit more than the limit and a
  redelivered event is admitted again without counting twice;
- `q#<event id>`: an event a throttle holds back: the event, its priority and arrival time;
- `wake`: when the last wake-up message for the partition was sent for (`due`);
- `key`: an idempotency key's holder (`event_id`) until `expires_at`;
- `open` and `ready#<event id>`: a debounce's latest event, and one whose quiet period has
  passed and whose start is under way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from adapters.errors import code
from sluice import naming
from sluice.flowstate import WAITER, Waiter, waiter_from_item, waiting

WINDOW, WAKE, KEY, OPEN = "window", "wake", "key", "open"
READY = "ready#"
TTL_ATTRIBUTE = naming.TTL_ATTRIBUTE
# Items outlive what they hold by this long before DynamoDB's TTL removes them.
KEEP_S = 86_400
RACE_RETRIES = 3


def _conditional(exc: ClientError) -> bool:
    return code(exc) in ("ConditionalCheckFailedException", "TransactionCanceledException")


@dataclass(frozen=True)
class Partition:
    """What one query of a partition read: the window, the wake, the waiters, a debounce."""

    window_start: int = -1
    admitted: frozenset[str] = frozenset()
    wake_due: int = 0
    waiters: tuple[Waiter, ...] = ()
    open: Mapping[str, Any] | None = None
    ready: tuple[Mapping[str, Any], ...] = ()

    def used(self, window_start: int) -> int:
        return len(self.admitted) if self.window_start == window_start else 0


class FlowStore:
    """The flow control items of table `name` (a DynamoDB client: boto3's or a stub)."""

    def __init__(self, client: Any, name: str, *, clock: Callable[[], float] = time.time):
        self.client, self.name, self.clock = client, name, clock

    def _key(self, pk: str, sk: str) -> dict[str, Any]:
        return {"pk": {"S": pk}, "sk": {"S": sk}}

    # -- idempotency --------------------------------------------------------------------------

    def claim(self, pk: str, event_id: str, *, key: str, window_s: int) -> str | None:
        """Hold idempotency key `pk` for `event_id` for `window_s`; None when it now holds it
        (also when it already did: a redelivery), else the event id that holds it."""
        now = int(self.clock())
        try:
            self.client.put_item(
                TableName=self.name,
                Item={
                    **self._key(pk, KEY),
                    "event_id": {"S": event_id},
                    "key": {"S": key},
                    "until": {"N": str(now + window_s)},
                    TTL_ATTRIBUTE: {"N": str(now + window_s + KEEP_S)},
                },
                # DynamoDB's TTL removes an item up to days late: `until` is what counts.
                ConditionExpression="attribute_not_exists(pk) OR #u <= :now OR event_id = :id",
                ExpressionAttributeNames={"#u": "until"},
                ExpressionAttributeValues={":now": {"N": str(now)}, ":id": {"S": event_id}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _conditional(exc):
                raise
            return str(exc.response.get("Item", {}).get("event_id", {}).get("S", "?"))
        return None

    # -- windows (rate limit, throttle) ----------------------------------------------------------

    def admit(
        self, pk: str, event_id: str, *, limit: int, window_start: int, period_s: int
    ) -> bool:
        """Count `event_id` in the window starting at `window_start` if it has room (or already
        counts it); whether it does now."""
        ttl = {"N": str(window_start + period_s + KEEP_S)}
        for _ in range(RACE_RETRIES):
            try:
                self.client.update_item(
                    TableName=self.name,
                    Key=self._key(pk, WINDOW),
                    UpdateExpression="ADD ids :ids SET #ttl = :ttl",
                    ConditionExpression="#s = :s AND (size(ids) < :n OR contains(ids, :id))",
                    ExpressionAttributeNames={"#s": "start", "#ttl": TTL_ATTRIBUTE},
                    ExpressionAttributeValues={
                        ":ids": {"SS": [event_id]},
                        ":id": {"S": event_id},
                        ":s": {"N": str(window_start)},
                        ":n": {"N": str(limit)},
                        ":ttl": ttl,
                    },
                )
                return True
            except ClientError as exc:
                if not _conditional(exc):
                    raise
            try:  # no window yet, or an older one: this window begins with this event
                self.client.put_item(
                    TableName=self.name,
                    Item={
                        **self._key(pk, WINDOW),
                        "start": {"N": str(window_start)},
                        "ids": {"SS": [event_id]},
                        TTL_ATTRIBUTE: ttl,
                    },
                    ConditionExpression="attribute_not_exists(pk) OR #s < :s",
                    ExpressionAttributeNames={"#s": "start"},
                    ExpressionAttributeValues={":s": {"N": str(window_start)}},
                )
                return True
            except ClientError as exc:
                if not _conditional(exc):
                    raise
            # The window is this one and full, or a racing worker has just begun it: read again.
        return False

    # -- a partition --------------------------------------------------------------------------

    def read(self, pk: str) -> Partition:
        """Every item of partition `pk` (one query, consistent)."""
        fields: dict[str, Any] = {"waiters": [], "ready": []}
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ConsistentRead": True,
        }
        while True:
            page = self.client.query(**kwargs)
            for item in page.get("Items", []):
                sk = item["sk"]["S"]
                if sk == WINDOW:
                    fields["window_start"] = int(item["start"]["N"])
                    fields["admitted"] = frozenset(item.get("ids", {}).get("SS", []))
                elif sk == WAKE:
                    fields["wake_due"] = int(item["due"]["N"])
                elif sk.startswith(WAITER):
                    fields["waiters"].append(waiter_from_item(item))
                elif sk == OPEN:
                    fields["open"] = item
                elif sk.startswith(READY):
                    fields["ready"].append(item)
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        fields["waiters"] = tuple(fields["waiters"])
        fields["ready"] = tuple(fields["ready"])
        return Partition(**fields)

    def remove(self, pk: str, sk: str) -> None:
        self.client.delete_item(TableName=self.name, Key=self._key(pk, sk))

    # -- throttle -------------------------------------------------------------------------------

    def hold(self, waiter: Waiter) -> None:
        """Record `waiter` (idempotent: a redelivered event keeps its first arrival)."""
        try:
            self.client.put_item(
                TableName=self.name,
                Item={
                    **self._key(waiter.pk, waiter.sk),
                    "workflow": {"S": waiter.workflow},
                    "key": {"S": waiter.key},
                    "event_id": {"S": waiter.event_id},
                    "event": {"S": waiter.event},
                    "priority": {"N": str(waiter.priority)},
                    "arrival_ms": {"N": str(waiter.arrival_ms)},
                    TTL_ATTRIBUTE: {"N": str(waiter.arrival_ms // 1000 + 400 * 86_400)},
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if not _conditional(exc):
                raise

    def woken(self, pk: str, due: int) -> None:
        """Note that a wake-up message for `pk` was sent for `due`."""
        self.client.put_item(
            TableName=self.name,
            Item={
                **self._key(pk, WAKE),
                "due": {"N": str(due)},
                TTL_ATTRIBUTE: {"N": str(due + KEEP_S)},
            },
        )

    def waiting(self, workflow: str | None = None) -> list[Waiter]:
        """Every event a throttle holds back (`sluice flow waiting`'s question)."""
        return waiting(self.client, self.name, workflow)
