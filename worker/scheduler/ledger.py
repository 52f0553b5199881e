"""The tick ledger: which tick of a task was claimed last, by whom (a fence), until when (a lease).

Every scheduler process shares one ledger item per task. A runner runs a tick only after a
conditional write *claims* it; the write succeeds only if

- the tick is later than the last claimed one (so a tick is claimed, hence started, at most
  once; a retry of a transient failure is the one exception: the same tick, released as `retry`
  by its runner), and
- no other claim is still live: the last one is finished, or its lease ran out (its runner
  died, froze or lost the ledger; its tick is then *abandoned*, never run again).

Each claim takes the next fence. A runner renews its lease while it runs and finishes the claim
with a write conditioned on its fence; once another runner has taken over, both fail, and the
old runner records, sends and publishes nothing (it is *fenced*).

`TableLedger` keeps the items in the coordination table (`pk` = `sched#<prefix>#<task>`,
`sk` = `ledger`), shared by every process; `MemoryLedger` keeps them in this process only, which
holds the guarantee for one scheduler process, not for several (used when no table is set).
Times are epoch milliseconds of the writer's clock: leases assume clocks agree to well within
a lease (NTP-synchronised hosts agree to milliseconds).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from botocore.exceptions import ClientError

from sluice import naming

State = Literal["running", "done", "retry"]
LEDGER_SK = "ledger"
# Ledger items are rewritten on every tick; the TTL only removes those of tasks long gone.
LEDGER_TTL_S = 400 * 86_400


def task_partition(prefix: str, task: str) -> dict[str, Any]:
    """The coordination table's partition of one task's scheduler items (its ledger item, and
    its last sent tick: worker/scheduler/overlap.py)."""
    return {"S": f"sched#{prefix}#{task}"}


@dataclass(frozen=True)
class Claim:
    """A task's last claim: its tick (ms), fence, lease end (epoch ms), state and holder."""

    tick: int
    fence: int
    until_ms: int
    state: State
    holder: str

    def live(self, now_ms: int) -> bool:
        """Still being run: not finished and within its lease."""
        return self.state == "running" and self.until_ms >= now_ms

    def admits(self, tick: int, now_ms: int) -> bool:
        """May `tick` be claimed after this claim?"""
        if tick == self.tick:
            return self.state == "retry"
        return tick > self.tick and not self.live(now_ms)


@dataclass(frozen=True)
class Claimed:
    """A successful claim: its fence, and the claim it replaced (None: the task's first)."""

    fence: int
    previous: Claim | None


class Ledger(Protocol):
    shared: bool  # True when every scheduler process sees the same ledger

    def read(self, task: str) -> Claim | None: ...

    def claim(
        self, task: str, tick: int, now_ms: int, lease_ms: int, holder: str
    ) -> Claimed | None:
        """Claim `tick` (one write): its fence and the claim it replaced, or None when the
        ledger does not admit it."""

    def renew(self, task: str, fence: int, until_ms: int) -> bool:
        """Extend a running claim's lease; False: fenced (another runner took over)."""

    def finish(self, task: str, fence: int, state: State) -> bool:
        """End a running claim as `done` or `retry`; False: fenced."""


class MemoryLedger:
    """The ledger in this process's memory: the guarantee holds for one scheduler process."""

    shared = False

    def __init__(self) -> None:
        self._claims: dict[str, Claim] = {}
        self._lock = threading.Lock()

    def read(self, task: str) -> Claim | None:
        with self._lock:
            return self._claims.get(task)

    def claim(
        self, task: str, tick: int, now_ms: int, lease_ms: int, holder: str
    ) -> Claimed | None:
        with self._lock:
            last = self._claims.get(task)
            if last is not None and not last.admits(tick, now_ms):
                return None
            fence = (last.fence if last else 0) + 1
            self._claims[task] = Claim(tick, fence, now_ms + lease_ms, "running", holder)
            return Claimed(fence, last)

    def _update(self, task: str, fence: int, **changes: Any) -> bool:
        with self._lock:
            last = self._claims.get(task)
            if last is None or last.fence != fence or last.state != "running":
                return False
            self._claims[task] = replace(last, **changes)
            return True

    def renew(self, task: str, fence: int, until_ms: int) -> bool:
        return self._update(task, fence, until_ms=until_ms)

    def finish(self, task: str, fence: int, state: State) -> bool:
        return self._update(task, fence, state=state)


class TableLedger:
    """The ledger in the coordination table (a DynamoDB client: boto3's or moto's)."""

    shared = True

    def __init__(self, client: Any, table: str, prefix: str) -> None:
        self.client, self.table, self.prefix = client, table, prefix

    def _key(self, task: str) -> dict[str, Any]:
        return {"pk": task_partition(self.prefix, task), "sk": {"S": LEDGER_SK}}

    def read(self, task: str) -> Claim | None:
        item = self.client.get_item(
            TableName=self.table, Key=self._key(task), ConsistentRead=True
        ).get("Item")
        return None if item is None else self._claim(item)

    @staticmethod
    def _claim(item: dict[str, Any]) -> Claim:
        return Claim(
            tick=int(item["tick"]["N"]),
            fence=int(item["fence"]["N"]),
            until_ms=int(item["until"]["N"]),
            state=item["state"]["S"],
            holder=item.get("holder", {}).get("S", ""),
        )

    def _write(
        self, task: str, update: str, condition: str, values: dict[str, Any], returns: str
    ) -> Any:
        try:
            return self.client.update_item(
                TableName=self.table,
                Key=self._key(task),
                UpdateExpression=update,
                ConditionExpression=condition,
                # Only the names the expressions use (DynamoDB refuses unused ones).
                ExpressionAttributeNames={
                    f"#{n}": n for n in ("state", "until") if f"#{n}" in update + condition
                },
                ExpressionAttributeValues=values,
                ReturnValues=returns,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return None
            raise

    def claim(
        self, task: str, tick: int, now_ms: int, lease_ms: int, holder: str
    ) -> Claimed | None:
        # One condition, Claim.admits written for DynamoDB (no item yet: anything is admitted);
        # the old item comes back with the write, so a claim costs one round trip.
        out = self._write(
            task,
            "SET tick = :tick, fence = if_not_exists(fence, :zero) + :one, #until = :until, "
            f"#state = :running, holder = :holder, {naming.TTL_ATTRIBUTE} = :ttl",
            "attribute_not_exists(pk)"
            " OR (tick = :tick AND #state = :retry)"
            " OR (tick < :tick AND (#state <> :running OR #until < :now))",
            {
                ":tick": {"N": str(tick)},
                ":zero": {"N": "0"},
                ":one": {"N": "1"},
                ":until": {"N": str(now_ms + lease_ms)},
                ":now": {"N": str(now_ms)},
                ":running": {"S": "running"},
                ":retry": {"S": "retry"},
                ":holder": {"S": holder},
                ":ttl": {"N": str(now_ms // 1000 + LEDGER_TTL_S)},
            },
            "ALL_OLD",
        )
        if out is None:
            return None
        old = out.get("Attributes")
        previous = self._claim(old) if old else None
        return Claimed((previous.fence if previous else 0) + 1, previous)

    def _running(self, task: str, fence: int, update: str, values: dict[str, Any]) -> bool:
        condition = "fence = :fence AND #state = :running"
        values = {**values, ":fence": {"N": str(fence)}, ":running": {"S": "running"}}
        return self._write(task, update, condition, values, "NONE") is not None

    def renew(self, task: str, fence: int, until_ms: int) -> bool:
        return self._running(task, fence, "SET #until = :until", {":until": {"N": str(until_ms)}})

    def finish(self, task: str, fence: int, state: State) -> bool:
        return self._running(task, fence, "SET #state = :state", {":state": {"S": state}})
