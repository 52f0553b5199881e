"""No overlap of an event task's runs: a tick whose previous run still runs is skipped.

An event task's tick only sends an event; the worker starts the workflow later, as a durable
execution named after the event id (`tick-<task>-<due ms>`). So whether the last tick's run is
still running is Lambda's to say, not any scheduler process's memory. Before a tick of a task
with `overlap = "skip"` sends, its runner (holding the tick's claim in the tick ledger, so no
other runner of the task acts meanwhile) reads

- the last tick the task sent: one item per task in the coordination table (`pk`
  `sched#<prefix>#<task>`, `sk` `last-run`), written just before each send; and
- that tick's runs, from Lambda (ListDurableExecutionsByFunction by execution name, for each
  workflow the event starts),

and skips the tick (event `skipped`, counted `TicksSkipped`, logged with the running tick) when

- `running`: a run of the last tick is still alive (any status but an ended one);
- `pending`: a workflow has no run of it yet and it was sent less than `pending_s` ago (the event
  is still on its way: the events queue, a worker retry, a throttle); after that it is taken as
  lost (dead-lettered, refused) and the tick runs;
- `unknown`: Lambda could not be asked or did not answer. Fail safe: skip. A skipped tick costs
  one period and is counted; a second run beside the first cannot be taken back.

A tick that runs is recorded before its event is sent (a send that fails and is retried is the
same tick, which never overlaps itself). A skipped tick is not queued: with runs longer than the
period a queue would grow without bound. The next tick asks again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from sluice import naming
from sluice.catalog import workflows_for
from sluice.envelope import execution_name
from sluice.run_control import ENDED
from sluice.scheduling.registry import PeriodicTask, Tick, tick_event_id
from worker.scheduler.ledger import task_partition

LAST_RUN_SK = "last-run"
# Rewritten on every sent tick; the TTL only removes those of tasks long gone.
LAST_RUN_TTL_S = 400 * 86_400
RUNNING, PENDING, UNKNOWN = "running", "pending", "unknown"


@dataclass(frozen=True)
class LastRun:
    """The last tick a task sent (its due time, ms) and when it was sent (epoch ms)."""

    tick: int
    sent_ms: int


@dataclass(frozen=True)
class Verdict:
    """Whether a tick may send, and if not, which earlier tick holds it back and why."""

    run: bool
    reason: str = ""
    previous: int | None = None  # the last sent tick (ms)

    @property
    def previous_s(self) -> float | None:
        return None if self.previous is None else self.previous / 1000


class Overlapping(Exception):
    """Raised by a tick's action when the tick is skipped for overlap."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"previous tick {verdict.previous} is {verdict.reason}")
        self.verdict = verdict


class RunsUnreadable(Exception):
    """Lambda cannot say whether a tick's runs still run."""


class LastRuns(Protocol):
    def read(self, task: str) -> LastRun | None: ...

    def record(self, task: str, tick: int, now_ms: int) -> None: ...


class MemoryLastRuns:
    """The last sent ticks in this process's memory (no coordination table: one process)."""

    def __init__(self) -> None:
        self._last: dict[str, LastRun] = {}
        self._lock = threading.Lock()

    def read(self, task: str) -> LastRun | None:
        with self._lock:
            return self._last.get(task)

    def record(self, task: str, tick: int, now_ms: int) -> None:
        with self._lock:
            last = self._last.get(task)
            if last is None or last.tick <= tick:
                self._last[task] = LastRun(tick, now_ms)


class TableLastRuns:
    """The last sent ticks in the coordination table, beside the tick ledger's items."""

    def __init__(self, client: Any, table: str, prefix: str) -> None:
        self.client, self.table, self.prefix = client, table, prefix

    def _key(self, task: str) -> dict[str, Any]:
        return {"pk": task_partition(self.prefix, task), "sk": {"S": LAST_RUN_SK}}

    def read(self, task: str) -> LastRun | None:
        item = self.client.get_item(
            TableName=self.table, Key=self._key(task), ConsistentRead=True
        ).get("Item")
        if item is None:
            return None
        return LastRun(int(item["tick"]["N"]), int(item["sent"]["N"]))

    def record(self, task: str, tick: int, now_ms: int) -> None:
        # Never backwards: a fenced runner that wakes late cannot hide a newer tick's run.
        try:
            self.client.update_item(
                TableName=self.table,
                Key=self._key(task),
                UpdateExpression=f"SET tick = :tick, sent = :now, {naming.TTL_ATTRIBUTE} = :ttl",
                ConditionExpression="attribute_not_exists(pk) OR tick <= :tick",
                ExpressionAttributeValues={
                    ":tick": {"N": str(tick)},
                    ":now": {"N": str(now_ms)},
                    ":ttl": {"N": str(now_ms // 1000 + LAST_RUN_TTL_S)},
                },
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise


def _function_name(alias_arn: str) -> str:
    """`arn:…:function:NAME:live` -> NAME. ListDurableExecutionsByFunction without a qualifier
    lists the executions of every version (botocore's Lambda model, 1.44: "If you don't specify a
    qualifier, this operation returns executions across all versions of the Lambda function"):
    a run that started on the version `live` pointed to before a deploy still counts."""
    return alias_arn.split(":function:", 1)[-1].partition(":")[0]


class LambdaRuns:
    """The statuses of an event's runs, from Lambda: one ListDurableExecutionsByFunction call per
    workflow the event starts, by the execution name its id gives."""

    def __init__(self, lambda_client: Any, aliases: Mapping[str, str]) -> None:
        self.client, self.aliases = lambda_client, dict(aliases)

    def statuses(self, event_name: str, event_id: str) -> dict[str, list[str]]:
        """Workflow -> the statuses of its runs of `event_id` (empty: none started yet)."""
        name = execution_name(event_id)
        found: dict[str, list[str]] = {}
        for workflow in workflows_for(event_name):
            alias = self.aliases.get(workflow)
            if alias is None:
                raise RunsUnreadable(f"workflow {workflow} has no alias configured")
            args = {"FunctionName": _function_name(alias), "DurableExecutionName": name}
            try:
                page = self.client.list_durable_executions_by_function(**args)
            except (BotoCoreError, ClientError) as exc:
                raise RunsUnreadable(f"{workflow}: {exc}") from exc
            # The name filter matches names that contain it (boto3's documentation of the
            # parameter): only this name's runs count.
            found[workflow] = [
                str(e.get("Status", ""))
                for e in page.get("DurableExecutions", [])
                if e.get("DurableExecutionName") == name
            ]
        return found


class RunReader(Protocol):
    def statuses(self, event_name: str, event_id: str) -> dict[str, list[str]]: ...


class OverlapGuard:
    """Decides, before an event task's tick sends, whether the previous tick's run still runs."""

    def __init__(
        self,
        last_runs: LastRuns,
        runs: RunReader,
        *,
        pending_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.last_runs, self.runs, self.pending_s, self.clock = last_runs, runs, pending_s, clock

    def admit(self, task: PeriodicTask, tick: Tick) -> Verdict:
        """Whether `tick` may send now (no decision is written: see `sent`)."""
        assert task.event is not None
        try:
            last = self.last_runs.read(task.name)
        except (BotoCoreError, ClientError):
            return Verdict(False, UNKNOWN)
        if last is None or last.tick == tick.key:
            return Verdict(True)  # the task's first run, or this tick's own re-send
        previous = last.tick
        event_id = tick_event_id(Tick(task.name, previous / 1000))
        try:
            found = self.runs.statuses(task.event, event_id)
        except RunsUnreadable:
            return Verdict(False, UNKNOWN, previous)
        if any(s not in ENDED for statuses in found.values() for s in statuses):
            return Verdict(False, RUNNING, previous)
        waiting = any(not statuses for statuses in found.values())  # its event not started yet
        if waiting and self.clock() * 1000 - last.sent_ms < self.pending_s * 1000:
            return Verdict(False, PENDING, previous)
        return Verdict(True, previous=previous)

    def sent(self, task: PeriodicTask, tick: Tick) -> None:
        """Record that `tick` is about to send its event: its runs are the ones to wait for."""
        self.last_runs.record(task.name, tick.key, round(self.clock() * 1000))
