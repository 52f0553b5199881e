"""Fan-in joins: the branches of one media item, recorded in the coordination table.

One item per media item (pk `join#<media id>`, sk `join`): `expected` (the branch names), one
attribute `branch#<name>` per finished branch (`succeeded` or `failed`; the first outcome
recorded stays: a duplicate completion or a replay changes nothing), `emitter` (the branch that
won the right to send the outcome event) and `emitted` (its event id, once sent).

Exactly one outcome event: the branches race for `emitter` with a conditional update once all
are terminal; only the winner sends, with a deterministic event id (`ready-<media id>`), so a
crash between its send and `mark_emitted` re-sends the same id, which the worker dedups.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from adapters.errors import code
from sluice import naming

SUCCEEDED = "succeeded"
FAILED = "failed"
OUTCOMES = (SUCCEEDED, FAILED)
BRANCH = "branch#"
SK = "join"
TTL_ATTRIBUTE = naming.TTL_ATTRIBUTE


def join_key(media_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"join#{media_id}"}, "sk": {"S": SK}}


@dataclass(frozen=True)
class JoinState:
    """A media item's branches as recorded: name -> outcome (absent: still running)."""

    media_id: str
    expected: tuple[str, ...]
    branches: dict[str, str] = field(default_factory=dict)
    emitter: str | None = None
    emitted: str | None = None

    @property
    def complete(self) -> bool:
        return all(b in self.branches for b in self.expected)

    @property
    def failed(self) -> list[str]:
        return sorted(b for b in self.expected if self.branches.get(b) == FAILED)

    @property
    def outcome(self) -> str:
        """`ready`, `failed` or `running`."""
        if not self.complete:
            return "running"
        return "failed" if self.failed else "ready"

    @property
    def event_id(self) -> str:
        """The outcome event's id: the same for every sender, on every retry."""
        return f"{self.outcome}-{self.media_id}"


def _state(media_id: str, item: dict[str, Any]) -> JoinState:
    return JoinState(
        media_id=media_id,
        expected=tuple(sorted(item.get("expected", {}).get("SS", []))),
        branches={
            k[len(BRANCH) :]: v["S"] for k, v in item.items() if k.startswith(BRANCH) and "S" in v
        },
        emitter=item.get("emitter", {}).get("S"),
        emitted=item.get("emitted", {}).get("S"),
    )


class Joins:
    """The joins of table `name` (a DynamoDB client)."""

    def __init__(self, client: Any, name: str, *, ttl_s: int = 400 * 86_400) -> None:
        self.client, self.name, self.ttl_s = client, name, ttl_s

    def record(
        self, media_id: str, branch: str, outcome: str, *, expected: Iterable[str], now: int
    ) -> JoinState:
        """Record that `branch` of `media_id` ended with `outcome` (the first outcome stays);
        the join's state after it."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        answer = self.client.update_item(
            TableName=self.name,
            Key=join_key(media_id),
            UpdateExpression=(
                "SET #b = if_not_exists(#b, :outcome), expected = if_not_exists(expected, :exp), "
                "#ttl = if_not_exists(#ttl, :ttl)"
            ),
            ExpressionAttributeNames={"#b": BRANCH + branch, "#ttl": TTL_ATTRIBUTE},
            ExpressionAttributeValues={
                ":outcome": {"S": outcome},
                ":exp": {"SS": sorted(set(expected) | {branch})},
                ":ttl": {"N": str(now + self.ttl_s)},
            },
            ReturnValues="ALL_NEW",
        )
        return _state(media_id, answer["Attributes"])

    def get(self, media_id: str) -> JoinState | None:
        item = self.client.get_item(
            TableName=self.name, Key=join_key(media_id), ConsistentRead=True
        ).get("Item")
        return None if item is None else _state(media_id, item)

    def claim_emit(self, media_id: str, branch: str) -> bool:
        """Whether `branch` sends the outcome event: the first to ask wins, and keeps winning
        when it asks again (its retry after a crash); False once the event is marked sent."""
        try:
            self.client.update_item(
                TableName=self.name,
                Key=join_key(media_id),
                UpdateExpression="SET emitter = :me",
                ConditionExpression=(
                    "attribute_exists(pk) AND attribute_not_exists(emitted) "
                    "AND (attribute_not_exists(emitter) OR emitter = :me)"
                ),
                ExpressionAttributeValues={":me": {"S": branch}},
            )
        except ClientError as exc:
            if code(exc) != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def mark_emitted(self, media_id: str, event_id: str) -> None:
        self.client.update_item(
            TableName=self.name,
            Key=join_key(media_id),
            UpdateExpression="SET emitted = :id",
            ExpressionAttributeValues={":id": {"S": event_id}},
        )
