"""Flow control state in the coordination table (docs/flow-control.md).

One partition per control and key value (sluice.flowstate: `flow#<workflow>#<control>#<key>`):

- `window`: the current fixed window of a rate limit or throttle: its `start` (epoch seconds),
  the `ids` (a string set) of the events admitted in it and, for a throttle, how many events
  are `waiting` (kept with the `q#` items in one transaction). Admitting is one conditional update
  (room left, or the id already in), so racing workers never admit more than the limit and a
  redelivered event is admitted again without counting twice;
- `q#<event id>`: an event a throttle holds back: the event, its priority and arrival time;
- `wake`: when the last wake-up message for the partition was sent for (`due`);
- `key`: an idempotency key's holder (`event_id`) until `until`;
- `open`: a debounce's latest event (by its `ts`), since `arrival_ms` (the first of its quiet
  period), last changed at `last_ms`; `ready#<event id>`: one being started;
- `batch`: the open batch (`gen`: the id of its first event, `first_ms`, the member `ids`),
  `m#<event id>`: each member, `done#<batch id>`: a closed batch (its `ids`) being started.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from adapters.errors import code
from sluice import naming
from sluice.flowstate import MEMBER, OPEN, READY, WAITER, Waiter, waiter_from_item, waiting

WINDOW, WAKE, KEY, BATCH, DONE = "window", "wake", "key", "batch", "done#"
JOINED, ALREADY, FULL = "joined", "already", "full"
TTL_ATTRIBUTE = naming.TTL_ATTRIBUTE
# Items outlive what they hold by this long before DynamoDB's TTL removes them.
KEEP_S = 86_400
RACE_RETRIES = 3
# A held event's item, and its window's, outlive any wait (DynamoDB's TTL cleans up leftovers).
WAITER_TTL_S = 400 * 86_400


def _conditional(exc: ClientError) -> bool:
    return code(exc) in ("ConditionalCheckFailedException", "TransactionCanceledException")


@dataclass(frozen=True)
class Partition:
    """A throttle's window (its start, the events it admitted, how many wait) and its wake-up."""

    window_start: int = -1
    admitted: frozenset[str] = frozenset()
    waiting: int = 0
    wake_due: int = 0

    def used(self, window_start: int) -> int:
        return len(self.admitted) if self.window_start == window_start else 0


def _partition_of(window: dict[str, Any] | None, wake: dict[str, Any] | None = None) -> Partition:
    """A partition from its window item (and an older layout's `wake` item)."""
    fields: dict[str, Any] = {}
    if window is not None:
        fields["window_start"] = int(window.get("start", {}).get("N", "-1"))
        fields["admitted"] = frozenset(window.get("ids", {}).get("SS", []))
        fields["waiting"] = int(window.get("waiting", {}).get("N", "0"))
        fields["wake_due"] = int(window.get("wake_due", {}).get("N", "0"))
    if wake is not None:
        fields["wake_due"] = max(fields.get("wake_due", 0), int(wake["due"]["N"]))
    return Partition(**fields)


@dataclass
class Batches:
    """A batch partition: the open batch (gen, first_ms, ids), the closed ones being started
    (gen, ids), and every member by event id."""

    open: tuple[str, int, frozenset[str]] | None = None
    open_bytes: int = 0  # what the open batch's members add to its run's payload
    done: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    members: dict[str, Waiter] = field(default_factory=dict)


def _waiter_attributes(waiter: Waiter) -> dict[str, Any]:
    return {
        "workflow": {"S": waiter.workflow},
        "key": {"S": waiter.key},
        "event_id": {"S": waiter.event_id},
        "event": {"S": waiter.event},
        "priority": {"N": str(waiter.priority)},
        "arrival_ms": {"N": str(waiter.arrival_ms)},
        TTL_ATTRIBUTE: {"N": str(waiter.arrival_ms // 1000 + WAITER_TTL_S)},
    }


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
        self,
        pk: str,
        event_id: str,
        *,
        limit: int,
        window_start: int,
        period_s: int,
        fresh: bool | None = False,
        unless_waiting: bool = False,
        refused: list[Partition] | None = None,
    ) -> bool:
        """Count `event_id` in the window starting at `window_start` if it has room (or already
        counts it); whether it does now. `fresh`: whether the caller saw an older window (or
        none), so beginning the window is tried first; None: it saw this window begun, so only
        counting is tried. `unless_waiting`: only if no event waits in the partition (the
        window's `waiting` count), so a newcomer never passes a held event. `refused` gets the
        partition as the last refusing write saw it (DynamoDB returns it with the refusal: no
        extra read)."""
        names = {"#s": "start", "#ttl": TTL_ATTRIBUTE}
        values: dict[str, Any] = {
            ":ids": {"SS": [event_id]},
            ":s": {"N": str(window_start)},
            # As long as a held event's: the window also counts the events waiting.
            ":ttl": {"N": str(window_start + WAITER_TTL_S)},
        }
        none_wait = ""
        if unless_waiting:
            none_wait = " AND (attribute_not_exists(waiting) OR waiting <= :zero)"
            values[":zero"] = {"N": "0"}
        count = {  # this window: one more if it has room (or it already counts this event)
            "UpdateExpression": "ADD ids :ids SET #ttl = :ttl",
            "ConditionExpression": "#s = :s AND (size(ids) < :n OR contains(ids, :id))" + none_wait,
            "ExpressionAttributeValues": {
                **values,
                ":id": {"S": event_id},
                ":n": {"N": str(limit)},
            },
        }
        begin = {  # no window yet, or an older one: this window begins with this event
            "UpdateExpression": "SET #s = :s, ids = :ids, #ttl = :ttl",
            "ConditionExpression": "(attribute_not_exists(#s) OR #s < :s)" + none_wait,
            "ExpressionAttributeValues": values,
        }
        tries = [count] if fresh is None else [begin, count] if fresh else [count, begin]
        for _ in range(RACE_RETRIES):
            for request in tries:
                try:
                    self.client.update_item(
                        TableName=self.name,
                        Key=self._key(pk, WINDOW),
                        ExpressionAttributeNames=names,
                        ReturnValuesOnConditionCheckFailure="ALL_OLD",
                        **request,
                    )
                    return True
                except ClientError as exc:
                    if not _conditional(exc):
                        raise
                    seen = _partition_of(exc.response.get("Item"))
                    if refused is not None:
                        refused[:] = [seen]
                    if unless_waiting and seen.waiting > 0:
                        return False  # events wait: the other write is refused as well
            if unless_waiting:
                return False  # full, or events wait: the caller holds this one
            # The window is this one and full, or a racing worker has just begun it: read again.
        return False

    # -- a partition --------------------------------------------------------------------------

    def read(self, pk: str) -> Partition:
        """The window and the last wake-up of partition `pk` (one small query, consistent)."""
        items = {item["sk"]["S"]: item for item in self._query(pk, "w")}  # `window` (`wake`)
        return _partition_of(items.get(WINDOW), items.get(WAKE))

    def held(self, pk: str) -> list[Waiter]:
        """The events held in partition `pk` (consistent)."""
        return [waiter_from_item(item) for item in self._query(pk, WAITER)]

    def _query(self, pk: str, prefix: str | None) -> list[dict[str, Any]]:
        """The items of partition `pk` (whose sort key begins with `prefix`), consistent."""
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ConsistentRead": True,
        }
        if prefix is not None:
            kwargs["KeyConditionExpression"] += " AND begins_with(sk, :p)"
            kwargs["ExpressionAttributeValues"][":p"] = {"S": prefix}
        items: list[dict[str, Any]] = []
        while True:
            page = self.client.query(**kwargs)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # -- throttle -------------------------------------------------------------------------------

    def hold(self, waiter: Waiter) -> None:
        """Record `waiter` and count it in the window's `waiting`, in one transaction
        (idempotent: a redelivered event keeps its first arrival and counts once)."""
        self._transact(
            {
                "Put": {
                    "TableName": self.name,
                    "Item": {**self._key(waiter.pk, waiter.sk), **_waiter_attributes(waiter)},
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            self._waiting(waiter.pk, +1),
        )

    def release(self, waiter: Waiter) -> None:
        """Forget `waiter` (it has started) and uncount it, in one transaction (idempotent)."""
        self._transact(
            {
                "Delete": {
                    "TableName": self.name,
                    "Key": self._key(waiter.pk, waiter.sk),
                    "ConditionExpression": "attribute_exists(pk)",
                }
            },
            self._waiting(waiter.pk, -1),
        )

    def _waiting(self, pk: str, delta: int) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self.name,
                "Key": self._key(pk, WINDOW),
                "UpdateExpression": "ADD waiting :d",
                "ExpressionAttributeValues": {":d": {"N": str(delta)}},
            }
        }

    def _transact(self, first: dict[str, Any], then: dict[str, Any]) -> None:
        """Both or neither; neither (and no error) when `first`'s condition fails."""
        try:
            self.client.transact_write_items(TransactItems=[first, then])
        except ClientError as exc:
            if code(exc) != "TransactionCanceledException":
                raise
            reasons = exc.response.get("CancellationReasons") or [{}]
            if reasons[0].get("Code") != "ConditionalCheckFailed":
                raise

    def woken(self, pk: str, due: int) -> None:
        """Note that a wake-up message for `pk` was sent for `due`: on the window item, so the
        refusal of a later arrival returns it (the `wake` item of an older layout is still
        read)."""
        self.client.update_item(
            TableName=self.name,
            Key=self._key(pk, WINDOW),
            UpdateExpression="SET wake_due = :due",
            ExpressionAttributeValues={":due": {"N": str(due)}},
        )

    # -- debounce -------------------------------------------------------------------------------

    def note(self, waiter: Waiter, *, ts: str, now_ms: int) -> int | None:
        """Make `waiter` its partition's latest event unless one with a later `ts` is there
        (a redelivered older event never replaces a newer one); the quiet period's first
        arrival (ms), or None when a later event was there."""
        try:
            answer = self.client.update_item(
                TableName=self.name,
                Key=self._key(waiter.pk, OPEN),
                UpdateExpression="SET workflow = :w, #k = :k, event_id = :id, event = :e, "
                "priority = :p, ts = :ts, last_ms = :now, "
                "arrival_ms = if_not_exists(arrival_ms, :now), #ttl = :ttl",
                ConditionExpression="attribute_not_exists(ts) OR ts <= :ts",
                ExpressionAttributeNames={"#k": "key", "#ttl": TTL_ATTRIBUTE},
                ExpressionAttributeValues={
                    ":w": {"S": waiter.workflow},
                    ":k": {"S": waiter.key},
                    ":id": {"S": waiter.event_id},
                    ":e": {"S": waiter.event},
                    ":p": {"N": str(waiter.priority)},
                    ":ts": {"S": ts},
                    ":now": {"N": str(now_ms)},
                    ":ttl": {"N": str(now_ms // 1000 + WAITER_TTL_S)},
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not _conditional(exc):
                raise
            return None
        return int(answer["Attributes"]["arrival_ms"]["N"])

    def debounced(self, pk: str) -> tuple[tuple[Waiter, int] | None, list[Waiter]]:
        """((the latest event, its last change in ms) or None, the events being started)."""
        latest, ready = None, []
        for item in self._query(pk, None):
            sk = item["sk"]["S"]
            if sk == OPEN:
                latest = (waiter_from_item(item), int(item["last_ms"]["N"]))
            elif sk.startswith(READY):
                ready.append(waiter_from_item(item))
        return latest, ready

    def close(self, latest: Waiter, last_ms: int) -> bool:
        """End the quiet period of `latest` if nothing arrived since: its `open` item becomes
        `ready#<event id>` (one transaction); whether it did."""
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Delete": {
                            "TableName": self.name,
                            "Key": self._key(latest.pk, OPEN),
                            "ConditionExpression": "event_id = :id AND last_ms = :last",
                            "ExpressionAttributeValues": {
                                ":id": {"S": latest.event_id},
                                ":last": {"N": str(last_ms)},
                            },
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.name,
                            "Item": {
                                **self._key(latest.pk, READY + latest.event_id),
                                **_waiter_attributes(latest),
                            },
                        }
                    },
                ]
            )
        except ClientError as exc:
            if not _conditional(exc):
                raise
            return False
        return True

    def started(self, ready: Waiter) -> None:
        """Forget a debounced event that has started."""
        self.client.delete_item(
            TableName=self.name, Key=self._key(ready.pk, READY + ready.event_id)
        )

    # -- batch ----------------------------------------------------------------------------------

    def join(self, member: Waiter, *, size: int, nbytes: int = 0, room: int | None = None) -> str:
        """Add `member` to its partition's open batch (opening one if none is open), in one
        transaction with its `m#` item: JOINED, ALREADY (a redelivery: it is a member), or FULL
        (the open batch has `size` members, or its members' `bytes` and this member's `nbytes`
        would pass `room`: it is being closed). A first member always joins."""
        fits = "" if room is None else " AND (attribute_not_exists(#b) OR #b <= :room)"
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self.name,
                            "Key": self._key(member.pk, BATCH),
                            "UpdateExpression": "ADD ids :ids, #b :nb "
                            "SET gen = if_not_exists(gen, :id), "
                            "first_ms = if_not_exists(first_ms, :now), #ttl = :ttl",
                            "ConditionExpression": "attribute_not_exists(ids) OR "
                            f"(size(ids) < :n{fits})",
                            "ExpressionAttributeNames": {"#ttl": TTL_ATTRIBUTE, "#b": "bytes"},
                            "ExpressionAttributeValues": {
                                ":ids": {"SS": [member.event_id]},
                                ":id": {"S": member.event_id},
                                ":now": {"N": str(member.arrival_ms)},
                                ":n": {"N": str(size)},
                                ":nb": {"N": str(nbytes)},
                                ":ttl": {"N": str(member.arrival_ms // 1000 + WAITER_TTL_S)},
                                **({} if room is None else {":room": {"N": str(room - nbytes)}}),
                            },
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.name,
                            "Item": {
                                **self._key(member.pk, MEMBER + member.event_id),
                                **_waiter_attributes(member),
                            },
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except ClientError as exc:
            if code(exc) != "TransactionCanceledException":
                raise
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons") or []]
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                return ALREADY
            if reasons and reasons[0] == "ConditionalCheckFailed":
                return FULL
            raise
        return JOINED

    def batches(self, pk: str) -> Batches:
        """The open batch, the closed ones being started and every member (one query)."""
        found = Batches()
        for item in self._query(pk, None):
            sk = item["sk"]["S"]
            if sk == BATCH and "gen" in item:
                found.open = (
                    item["gen"]["S"],
                    int(item["first_ms"]["N"]),
                    frozenset(item.get("ids", {}).get("SS", [])),
                )
                found.open_bytes = int(item.get("bytes", {}).get("N", "0"))
            elif sk.startswith(DONE):
                found.done.append((sk[len(DONE) :], frozenset(item["ids"]["SS"])))
            elif sk.startswith(MEMBER) and "event" in item:  # (not a started one's tombstone)
                found.members[item["event_id"]["S"]] = waiter_from_item(item)
        return found

    def close_batch(self, pk: str, gen: str, ids: frozenset[str]) -> bool:
        """Close open batch `gen` with these members (one transaction); whether it did."""
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Delete": {
                            "TableName": self.name,
                            "Key": self._key(pk, BATCH),
                            "ConditionExpression": "gen = :gen",
                            "ExpressionAttributeValues": {":gen": {"S": gen}},
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.name,
                            "Item": {
                                **self._key(pk, DONE + gen),
                                "ids": {"SS": sorted(ids)},
                                TTL_ATTRIBUTE: {"N": str(int(self.clock()) + WAITER_TTL_S)},
                            },
                        }
                    },
                ]
            )
        except ClientError as exc:
            if not _conditional(exc):
                raise
            return False
        return True

    def forget_batch(self, pk: str, gen: str, ids: frozenset[str]) -> None:
        """A started batch: its record goes, and each member becomes a tombstone for a day (so
        a member's message sent again joins no other batch), in one transaction."""
        until = {"N": str(int(self.clock()) + KEEP_S)}
        self.client.transact_write_items(
            TransactItems=[
                {"Delete": {"TableName": self.name, "Key": self._key(pk, DONE + gen)}},
                *(
                    {
                        "Put": {
                            "TableName": self.name,
                            "Item": {
                                **self._key(pk, MEMBER + i),
                                "started_in": {"S": gen},
                                TTL_ATTRIBUTE: until,
                            },
                        }
                    }
                    for i in sorted(ids)
                ),
            ]
        )

    def waiting(self, workflow: str | None = None) -> list[Waiter]:
        """Every event a throttle holds back (`sluice flow waiting`'s question)."""
        return waiting(self.client, self.name, workflow)
