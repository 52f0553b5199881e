"""Run control shared by the workflows, the worker and the operator CLI: records of runs that
ended badly, declared cancellation (`cancel_on`), and the one way a run is cancelled.

## Failed-run records

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

## Declared cancellation
A workflow declares `[[cancel_on]] event = "media/deleted", match = "data.key"`: an event of that
name cancels the workflow's runs begun before it was received whose own event holds the same
value at `match` (`on` names the value's path in the cancelling event when it differs). Both
sides meet in one partition of the coordination table per (cancelling event, path, value), pk
`cancel#<event>#<path>#<value>`:

- a run **registers** first thing (a durable step, before it waits for a concurrency slot): an
  item `run#<workflow>#<name>` with its ARN and the time it registered, kept as long as the run
  may last; in the same step it reads the partition's **tombstone** (sk `cancelled`): a
  cancellation received at or after that time cancels it at once;
- the worker, given the cancelling event, first records the tombstone (the time it received it;
  the latest stays, kept `TOMBSTONE_TTL_S`), then reads the registered runs and cancels each that
  registered at or before that time (`cancel`).

Writing before reading on both sides closes the race: a run that registered before the tombstone
was written is found by the worker's read; one that registers after finds the tombstone. (Both
may happen; the second stop finds the run ended and does nothing more.) A run begun after the
cancellation was received (the same object uploaded again) is not cancelled by it. The times are
the events queue's first receipt (sqsd's header) and the Lambda's clock when the run registered,
both NTP-synchronised; the registration is the run's first operation.

## Cancelling a run
`cancel`: Lambda's StopDurableExecution with the reason (a stopped run runs no more of its own
code), then the failed-run record (STOPPED), then the workflow's declared failure handler once,
with `reason: cancelled`. A run that had already ended is left alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from sluice import naming
from sluice.catalog import WORKFLOW_ALIAS
from sluice.envelope import Event
from sluice.workflows import failure_report

STATUSES = ("RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "STOPPED", "PAUSED")
ENDED = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "STOPPED"})
# The error type of a cancelled run (Lambda records it; the failure handler is told).
CANCELLED = "Cancelled"
PREFIX = "failed#"
TTL_ATTRIBUTE = naming.TTL_ATTRIBUTE
TTL_S = 400 * 86_400
# Above every sort key: the upper bound of a window with no end.
_HIGH = "\uffff"


_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime(_FORMAT)


def iso(when: datetime) -> str:
    """`when` as the records and the cancellations write it (ISO-8601 UTC, microseconds)."""
    return _iso(when)


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
        for page in self.client.get_paginator("query").paginate(**args):
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


# -- declared cancellation ------------------------------------------------------------------------

CANCEL_PREFIX = "cancel#"
TOMBSTONE = "cancelled"
REGISTERED = "run#"
# How long a cancellation is remembered for runs that have not registered yet: longer than an
# event waits on the events queue (its retention is at most 14 days) before its run starts.
TOMBSTONE_TTL_S = 15 * 86_400


def cancel_scope(event_name: str, path: str, value: str) -> str:
    """The partition where runs cancelled by `event_name` at `path` = `value` meet it."""
    return f"{CANCEL_PREFIX}{event_name}#{path}#{value}"


@dataclass(frozen=True)
class Registered:
    """A run registered to be cancelled."""

    workflow: str
    name: str
    arn: str


class CancelKeys:
    """The cancellation partitions of table `name` (a DynamoDB client)."""

    def __init__(self, client: Any, name: str) -> None:
        self.client, self.name = client, name

    def register(self, scope: str, run: Registered, *, at: datetime, ttl_s: int) -> bool:
        """Register `run` at time `at`; True when a cancellation received at or after that time
        is there already: the run is cancelled."""
        self.client.put_item(
            TableName=self.name,
            Item={
                "pk": {"S": scope},
                "sk": {"S": f"{REGISTERED}{run.workflow}#{run.name}"},
                "workflow": {"S": run.workflow},
                "name": {"S": run.name},
                "arn": {"S": run.arn},
                "registered": {"S": _iso(at)},
                TTL_ATTRIBUTE: {"N": str(int(at.timestamp()) + ttl_s)},
            },
        )
        tombstone = self.client.get_item(
            TableName=self.name,
            Key={"pk": {"S": scope}, "sk": {"S": TOMBSTONE}},
            ConsistentRead=True,
        ).get("Item")
        return tombstone is not None and tombstone["at"]["S"] >= _iso(at)

    def cancel(self, scope: str, *, at: datetime) -> list[Registered]:
        """Record a cancellation received at `at` (the latest one stays), then the runs
        registered in `scope` at or before it."""
        recorded = _iso(at)
        try:
            self.client.update_item(
                TableName=self.name,
                Key={"pk": {"S": scope}, "sk": {"S": TOMBSTONE}},
                UpdateExpression="SET #at = :at, #ttl = :ttl",
                ConditionExpression="attribute_not_exists(#at) OR #at < :at",
                ExpressionAttributeNames={"#at": "at", "#ttl": TTL_ATTRIBUTE},
                ExpressionAttributeValues={
                    ":at": {"S": recorded},
                    ":ttl": {"N": str(int(at.timestamp()) + TOMBSTONE_TTL_S)},
                },
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
        pages = self.client.get_paginator("query").paginate(
            TableName=self.name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :run)",
            ExpressionAttributeValues={":pk": {"S": scope}, ":run": {"S": REGISTERED}},
            ConsistentRead=True,
        )
        return [
            Registered(i["workflow"]["S"], i["name"]["S"], i["arn"]["S"])
            for page in pages
            for i in page.get("Items", [])
            if i["registered"]["S"] <= recorded
        ]

    def cancelled_at(self, scope: str) -> str | None:
        """When the latest cancellation of `scope` was received (ISO-8601 UTC, as `iso`), None
        if none was. One consistent Query: what the worker asks before it starts an event flow
        control held (worker/cancels.py)."""
        items = self.client.query(
            TableName=self.name,
            KeyConditionExpression="pk = :pk AND sk = :sk",
            ExpressionAttributeValues={":pk": {"S": scope}, ":sk": {"S": TOMBSTONE}},
            ConsistentRead=True,
        ).get("Items", [])
        return str(items[0]["at"]["S"]) if items else None

    def forget(self, scope: str, run: Registered) -> None:
        """The run has ended: nothing will cancel it."""
        self.client.delete_item(
            TableName=self.name,
            Key={"pk": {"S": scope}, "sk": {"S": f"{REGISTERED}{run.workflow}#{run.name}"}},
        )


# -- cancelling a run -----------------------------------------------------------------------------


def live(function: str) -> str:
    """`function` (a name or ARN, as the stack outputs give it) through its `live` alias."""
    return function if function.endswith(f":{WORKFLOW_ALIAS}") else f"{function}:{WORKFLOW_ALIAS}"


class FailureHandlerFailed(RuntimeError):
    """The run was stopped, but its failure handler failed."""


def stop(lam: Any, arn: str, *, message: str) -> bool:
    """Stop the run `arn` with `message` as its error (type CANCELLED); False when it had
    already ended (Lambda refused and its status is an end)."""
    try:
        lam.stop_durable_execution(
            DurableExecutionArn=arn,
            Error={"ErrorType": CANCELLED, "ErrorMessage": message[:1024]},
        )
    except ClientError:
        if lam.get_durable_execution(DurableExecutionArn=arn)["Status"] in ENDED:
            return False
        raise
    return True


def after_stop(
    lam: Any,
    *,
    workflow: str,
    name: str,
    arn: str,
    event: Event,
    started: datetime | None,
    message: str,
    records: RunRecords | None = None,
    failure_handler: str | None = None,
) -> None:
    """What follows a cancelled run's stop: its record (STOPPED), then its failure handler, told
    `reason: cancelled`. Safe to repeat after a failure (the record is replaced; the default
    handler sets the same job record, a notification may go twice)."""
    why = {
        "reason": "cancelled",
        "step": workflow,
        "error_class": "business",
        "error_type": CANCELLED,
        "message": message[:2000],
        "attempts": 1,
    }
    now = datetime.now(UTC)
    if records is not None:
        records.record(
            workflow=workflow,
            name=name,
            arn=arn,
            status="STOPPED",
            event=event.to_dict(),
            reason=why,
            started=started or now,
            ended=now,
        )
    if failure_handler:
        payload = failure_report(workflow=workflow, job_id=name, event=event, reason=why)
        answer = lam.invoke(
            FunctionName=live(failure_handler),
            InvocationType="RequestResponse",
            Payload=json.dumps(payload).encode(),
        )
        if answer.get("FunctionError"):
            body = answer["Payload"].read() if hasattr(answer.get("Payload"), "read") else b""
            raise FailureHandlerFailed(
                f"{name} stopped, but its failure handler {failure_handler} failed: "
                f"{body[:500].decode('utf-8', 'replace')}"
            )


def cancel(
    lam: Any,
    *,
    workflow: str,
    name: str,
    arn: str,
    event: Event | None,
    started: datetime | None,
    message: str,
    records: RunRecords | None = None,
    failure_handler: str | None = None,
) -> bool:
    """Stop run `name` of `workflow` with `message`, record it and run its failure handler once
    (`stop`, then `after_stop`); False (nothing done) when it had already ended.

    (Two cancels of the same run at the same instant may both run the handler: Lambda's stop of
    a stopped run succeeds too.) The concurrency slots the run held are reclaimed by the next run
    that asks for them (adapters/slots.py: a holder that no longer runs).
    """
    if not stop(lam, arn, message=message):
        return False
    if event is not None:
        after_stop(
            lam,
            workflow=workflow,
            name=name,
            arn=arn,
            event=event,
            started=started,
            message=message,
            records=records,
            failure_handler=failure_handler,
        )
    return True
