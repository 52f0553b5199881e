"""Runs of the durable workflows, for operators: list, show every step, cancel, replay.

The Python API behind `sluice runs …` (sluice_cli/runs_cli.py is a thin layer over it). It reads
and acts through Lambda's durable-execution APIs only (ListDurableExecutionsByFunction,
GetDurableExecution, GetDurableExecutionHistory, StopDurableExecution, Invoke), as botocore's
Lambda model defines them, so it works the same against AWS and the local pipeline.

    runs = Runs(boto3.client("lambda"), {"transcribe_audio": "<function name or ARN>", ...})
    for run in runs.list(statuses=["FAILED"], since=yesterday):
        print(run.workflow, run.name, run.status)
    detail = runs.show(run.arn)          # the run, its input and every operation with its data
    runs.replay(run.arn)                 # a new run with the same input, linked to this one

A replay is the same event under a new id, `<original execution name>~replay<n>`: the new run's
event id names the run it replays, the original finds its replays by that name, and replaying
twice asks Lambda to start the same name with the same input, which returns the run already
started instead of starting another (Lambda's idempotent durable start).
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from sluice import run_control
from sluice.envelope import Event, event_from_dict, execution_name
from sluice.run_control import ENDED, STATUSES, RunRecord, RunRecords, live
from sluice.workflows import value_at

REPLAY_SEPARATOR = "~replay"
_REPLAY = re.compile(r"(?P<original>[A-Za-z0-9_-]{1,64})~replay(?P<n>[1-9][0-9]*)")
# A durable execution's ARN: <function ARN>:<qualifier>/durable-execution/<name>/<id>.
_EXECUTION_IN_ARN = re.compile(r"/durable-execution/(?P<name>[A-Za-z0-9_-]{1,64})/")
# ListDurableExecutionsByFunction's page size (its MaxItems).
PAGE = 100


class RunNotFound(LookupError):
    """No run has that ARN or name."""


@dataclass(frozen=True)
class Run:
    """One durable execution of a workflow."""

    workflow: str
    name: str
    arn: str
    status: str
    started: datetime | None = None
    ended: datetime | None = None
    input: Mapping[str, Any] | None = None  # the start payload (the event), when read
    error: Mapping[str, Any] | None = None  # why it failed or was stopped, when read

    @property
    def event(self) -> Event | None:
        """The event the run was started with (None if not read or not an event)."""
        if self.input is None:
            return None
        try:
            return event_from_dict(dict(self.input), ts_required=False)
        except Exception:
            return None

    @property
    def replay_of(self) -> str | None:
        """The execution name of the run this run replays (None: not a replay)."""
        event = self.event
        match = _REPLAY.fullmatch(event.id) if event else None
        return match["original"] if match else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "name": self.name,
            "arn": self.arn,
            "status": self.status,
            "started": _iso(self.started),
            "ended": _iso(self.ended),
            "input": self.input,
            "error": self.error,
            "replay_of": self.replay_of,
        }


@dataclass(frozen=True)
class Operation:
    """One operation of a run: a step, a step Lambda invoked, a wait, a callback, a context."""

    id: str
    kind: str  # Step, ChainedInvoke, Wait, Callback, Context
    name: str
    status: str  # the last event's: Started, Succeeded, Failed, TimedOut, Stopped, Cancelled
    started: datetime | None
    ended: datetime | None
    input: Any = None
    output: Any = None
    error: Mapping[str, Any] | None = None  # type, message, data, stack trace
    attempt: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # e.g. a callback's id, a wait's end

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "status": self.status,
            "started": _iso(self.started),
            "ended": _iso(self.ended),
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "attempt": self.attempt,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class RunDetail:
    """A run with every operation it recorded, and the runs that replay it."""

    run: Run
    operations: tuple[Operation, ...]
    replays: tuple[Run, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.run.to_dict(),
            "operations": [op.to_dict() for op in self.operations],
            "replays": [r.to_dict() for r in self.replays],
        }


def _from_record(record: RunRecord) -> Run:
    return Run(
        workflow=record.workflow,
        name=record.name,
        arn=record.arn,
        status=record.status,
        started=record.started,
        ended=record.ended,
        input=record.event,
        error=record.reason,
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _payload(doc: Mapping[str, Any] | None) -> Any:
    """An EventInput/EventResult's payload, parsed when it is JSON."""
    if not doc or doc.get("Payload") is None:
        return None
    text = doc["Payload"]
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _error(doc: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An EventError (or an ErrorObject) as {type, message, data, stack_trace}."""
    if not doc:
        return None
    obj = doc.get("Payload", doc)
    if not isinstance(obj, Mapping):
        return None
    return {
        "type": obj.get("ErrorType"),
        "message": obj.get("ErrorMessage"),
        "data": obj.get("ErrorData"),
        "stack_trace": list(obj.get("StackTrace") or []),
    }


def operations(events: Iterable[Mapping[str, Any]]) -> list[Operation]:
    """The history's events folded into one entry per operation, in the order they started."""
    ops: dict[str, dict[str, Any]] = {}
    for ev in events:
        kind_status = str(ev.get("EventType", ""))
        match = re.fullmatch(
            r"(Step|ChainedInvoke|Wait|Callback|Context)"
            r"(Started|Succeeded|Failed|TimedOut|Stopped|Cancelled)",
            kind_status,
        )
        if match is None or not ev.get("Id"):
            continue  # execution-level and invocation events
        kind, status = match[1], match[2]
        op = ops.setdefault(
            str(ev["Id"]),
            {"id": str(ev["Id"]), "kind": kind, "name": ev.get("Name") or "", "details": {}},
        )
        op["status"] = status
        details = ev.get(f"{kind_status}Details") or {}
        if status == "Started":
            op["started"] = ev.get("EventTimestamp")
            op["input"] = _payload(details.get("Input"))
            for key in ("FunctionName", "CallbackId", "Timeout", "HeartbeatTimeout", "Duration"):
                if details.get(key) is not None:
                    op["details"][key] = details[key]
            if details.get("ScheduledEndTimestamp"):
                op["details"]["ScheduledEndTimestamp"] = _iso(details["ScheduledEndTimestamp"])
        else:
            op["ended"] = ev.get("EventTimestamp")
            op["output"] = _payload(details.get("Result"))
            op["error"] = _error(details.get("Error"))
        retry = details.get("RetryDetails") or {}
        if retry.get("CurrentAttempt") is not None:
            op["attempt"] = int(retry["CurrentAttempt"])
    result = []
    for op in ops.values():
        attempt = op.get("attempt")
        if attempt is None and "#" in op["name"]:  # retry_durably's attempts: op, op#2, ...
            tail = op["name"].rsplit("#", 1)[1]
            attempt = int(tail) if tail.isdigit() else None
        result.append(
            Operation(
                id=op["id"],
                kind=op["kind"],
                name=op["name"],
                status=op.get("status", "Started"),
                started=op.get("started"),
                ended=op.get("ended"),
                input=op.get("input"),
                output=op.get("output"),
                error=op.get("error"),
                attempt=attempt if attempt is not None else 1,
                details=op["details"],
            )
        )
    return result


def replay_name(original: str, n: int = 1) -> str:
    """The event id of the `n`th replay of the run named `original`."""
    if n < 1:
        raise ValueError("replays count from 1")
    return f"{original}{REPLAY_SEPARATOR}{n}"


class Runs:
    """The runs of the workflows in `functions` (workflow -> function name or ARN)."""

    def __init__(
        self,
        lambda_client: Any,
        functions: Mapping[str, str],
        failure_handlers: Mapping[str, str] | None = None,
        records: RunRecords | None = None,
    ) -> None:
        self.lam = lambda_client
        self.functions = dict(functions)
        # workflow -> the function of its declared failure handler (run when a run is cancelled)
        self.failure_handlers = dict(failure_handlers or {})
        # the failed-run records (sluice/run_control.py): they outlive Lambda's history
        self.records = records

    # -- reading ----------------------------------------------------------------------------------

    def _workflow_of(self, function_arn: str) -> str:
        name = function_arn.split(":function:", 1)[-1].split(":", 1)[0]
        for workflow, function in self.functions.items():
            if name == function.split(":function:", 1)[-1].split(":", 1)[0]:
                return workflow
        return name

    def list(
        self,
        *,
        workflows: Sequence[str] | None = None,
        statuses: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        name: str | None = None,
        limit: int = 50,
    ) -> list[Run]:
        """Runs, newest first, at most `limit`, filtered by what Lambda filters on."""
        unknown = sorted(set(workflows or ()) - set(self.functions))
        if unknown:
            raise ValueError(
                f"unknown workflow {', '.join(unknown)}: one of {', '.join(sorted(self.functions))}"
            )
        bad = sorted(set(statuses or ()) - set(STATUSES))
        if bad:
            raise ValueError(f"unknown status {', '.join(bad)}: one of {', '.join(STATUSES)}")
        runs: list[Run] = []
        for workflow in workflows or sorted(self.functions):
            runs.extend(self._list_function(workflow, statuses, since, until, name, limit))
        runs.sort(key=lambda r: (r.started or datetime.min, r.name), reverse=True)
        return runs[:limit]

    def recorded(
        self,
        *,
        workflows: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        name: str | None = None,
        limit: int = 50,
    ) -> builtins.list[Run]:
        """The runs recorded as failed, timed out or cancelled (sluice/run_control.py), newest
        first, at most `limit`: read from the records, so also runs whose durable history has
        expired. Each carries its event and the reason its failure handler was given."""
        if self.records is None:
            raise ValueError("no failed-run records: this endpoint has no coordination table")
        unknown = sorted(set(workflows or ()) - set(self.functions))
        if unknown:
            raise ValueError(
                f"unknown workflow {', '.join(unknown)}: one of {', '.join(sorted(self.functions))}"
            )
        runs: builtins.list[Run] = []
        for workflow in workflows or sorted(self.functions):
            for record in self.records.list(workflow, since=since, until=until, name=name):
                runs.append(_from_record(record))
                if len(runs) >= limit * len(workflows or self.functions):
                    break
        runs.sort(key=lambda r: (r.started or datetime.min, r.name), reverse=True)
        return runs[:limit]

    def _list_function(
        self,
        workflow: str,
        statuses: Sequence[str] | None,
        since: datetime | None,
        until: datetime | None,
        name: str | None,
        limit: int,
    ) -> Iterator[Run]:
        args: dict[str, Any] = {
            "FunctionName": self.functions[workflow],
            "ReverseOrder": True,
            "PaginationConfig": {"PageSize": min(PAGE, limit)},
        }
        if statuses:
            args["Statuses"] = list(statuses)
        if since:
            args["StartedAfter"] = since
        if until:
            args["StartedBefore"] = until
        if name:
            args["DurableExecutionName"] = name
        seen = 0
        for page in self.lam.get_paginator("list_durable_executions_by_function").paginate(**args):
            for item in page.get("DurableExecutions", []):
                # Lambda filters on Statuses; checked again so that an endpoint that ignores
                # the filter (the local runner reads another parameter) cannot widen a bulk act.
                if statuses and item["Status"] not in statuses:
                    continue
                yield Run(
                    workflow=workflow,
                    name=item["DurableExecutionName"],
                    arn=item["DurableExecutionArn"],
                    status=item["Status"],
                    started=item.get("StartTimestamp"),
                    ended=item.get("EndTimestamp"),
                )
                seen += 1
                if seen >= limit:
                    return

    def get(self, arn: str) -> Run:
        """The run with its input and, if it ended badly, its error."""
        try:
            doc = self.lam.get_durable_execution(DurableExecutionArn=arn, IncludeExecutionData=True)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise RunNotFound(f"no run {arn}") from None
            raise
        raw = doc.get("InputPayload")
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = {"raw": raw}
        return Run(
            workflow=self._workflow_of(doc["FunctionArn"]),
            name=doc["DurableExecutionName"],
            arn=doc["DurableExecutionArn"],
            status=doc["Status"],
            started=doc.get("StartTimestamp"),
            ended=doc.get("EndTimestamp"),
            input=payload if isinstance(payload, Mapping) else {"raw": payload},
            error=_error(doc.get("Error")),
        )

    def history(self, arn: str) -> Iterator[Mapping[str, Any]]:
        """Every event of the run's history, with its data, oldest first."""
        pages = self.lam.get_paginator("get_durable_execution_history").paginate(
            DurableExecutionArn=arn, IncludeExecutionData=True
        )
        for page in pages:
            yield from page.get("Events", [])

    def show(self, arn: str) -> RunDetail:
        """The run, each operation with its input, output or error, and the runs replaying it."""
        run = self.get(arn)
        return RunDetail(run, tuple(operations(self.history(arn))), tuple(self.replays(run)))

    def find(self, ref: str, *, workflow: str | None = None) -> Run:
        """A run by ARN, or by execution name or event id (in `workflow`, or in any)."""
        if ref.startswith("arn:"):
            try:
                return self.get(ref)
            except RunNotFound:
                by_arn = _EXECUTION_IN_ARN.search(ref)
                if self.records is None or by_arn is None:
                    raise
                ref = by_arn["name"]
        names = dict.fromkeys([ref, execution_name(ref)])
        for wf in [workflow] if workflow else sorted(self.functions):
            for candidate in names:
                found = self.list(workflows=[wf], name=candidate, limit=1)
                if found:
                    return self.get(found[0].arn)
        if self.records is not None:  # a failed run whose history has expired
            for candidate in names:
                found = self.recorded(workflows=[workflow] if workflow else None, name=candidate)
                if found:
                    return found[0]
        raise RunNotFound(f"no run named {ref}")

    def matching(
        self,
        runs: Iterable[Run],
        *,
        event_id: str | None = None,
        correlation_id: str | None = None,
        match: Mapping[str, str] | None = None,
    ) -> builtins.list[Run]:
        """`runs` (read with their input) whose event has this id, correlation id, and whose
        fields at each dotted path of `match` (e.g. `data.media_id`) equal the given text."""
        if not (event_id or correlation_id or match):
            return list(runs)
        found = []
        for run in runs:
            full = run if run.input is not None else self.get(run.arn)
            event = full.event
            if event is None:
                continue
            if event_id and event_id not in (event.id, full.name):
                continue
            if correlation_id and event.correlation_id != correlation_id:
                continue
            if match and not all(
                value_at(event.to_dict(), path) == value for path, value in match.items()
            ):
                continue
            found.append(full)
        return found

    def replays(self, run: Run) -> Iterator[Run]:
        """The runs that replay `run`, in order."""
        n = 1
        while True:
            name = execution_name(replay_name(run.name, n))
            found = self.list(workflows=[run.workflow], name=name, limit=1)
            if not found:
                return
            yield found[0]
            n += 1

    # -- acting -----------------------------------------------------------------------------------

    def cancel(self, arn: str, *, reason: str) -> Run:
        """Stop a running run, then record it and run its declared failure handler once with
        the reason (sluice.run_control.cancel); a run that had already ended is left as it is."""
        run = self.get(arn)
        if run.status in ENDED:
            return run
        run_control.cancel(
            self.lam,
            workflow=run.workflow,
            name=run.name,
            arn=run.arn,
            event=run.event,
            started=run.started,
            message=reason,
            records=self.records,
            failure_handler=self.failure_handlers.get(run.workflow),
        )
        return self.get(arn)

    def replay(self, run: str | Run, *, again: bool = False) -> Run:
        """A new run of the same workflow with the same event under a replay id. `run` is an
        ARN, or a Run read with its input (e.g. a recorded one whose history has expired).

        Idempotent: the first replay's name and input are fixed, so asking twice returns the run
        already started. `again` starts the next replay (when the first replay failed too).
        """
        original = run if isinstance(run, Run) and run.input is not None else None
        if original is None:
            original = self.get(run.arn if isinstance(run, Run) else run)
        event = original.event
        if event is None:
            raise ValueError(f"{original.name}: its input is not an event, it cannot be replayed")
        existing = list(self.replays(original))
        n = len(existing) + 1 if again or not existing else len(existing)
        replay = Event(
            name=event.name,
            data=event.data,
            id=replay_name(original.name, n),
            correlation_id=event.correlation_id,
        )
        answer = self.lam.invoke(
            FunctionName=live(self.functions[original.workflow]),
            InvocationType="Event",
            DurableExecutionName=replay.execution_name,
            Payload=replay.start_payload(),
        )
        started = answer.get("DurableExecutionArn")
        if started:
            return self.get(started)
        return self.find(replay.execution_name, workflow=original.workflow)
