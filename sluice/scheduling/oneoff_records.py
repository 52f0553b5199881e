"""One-off records in the coordination table: what is scheduled, and the ledger item that runs it.

One partition per scheduler prefix (`pk` = `sched#<prefix>#oneoff`, `sk` = the one-off's id), so
one query lists them. The item is also the one-off's tick-ledger item (the attributes `tick`,
`fence`, `until`, `state`, `holder` of worker/scheduler/ledger.py): it is created `pending` with
tick 0, the runner's claim sets the due time as its tick (admitted once), and a cancel sets the
due time as the tick with state `cancelled`, which no claim admits. So a cancel and a start race
on one conditional write: exactly one of them wins.

`expect` (epoch ms) is when a scheduler process should next see or claim the one-off
(sluice/scheduling/oneoff.py: expect_after); `swept` counts the times the sweep sent it again;
a retry's `attempt` and `retry_at` are kept, so a retry the sweep sends again keeps its delay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from sluice import naming
from sluice.scheduling.oneoff import OneOff

# Records stay readable (`schedules list --all`) for this long after their due time.
RECORD_TTL_S = 30 * 86_400
PENDING = ("pending", "retry", "running")
WAITING = ("pending", "retry")  # not claimed: the states a message of it must still be around for


def partition(prefix: str) -> str:
    return f"sched#{prefix}#oneoff"


def key(prefix: str, oneoff_id: str) -> dict[str, Any]:
    return {"pk": {"S": partition(prefix)}, "sk": {"S": oneoff_id}}


@dataclass(frozen=True)
class Record:
    """A one-off as the table holds it: the one-off, its state and how it ended."""

    oneoff: OneOff
    state: str
    ended_as: str | None = None
    swept: int = 0

    @property
    def pending(self) -> bool:
        return self.state in PENDING

    def lost(self, now: float, grace_s: float) -> bool:
        """Not claimed, and not seen by a scheduler process for `grace_s` after it should have
        been: its message is gone (or held up that long)."""
        expect = self.oneoff.expect
        return self.state in WAITING and expect is not None and now > expect + grace_s


def _conditional(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class OneOffRecords:
    """Create, cancel and list one-off records (a DynamoDB client: boto3's or moto's)."""

    def __init__(self, client: Any, table: str, prefix: str) -> None:
        self.client, self.table, self.prefix = client, table, prefix

    def create(self, oneoff: OneOff, now_ms: int) -> bool:
        """Record a new one-off; False when its id is taken."""
        expect_ms = now_ms if oneoff.expect is None else round(oneoff.expect * 1000)
        try:
            self.client.put_item(
                TableName=self.table,
                Item={
                    **key(self.prefix, oneoff.id),
                    "task": {"S": oneoff.task},
                    "due": {"N": str(oneoff.key)},
                    "payload": {"S": json.dumps(dict(oneoff.payload), separators=(",", ":"))},
                    "created": {"N": str(now_ms)},
                    # A scheduler takes it off the run queue at once.
                    "expect": {"N": str(now_ms if oneoff.expect is None else expect_ms)},
                    "tick": {"N": "0"},
                    "fence": {"N": "0"},
                    "until": {"N": "0"},
                    "state": {"S": "pending"},
                    naming.TTL_ATTRIBUTE: {"N": str(oneoff.key // 1000 + RECORD_TTL_S)},
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if _conditional(exc):
                return False
            raise
        return True

    def delete(self, oneoff_id: str) -> None:
        """Remove a record whose one-off was never published (the publish failed)."""
        self.client.delete_item(TableName=self.table, Key=key(self.prefix, oneoff_id))

    def cancel(self, oneoff_id: str) -> bool:
        """Cancel a one-off that has not started (pending, or waiting to retry); False when it
        is unknown, started, finished or cancelled already."""
        return self._update(
            oneoff_id,
            UpdateExpression="SET tick = due, #state = :cancelled",
            ConditionExpression="#state IN (:pending, :retry)",
            ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues={
                ":cancelled": {"S": "cancelled"},
                ":pending": {"S": "pending"},
                ":retry": {"S": "retry"},
            },
        )

    def _update(self, oneoff_id: str, **kwargs: Any) -> bool:
        try:
            self.client.update_item(TableName=self.table, Key=key(self.prefix, oneoff_id), **kwargs)
        except ClientError as exc:
            if _conditional(exc):
                return False
            raise
        return True

    def expect(self, oneoff_id: str, expect_ms: int) -> bool:
        """Note when a scheduler process should next see the one-off (it is not claimed)."""
        return self._update(
            oneoff_id,
            UpdateExpression="SET expect = :expect",
            ConditionExpression="#state IN (:pending, :retry)",
            ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues={
                ":expect": {"N": str(expect_ms)},
                ":pending": {"S": "pending"},
                ":retry": {"S": "retry"},
            },
        )

    def retrying(self, again: OneOff, fence: int) -> bool:
        """Note a retry (its attempt, time and `expect`) of the run that holds `fence`, before
        the claim is released for it."""
        assert again.retry_at is not None and again.expect is not None
        return self._update(
            again.id,
            UpdateExpression="SET attempt = :attempt, retry_at = :retry_at, expect = :expect",
            ConditionExpression="fence = :fence",
            ExpressionAttributeValues={
                ":attempt": {"N": str(again.attempt)},
                ":retry_at": {"N": str(round(again.retry_at * 1000))},
                ":expect": {"N": str(round(again.expect * 1000))},
                ":fence": {"N": str(fence)},
            },
        )

    def swept(self, record: Record, expect_ms: int) -> bool:
        """Count a send by the sweep and set the next `expect`, if nothing changed the record
        since `record` was read (a runner that saw it meanwhile wins: it was not lost)."""
        assert record.oneoff.expect is not None
        return self._update(
            record.oneoff.id,
            UpdateExpression="SET expect = :expect, swept = :swept",
            # (a record written before `expect` was has none: its `created` stood in for it)
            ConditionExpression="#state IN (:pending, :retry) AND "
            "(expect = :was OR attribute_not_exists(expect))",
            ExpressionAttributeNames={"#state": "state"},
            ExpressionAttributeValues={
                ":expect": {"N": str(expect_ms)},
                ":swept": {"N": str(record.swept + 1)},
                ":was": {"N": str(round(record.oneoff.expect * 1000))},
                ":pending": {"S": "pending"},
                ":retry": {"S": "retry"},
            },
        )

    def conclude(self, oneoff_id: str, fence: int, ended_as: str) -> bool:
        """Record how a claimed run ended (`succeeded`, `failed`, `missed`), on its fence."""
        return self._update(
            oneoff_id,
            UpdateExpression="SET ended_as = :ended",
            ConditionExpression="fence = :fence",
            ExpressionAttributeValues={":ended": {"S": ended_as}, ":fence": {"N": str(fence)}},
        )

    def read(self, oneoff_id: str) -> Record | None:
        item = self.client.get_item(
            TableName=self.table, Key=key(self.prefix, oneoff_id), ConsistentRead=True
        ).get("Item")
        return None if item is None else _record(item)

    def all(self) -> list[Record]:
        """Every record of this prefix, by due time."""
        records: list[Record] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": partition(self.prefix)}},
            "ConsistentRead": True,
        }
        while True:
            page = self.client.query(**kwargs)
            records += [_record(item) for item in page.get("Items", [])]
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(records, key=lambda r: r.oneoff.due)


def _ms(item: dict[str, Any], name: str) -> float | None:
    return int(item[name]["N"]) / 1000 if name in item else None


def _record(item: dict[str, Any]) -> Record:
    oneoff = OneOff(
        item["sk"]["S"],
        item["task"]["S"],
        int(item["due"]["N"]) / 1000,
        json.loads(item.get("payload", {}).get("S", "{}")),
        int(item.get("attempt", {}).get("N", 1)),
        _ms(item, "retry_at"),
        # A record written before `expect` was: a scheduler should have seen it once created.
        _ms(item, "expect") or _ms(item, "created"),
    )
    ended = item.get("ended_as", {}).get("S")
    return Record(oneoff, item["state"]["S"], ended, int(item.get("swept", {}).get("N", 0)))
