"""Periodic tasks changed at run time: the overrides of the registry in code, and where they live.

The registry in code (sluice/scheduling/registry.py) is the declared defaults. An operator adds,
removes, pauses, resumes or re-times a task (`sluice schedules add|remove|pause|resume|set`);
the change is written to one item of the coordination table (`pk` `sched#<prefix>`, `sk`
`overrides`), which is the durable record every scheduler process reads, and a message on the
broker's registry exchange only prompts them to read it at once (each also re-reads it every
few seconds, so a lost prompt delays a change, never loses it). The table, not a queue, holds
the state: a change must outlive broker restarts and recreated queues, be read whole by a process
that starts later, and be written by a conditional update (no lost update between two operators).

Importing this module needs neither boto3 nor pika: the DynamoDB client is passed in.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from botocore.exceptions import ClientError

from sluice import catalog
from sluice.scheduling.registry import GROUPS, OVERLAP, PeriodicTask, Registry
from sluice.scheduling.schedule import Cron, Every, Schedule, ScheduleError

Origin = Literal["declared", "added", "overridden"]
OVERRIDES_SK = "overrides"
# How often every scheduler process re-reads the overrides without a prompt (seconds).
REREAD_S = 5.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


class OverrideError(ScheduleError):
    """A runtime change that cannot be made; `field` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def parse_period(text: str) -> float:
    """`250ms`, `30s`, `5m`, `1h`, `1d` or a bare number of seconds, as seconds."""
    m = _DURATION.fullmatch(text.strip())
    seconds = float(m[1]) * _UNIT_S[m[2] or "s"] if m else float("nan")
    if not (math.isfinite(seconds) and seconds > 0):
        raise OverrideError("period", f"{text!r} is not a period (e.g. 250ms, 30s, 5m, 1h)")
    return seconds


def parse_data(text: str) -> dict[str, Any]:
    """A JSON object: the payload of an event task's ticks."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise OverrideError("data", f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise OverrideError("data", f"must be a JSON object, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Override:
    """What the operator changed about one task (None: as declared). A task that is not declared
    is `added` and carries everything a task needs; `removed` disables a task (it runs no tick,
    its token ends; a declared task's code stays, and `add` brings either back). `gen` counts schedule changes: the token of
    an older schedule is dropped when it arrives, so a re-timed task does not run its old tick."""

    every_s: float | None = None
    cron: str | None = None
    event: str | None = None
    data: Mapping[str, Any] | None = None
    group: str | None = None
    paused: bool = False
    removed: bool = False
    gen: int = 0
    # skip or allow a tick while the previous tick's run still runs (registry.OVERLAP)
    overlap: str | None = None

    def to_doc(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if v not in (None, False, 0)}
        if self.data is not None:
            doc["data"] = dict(self.data)
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Override:
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        return cls(**known)

    def schedule(self) -> Schedule | None:
        if self.cron is not None:
            return Cron(self.cron)
        return Every(self.every_s) if self.every_s is not None else None


@dataclass(frozen=True)
class Entry:
    """One task of the effective registry: the task as it runs now, and where it came from."""

    task: PeriodicTask
    origin: Origin
    paused: bool = False
    disabled: bool = False  # a declared task the operator removed
    gen: int = 0

    @property
    def active(self) -> bool:
        """Runs its ticks (not paused, not removed)."""
        return not (self.paused or self.disabled)

    @property
    def state(self) -> str:
        return "removed (disabled)" if self.disabled else ("paused" if self.paused else "active")


def _task(name: str, declared: PeriodicTask | None, o: Override) -> PeriodicTask:
    """The task an override makes of `declared` (None: an added task); OverrideError names the
    field at fault."""
    try:
        schedule = o.schedule()
    except ScheduleError as exc:
        raise OverrideError("cron" if o.cron is not None else "period", str(exc)) from None
    if o.group is not None and o.group not in GROUPS:
        raise OverrideError("group", f"{o.group!r} is not a consumer group ({', '.join(GROUPS)})")
    if o.event is not None and not catalog.is_known(o.event):
        raise OverrideError("event", f"{o.event!r} is not an event any workflow takes")
    if o.overlap is not None and o.overlap not in OVERLAP:
        raise OverrideError("overlap", f"{o.overlap!r} is not one of {', '.join(OVERLAP)}")
    if declared is None:
        if schedule is None:
            raise OverrideError("period", f"new task {name} needs a period or a cron schedule")
        if o.event is None:
            raise OverrideError("event", f"new task {name} needs the event its ticks send")
        try:
            return PeriodicTask(
                name,
                schedule,
                event=o.event,
                data=MappingProxyType(dict(o.data or {})),
                group=o.group or GROUPS[0],
                overlap=o.overlap or OVERLAP[0],
            )
        except ScheduleError as exc:
            raise OverrideError(_field_of(exc, "task"), str(exc)) from None
    if o.data is not None and declared.action is not None:
        raise OverrideError("data", f"task {name} runs {declared.action.__name__}(): no payload")
    if o.event is not None and declared.action is not None:
        raise OverrideError("event", f"task {name} runs {declared.action.__name__}(): no event")
    changes: dict[str, Any] = {}
    if schedule is not None:
        changes["schedule"] = schedule
    if o.data is not None:
        changes["data"] = MappingProxyType(dict(o.data))
    if o.event is not None:
        changes["event"] = o.event
    if o.group is not None:
        changes["group"] = o.group
    if o.overlap is not None:
        changes["overlap"] = o.overlap
    try:
        return replace(declared, **changes)
    except ScheduleError as exc:
        raise OverrideError(_field_of(exc, "data"), str(exc)) from None


def _field_of(exc: ScheduleError, default: str) -> str:
    """The field a task's own check refused: `overlap` when its message names it."""
    return "overlap" if "overlap" in str(exc) else default


def effective(declared: Registry, overrides: Mapping[str, Override]) -> list[Entry]:
    """The registry as it runs: the declared tasks with their overrides, then the added ones.
    An override that no longer fits its task (the code changed under it) is skipped for the
    declared task, which then runs as declared."""
    out: list[Entry] = []
    for task in declared:
        o = overrides.get(task.name)
        if o is None:
            out.append(Entry(task, "declared"))
            continue
        try:
            changed = _task(task.name, task, o)
        except OverrideError:
            changed = task
        origin: Origin = "overridden" if changed != task else "declared"
        out.append(Entry(changed, origin, o.paused, o.removed, o.gen))
    for name, o in overrides.items():
        if name in declared:
            continue
        try:
            # A removed one stays, disabled: its runner ends the token it may still have.
            out.append(Entry(_task(name, None, o), "added", o.paused, o.removed, o.gen))
        except OverrideError:
            continue  # an added task the code can no longer run (its event is gone)
    return out


@dataclass(frozen=True)
class Overrides:
    """The stored overrides and their version (the write condition)."""

    version: int = 0
    tasks: Mapping[str, Override] = field(default_factory=dict)


class OverrideStore:
    """The overrides in the coordination table (a DynamoDB client: boto3's or moto's)."""

    def __init__(self, client: Any, table: str, prefix: str) -> None:
        self.client, self.table, self.prefix = client, table, prefix

    @property
    def key(self) -> dict[str, Any]:
        return {"pk": {"S": f"sched#{self.prefix}"}, "sk": {"S": OVERRIDES_SK}}

    def read(self) -> Overrides:
        item = self.client.get_item(TableName=self.table, Key=self.key, ConsistentRead=True).get(
            "Item"
        )
        if item is None:
            return Overrides()
        doc = json.loads(item["doc"]["S"])
        return Overrides(
            int(item["version"]["N"]), {k: Override.from_doc(v) for k, v in doc.items()}
        )

    def update(
        self, change: Callable[[dict[str, Override]], None], *, attempts: int = 5
    ) -> Overrides:
        """Apply `change` to the overrides (it edits the dict in place) and write them, if no
        one else wrote in between (else read again and retry)."""
        for _ in range(attempts):
            current = self.read()
            tasks = dict(current.tasks)
            change(tasks)
            doc = json.dumps({k: v.to_doc() for k, v in sorted(tasks.items())}, sort_keys=True)
            version = current.version + 1
            try:
                self.client.put_item(
                    TableName=self.table,
                    Item={**self.key, "doc": {"S": doc}, "version": {"N": str(version)}},
                    ConditionExpression="attribute_not_exists(pk) OR version = :v",
                    ExpressionAttributeValues={":v": {"N": str(current.version)}},
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                    continue
                raise
            return Overrides(version, tasks)
        raise RuntimeError(f"overrides changed {attempts} times while writing; try again")


def change(
    declared: Registry,
    current: Mapping[str, Override],
    name: str,
    op: Literal["add", "set", "pause", "resume", "remove"],
    **fields: Any,
) -> Override:
    """The override of task `name` after `op`, checked against
    the declared registry; OverrideError names the field at fault."""
    known = (name in declared or name in current) and not current.get(name, Override()).removed
    old = current.get(name, Override())
    if op == "add":
        if known:
            raise OverrideError("task", f"task {name} exists; change it with `set`")
        if name in declared:  # a removed declared task: back as declared, plus the changes
            new = replace(old, removed=False, **fields)
        elif name in current:  # a removed added task: as given now, on a new generation
            new = Override(**fields, gen=old.gen + 1)
        else:
            new = Override(**fields, gen=old.gen + 1)  # an older token of the name is stale
    elif not known:
        names = sorted({t.task.name for t in effective(declared, current)})
        raise OverrideError("task", f"unknown task {name!r}; tasks: {', '.join(names)}")
    elif op == "set":
        if not fields:
            raise OverrideError(
                "task", "nothing to change: give a period, cron, data, group or overlap"
            )
        new = replace(old, **fields)
        if "every_s" in fields:
            new = replace(new, cron=None)
        if "cron" in fields:
            new = replace(new, every_s=None)
        if "every_s" in fields or "cron" in fields or "group" in fields:
            new = replace(new, gen=old.gen + 1)
    elif op in ("pause", "resume"):
        new = replace(old, paused=op == "pause")
    else:  # remove: kept as a tombstone, so a task added again counts its generation on
        new = replace(old, removed=True, paused=False)
    # Validate by building the task (a removed declared task is checked as it would run).
    _task(name, declared.get(name) if name in declared else None, replace(new, removed=False))
    return new


__all__ = [
    "OVERRIDES_SK",
    "REREAD_S",
    "Entry",
    "Override",
    "OverrideError",
    "OverrideStore",
    "Overrides",
    "change",
    "effective",
    "parse_data",
    "parse_period",
]
