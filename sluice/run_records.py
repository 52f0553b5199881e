"""Records of runs that ended badly, kept after the durable history is gone.

Lambda keeps a durable execution's history for its retention period (at most 90 days); an
operator replaying last quarter's failures needs more. Every run that fails, times out or is
cancelled is recorded in the coordination table, in one partition per workflow:

- pk `failed#<workflow>`, sk `<started, ISO-8601 UTC>#<execution name>`: a query reads a
  workflow's failed runs newest first, a window of start times (as `runs list --since`) is a
  key range, and writing the record again (a retried step) replaces it: the key holds nothing
  that changes between attempts;
- the run's ARN, status (FAILED, TIMED_OUT, STOPPED), the event that started it (JSON), and the
  reason the failure handler was given; kept for `TTL_S` (400 days, as the job records).

The workflow wrapper (lambdas/common/workflow.py) writes the record in a durable step before it
runs the failure handler, so a retried or replayed Lambda writes it once; `sluice runs cancel`
writes it for the runs an operator stops. `sluice runs list --recorded` reads them, and
`sluice runs replay` replays a recorded run whose history has expired.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sluice import naming

PREFIX = "failed#"
TTL_ATTRIBUTE = naming.TTL_ATTRIBUTE
TTL_S = 400 * 86_400
# Above every sort key: the upper bound of a window with no end.
_HIGH = "\uffff"


_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime(_FORMAT)


def _parse(text: str) -> datetime:
    return datetime.strptime(text, _FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True)
class RunRecord:
    """One run that ended badly, as recorded."""

    workflow: str
    name: str
    arn: str
    status: str
    started: datetime
    ended: datetime
    event: Mapping[str, Any]
    reason: Mapping[str, Any]


class RunRecords:
    """The failed-run records of table `name` (a DynamoDB client)."""

    def __init__(self, client: Any, name: str) -> None:
        self.client, self.name = client, name

    def record(
        self,
        *,
        workflow: str,
        name: str,
        arn: str,
        status: str,
        event: Mapping[str, Any],
        reason: Mapping[str, Any],
        started: datetime,
        ended: datetime,
    ) -> None:
        """Record that run `name` of `workflow`, started at `started`, ended with `status` for
        `reason`."""
        self.client.put_item(
            TableName=self.name,
            Item={
                "pk": {"S": PREFIX + workflow},
                "sk": {"S": f"{_iso(started)}#{name}"},
                "ended": {"S": _iso(ended)},
                "name": {"S": name},
                "arn": {"S": arn},
                "status": {"S": status},
                "event": {"S": json.dumps(dict(event), sort_keys=True, default=str)},
                "reason": {"S": json.dumps(dict(reason), sort_keys=True, default=str)},
                TTL_ATTRIBUTE: {"N": str(int(ended.timestamp()) + TTL_S)},
            },
        )

    def list(
        self,
        workflow: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        name: str | None = None,
    ) -> Iterator[RunRecord]:
        """The recorded runs of `workflow` started between `since` and `until`, newest first;
        only the run named `name` when given."""
        values: dict[str, Any] = {":pk": {"S": PREFIX + workflow}}
        condition = "pk = :pk"
        if since or until:  # a key may not be empty: an open end is the table's own bound
            values[":low"] = {"S": _iso(since) if since else "0"}
            values[":high"] = {"S": _iso(until) if until else _HIGH}
            condition += " AND sk BETWEEN :low AND :high"
        args: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
        }
        if name:
            args["FilterExpression"] = "#n = :name"
            args["ExpressionAttributeNames"] = {"#n": "name"}
            values[":name"] = {"S": name}
        while True:
            page = self.client.query(**args)
            for item in page.get("Items", []):
                yield RunRecord(
                    workflow=workflow,
                    name=item["name"]["S"],
                    arn=item["arn"]["S"],
                    status=item["status"]["S"],
                    started=_parse(item["sk"]["S"].split("#", 1)[0]),
                    ended=_parse(item["ended"]["S"]),
                    event=json.loads(item["event"]["S"]),
                    reason=json.loads(item["reason"]["S"]),
                )
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            args["ExclusiveStartKey"] = last
