"""Concurrency slots: a counting semaphore with a FIFO queue in the coordination table.

One partition per limited scope (`slot#<workflow>` or `slot#<workflow>#key#<value>`):

- the counter item (sk `counter`): `holders` = run -> {arn, until, since} and a `version`;
- one waiter item per queued run (sk `w#<arrival ms, zero padded>#<run>`, with its priority),
  so a query reads the queue back in arrival order.

`try_acquire` takes a slot only when fewer than `limit` live holders exist and the run is among
the first `limit - holders` waiters, ranked by the workflow's declared priority with aging
(`sluice.workflows.rank`, the throttle's rule) or, without one, in arrival order; it is one transaction (delete the waiter, replace the holder
map on the counter's version), so two racing runs cannot both take the last slot. Holders whose
lease ran out, or whose durable execution `is_running` says is no longer running, are pruned
(the slot of a killed run is reclaimed); so are waiters ahead that stopped polling and whose
execution is gone. See docs/concurrency.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from adapters.errors import code
from sluice import naming
from sluice.settings import SLOT_CHECK_AFTER_S
from sluice.workflows import Priority, rank

COUNTER = "counter"
WAITER = "w#"
TTL_ATTRIBUTE = naming.TTL_ATTRIBUTE
ARRIVAL_DIGITS = 15  # epoch milliseconds, zero padded: sorts as numbers do
# Waiter items outlive any run (a durable execution lasts at most a year): TTL cleans leftovers.
WAITER_TTL_S = 400 * 86_400

IsRunning = Callable[[str], bool]
RACE_RETRIES = 3


def scope(workflow: str, key: str | None = None) -> str:
    """The partition of a limit: the workflow's, or one key value's within it."""
    return f"slot#{workflow}" if key is None else f"slot#{workflow}#key#{key}"


def waiter_sk(arrival_ms: int, run: str) -> str:
    return f"{WAITER}{arrival_ms:0{ARRIVAL_DIGITS}d}#{run}"


@dataclass(frozen=True)
class Holder:
    arn: str
    until: int  # lease expiry (epoch seconds): the backstop when nobody can say it is gone
    since: int  # when it took the slot (epoch seconds)


def _holders(item: Mapping[str, Any]) -> dict[str, Holder]:
    raw = item.get("holders", {}).get("M", {})
    return {
        run: Holder(
            arn=h["M"]["arn"]["S"], until=int(h["M"]["until"]["N"]), since=int(h["M"]["since"]["N"])
        )
        for run, h in raw.items()
    }


def _holders_value(holders: Mapping[str, Holder]) -> dict[str, Any]:
    return {
        "M": {
            run: {
                "M": {
                    "arn": {"S": h.arn},
                    "until": {"N": str(h.until)},
                    "since": {"N": str(h.since)},
                }
            }
            for run, h in holders.items()
        }
    }


class Slots:
    """The semaphores of table `name` (a DynamoDB client: boto3's or a stub)."""

    def __init__(
        self,
        client: Any,
        name: str,
        *,
        check_after_s: int = SLOT_CHECK_AFTER_S,
        stale_waiter_s: int = 120,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Holders younger than check_after_s are not asked about (GetDurableExecution costs a
        # call); waiters that have not polled for stale_waiter_s are checked when they block.
        self.client, self.name = client, name
        self.check_after_s, self.stale_waiter_s, self.clock = check_after_s, stale_waiter_s, clock

    # -- queue -----------------------------------------------------------------------------

    def enqueue(
        self, scope: str, run: str, *, arn: str, arrival_ms: int, priority: int = 0
    ) -> None:
        """Queue `run` at `priority` (idempotent: the same run and arrival is the same waiter
        item)."""
        now = int(self.clock())
        self.client.put_item(
            TableName=self.name,
            Item={
                "pk": {"S": scope},
                "sk": {"S": waiter_sk(arrival_ms, run)},
                "run": {"S": run},
                "arn": {"S": arn},
                "seen": {"N": str(now)},
                "priority": {"N": str(priority)},
                TTL_ATTRIBUTE: {"N": str(now + WAITER_TTL_S)},
            },
        )

    def waiters(self, scope: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """The queue of `scope` in arrival order: [{sk, run, arn, seen, priority, arrival_ms}]."""
        out: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :w)",
            "ExpressionAttributeValues": {":pk": {"S": scope}, ":w": {"S": WAITER}},
            "ConsistentRead": True,
        }
        while True:
            if limit is not None:
                kwargs["Limit"] = limit - len(out)
            page = self.client.query(**kwargs)
            for item in page.get("Items", []):
                out.append(
                    {
                        "sk": item["sk"]["S"],
                        "run": item["run"]["S"],
                        "arn": item.get("arn", {}).get("S", ""),
                        "seen": int(item.get("seen", {}).get("N", "0")),
                        "priority": int(item.get("priority", {}).get("N", "0")),
                        "arrival_ms": int(item["sk"]["S"][len(WAITER) :].split("#", 1)[0]),
                    }
                )
            if "LastEvaluatedKey" not in page or (limit is not None and len(out) >= limit):
                return out
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # -- counter -----------------------------------------------------------------------------

    def holders(self, scope: str) -> tuple[dict[str, Holder], int]:
        """The holders of `scope` and the counter's version (0: no counter yet)."""
        item = self.client.get_item(
            TableName=self.name,
            Key={"pk": {"S": scope}, "sk": {"S": COUNTER}},
            ConsistentRead=True,
        ).get("Item")
        if item is None:
            return {}, 0
        return _holders(item), int(item["version"]["N"])

    def try_acquire(
        self,
        scope: str,
        run: str,
        *,
        arn: str,
        arrival_ms: int,
        limit: int,
        lease_s: int,
        is_running: IsRunning,
        priority: int = 0,
        order: Priority | None = None,
    ) -> bool:
        """Take a slot of `scope` for `run` (queued at `priority`) if one is free and its turn
        has come: it ranks among the first free places by `order`, the workflow's declared
        priority (None: arrival order). True if it holds one (also when it already did: a
        retried poll). A transaction lost to a racing run is tried again at once, up to
        `RACE_RETRIES` times."""
        for _ in range(RACE_RETRIES):
            outcome = self._try_acquire(
                scope,
                run,
                arn=arn,
                arrival_ms=arrival_ms,
                limit=limit,
                lease_s=lease_s,
                is_running=is_running,
                priority=priority,
                order=order,
            )
            if outcome is not None:
                return outcome
        return False

    def _try_acquire(
        self,
        scope: str,
        run: str,
        *,
        arn: str,
        arrival_ms: int,
        limit: int,
        lease_s: int,
        is_running: IsRunning,
        priority: int,
        order: Priority | None,
    ) -> bool | None:
        now = int(self.clock())
        holders, version = self.holders(scope)
        if run in holders:
            return True
        live = {
            r: h
            for r, h in holders.items()
            if h.until > now and (now - h.since < self.check_after_s or is_running(h.arn))
        }
        free = limit - len(live)

        def wait() -> bool:  # not its turn: note that it still waits
            self._seen(scope, run, arn=arn, arrival_ms=arrival_ms, priority=priority, now=now)
            return False

        if free <= 0:
            return wait()
        mine = waiter_sk(arrival_ms, run)
        queue = self._first(scope, free, order)
        if mine not in {w["sk"] for w in queue}:
            ahead = self._dead_waiters_ahead(scope, queue, mine, now, is_running)
            if ahead is None:  # my turn has not come
                return wait()
            queue = self._first(scope, free, order)
            if mine not in {w["sk"] for w in queue}:
                return wait()
        taken = {**live, run: Holder(arn=arn, until=now + lease_s, since=now)}
        counter_key = {"pk": {"S": scope}, "sk": {"S": COUNTER}}
        if version == 0:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        else:
            condition = {
                "ConditionExpression": "version = :v",
                "ExpressionAttributeValues": {":v": {"N": str(version)}},
            }
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Delete": {
                            "TableName": self.name,
                            "Key": {"pk": {"S": scope}, "sk": {"S": mine}},
                            "ConditionExpression": "attribute_exists(pk)",
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.name,
                            "Item": {
                                **counter_key,
                                "holders": _holders_value(taken),
                                "version": {"N": str(version + 1)},
                            },
                            **condition,
                        }
                    },
                ]
            )
        except ClientError as exc:
            if code(exc) not in ("TransactionCanceledException", "TransactionConflictException"):
                raise
            return None  # another run changed the counter first: read it again
        return True

    def _first(self, scope: str, places: int, order: Priority | None) -> list[dict[str, Any]]:
        """The `places` best-ranked waiters of `scope`. In arrival order only those are read;
        by priority the whole queue is (aging changes the order as time passes)."""
        if order is None:
            return self.waiters(scope, limit=places)
        now_ms = int(self.clock() * 1000)
        return sorted(
            self.waiters(scope),
            key=lambda w: rank(order, w["priority"], w["arrival_ms"], now_ms, w["run"]),
        )[:places]

    def _dead_waiters_ahead(
        self,
        scope: str,
        queue: list[dict[str, Any]],
        mine: str,
        now: int,
        is_running: IsRunning,
    ) -> list[str] | None:
        """Remove waiters ahead of `mine` in the window that stopped polling and whose execution
        is gone; the removed runs, or None when every one of them is alive (wait your turn)."""
        removed = []
        for w in queue:
            if w["sk"] == mine:
                break
            if now - w["seen"] >= self.stale_waiter_s and w["arn"] and not is_running(w["arn"]):
                self.client.delete_item(
                    TableName=self.name, Key={"pk": {"S": scope}, "sk": {"S": w["sk"]}}
                )
                removed.append(w["run"])
        return removed or None

    def _seen(
        self, scope: str, run: str, *, arn: str, arrival_ms: int, priority: int, now: int
    ) -> None:
        """Note that `run` still waits (and queue it again if its waiter item is gone)."""
        try:
            self.client.update_item(
                TableName=self.name,
                Key={"pk": {"S": scope}, "sk": {"S": waiter_sk(arrival_ms, run)}},
                UpdateExpression="SET seen = :now",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":now": {"N": str(now)}},
            )
        except ClientError as exc:
            if code(exc) != "ConditionalCheckFailedException":
                raise
            self.enqueue(scope, run, arn=arn, arrival_ms=arrival_ms, priority=priority)

    def release(self, scope: str, run: str, *, arrival_ms: int | None = None) -> bool:
        """Give back `run`'s slot of `scope` (idempotent) and leave the queue; True if it held
        one."""
        if arrival_ms is not None:
            self.client.delete_item(
                TableName=self.name,
                Key={"pk": {"S": scope}, "sk": {"S": waiter_sk(arrival_ms, run)}},
            )
        try:
            self.client.update_item(
                TableName=self.name,
                Key={"pk": {"S": scope}, "sk": {"S": COUNTER}},
                UpdateExpression="REMOVE holders.#run SET version = version + :one",
                ConditionExpression="attribute_exists(holders.#run)",
                ExpressionAttributeNames={"#run": run},
                ExpressionAttributeValues={":one": {"N": "1"}},
            )
        except ClientError as exc:
            if code(exc) != "ConditionalCheckFailedException":
                raise
            return False
        return True
