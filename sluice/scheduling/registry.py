"""The periodic tasks, in code: name, schedule, and what a tick does.

By default a tick sends the task's event to the events queue, so the work itself runs as a durable
workflow; a task may instead run a short function in the scheduler process. The same registry
drives the broker scheduler and, without a broker, generates the worker's `cron.yaml`.
Importing this module needs neither pika nor boto3 (the CDK app reads it for alarm names).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from sluice.catalog import FLOWS, workflows_for
from sluice.envelope import Event
from sluice.scheduling.schedule import Cron, Every, Schedule, ScheduleError

# The consumer groups (Procfile processes) whose scheduler runners may run a task's ticks: light
# work on the `scheduler` process (the default), CPU-heavy work on the `tasks` process.
GROUPS = ("scheduler", "tasks")
# What an event task's tick does while the run its previous tick started still runs
# (worker/scheduler/overlap.py): `skip` it (counted, logged) or `allow` a second run beside it.
OVERLAP = ("skip", "allow")
_TASK_NAME = re.compile(r"[a-z][a-z0-9-]{0,47}")  # fullmatch: `$` passes a final newline
CRON_URL_PREFIX = "/cron/"
log = logging.getLogger("sluice.scheduler")


@dataclass(frozen=True)
class Tick:
    """One due run of a task: `due` is its place on the grid (epoch seconds), never the clock."""

    task: str
    due: float
    attempt: int = 1
    # A one-off's payload (sluice/scheduling/oneoff.py); a periodic tick has none.
    data: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def key(self) -> int:
        """The tick's identity: its due time in milliseconds."""
        return round(self.due * 1000)

    @property
    def due_iso(self) -> str:
        return datetime.fromtimestamp(self.due, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Token:
    """A task's token: the tick it stands for, the attempt it brings (a retry carries its count),
    whether an operator redrove it from the dead-letter queue, and the generation of the task's
    schedule it was made for (sluice/scheduling/overrides.py: a re-timed task drops older ones)."""

    task: str
    due: float
    attempt: int = 1
    redrive: bool = False
    gen: int = 0

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": 1, "task": self.task, "due": self.due}
        if self.attempt > 1:
            body["attempt"] = self.attempt
        if self.redrive:
            body["redrive"] = True
        if self.gen:
            body["gen"] = self.gen
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, body: bytes) -> Token:
        """The token in `body`; ValueError when it is not one."""
        try:
            doc = json.loads(body)
            return cls(
                str(doc["task"]),
                float(doc["due"]),
                int(doc.get("attempt", 1)),
                bool(doc.get("redrive", False)),
                int(doc.get("gen", 0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a token: {body[:200]!r}") from exc


Action = Callable[[Tick], None]


@dataclass(frozen=True)
class PeriodicTask:
    """A task that runs on `schedule`: it sends `event` (the default) or runs `action`."""

    name: str
    schedule: Schedule
    event: str | None = None
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    action: Action | None = None
    # Transient failures of one tick are redelivered until this many attempts, then the tick is
    # dead-lettered and the schedule moves on.
    max_attempts: int = 3
    # The lateness bound: a tick is started at most this many seconds after its due time, or
    # skipped and counted missed. Without one, the latest due tick runs however late (never
    # more than one period late: a later tick would be the latest due one by then).
    max_lateness_s: float | None = None
    # The consumer group whose processes run the ticks (GROUPS); the others leave them alone.
    group: str = GROUPS[0]
    # An event task's tick is skipped while the run of the last tick it started still runs
    # (OVERLAP); a function task's runs never overlap (the tick ledger), so it takes the default.
    overlap: str = OVERLAP[0]

    def __post_init__(self) -> None:
        if not _TASK_NAME.fullmatch(self.name):
            raise ScheduleError(
                f"task name must be 1-48 chars of [a-z0-9-] starting with a letter, got {self.name!r}"
            )
        if (self.event is None) == (self.action is None):
            raise ScheduleError(f"task {self.name}: give exactly one of event or action")
        if self.max_attempts < 1:
            raise ScheduleError(f"task {self.name}: max_attempts must be >= 1")
        if self.max_lateness_s is not None and not self.max_lateness_s > 0:
            raise ScheduleError(f"task {self.name}: max_lateness_s must be > 0")
        if self.group not in GROUPS:
            raise ScheduleError(
                f"task {self.name}: group must be one of {', '.join(GROUPS)}, got {self.group!r}"
            )
        if self.overlap not in OVERLAP:
            raise ScheduleError(
                f"task {self.name}: overlap must be one of {', '.join(OVERLAP)}, "
                f"got {self.overlap!r}"
            )
        if self.event is None and self.overlap != OVERLAP[0]:
            raise ScheduleError(
                f"task {self.name}: overlap={self.overlap!r} applies to event tasks only; a "
                "function task's runs never overlap (the tick ledger admits one claim at a time)"
            )
        if self.event is not None:
            self.tick_event(Tick(self.name, 0.0))  # validates the event name and data now
            if self.overlap == OVERLAP[0]:
                _check_overlap_skip(self.name, self.event)

    @property
    def period_s(self) -> float:
        return self.schedule.nominal_period_s

    def tick_event(self, tick: Tick) -> Event:
        """The event one tick sends. Everything in it, its time too, comes from the task and the
        tick, never from the clock or the attempt: every send of one tick is the same event, so
        the worker's idempotent start (keyed by the id) starts it once."""
        if self.event is None:
            raise ScheduleError(f"task {self.name} runs a function and sends no event")
        data = {**self.data, "task": self.name, "scheduled_at": tick.due_iso}
        return Event(name=self.event, data=data, id=tick_event_id(tick), ts=tick.due_iso)


def tick_event_id(tick: Tick) -> str:
    """The id of the event a tick sends (its runs' durable execution name is derived from it)."""
    return f"tick-{tick.task}-{tick.key}"


def _check_overlap_skip(name: str, event: str) -> None:
    """`overlap = "skip"` finds the previous tick's runs by the execution name its event id
    gives; a workflow that starts runs under other names (a debounce or a batch runs with a
    later event) would never be found running, so that combination is refused."""
    for workflow in workflows_for(event):
        flow = FLOWS.get(workflow)
        for setting in ("debounce", "batch"):
            if flow is not None and getattr(flow, setting) is not None:
                raise ScheduleError(
                    f"task {name}: overlap='skip' cannot see the runs of {workflow}, which "
                    f"declares {setting} (its runs are not named after the tick's event); "
                    "set overlap='allow' or send an event of another workflow"
                )


class Registry:
    """The periodic tasks of one deployment, by name."""

    def __init__(self, tasks: Iterable[PeriodicTask]) -> None:
        self._tasks: dict[str, PeriodicTask] = {}
        for task in tasks:
            if task.name in self._tasks:
                raise ScheduleError(f"task {task.name} is registered twice")
            self._tasks[task.name] = task

    def __iter__(self) -> Iterator[PeriodicTask]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def get(self, name: str) -> PeriodicTask:
        try:
            return self._tasks[name]
        except KeyError:
            raise KeyError(f"unknown periodic task {name!r}") from None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._tasks)


def cron_yaml(registry: Registry, *, url_prefix: str = CRON_URL_PREFIX) -> str:
    """The worker's cron.yaml for `registry` (EB's format: version 1, UTC, minute granularity).

    Written as JSON-compatible YAML (every scalar quoted) so it needs no YAML library.
    """
    lines = ["version: 1", "cron:"]
    if not len(registry):
        lines[-1] = "cron: []"
    for task in registry:
        lines.append(f"  - name: {json.dumps(task.name)}")
        lines.append(f"    url: {json.dumps(url_prefix + task.name)}")
        lines.append(f"    schedule: {json.dumps(task.schedule.cron_expression())}")
    return "\n".join(lines) + "\n"


def _minute(scheduled_at: str | None) -> float:
    """sqsd's X-Aws-Sqsd-Scheduled-At (ISO 8601) as epoch seconds, floored to the minute."""
    when = datetime.now(UTC)
    if scheduled_at:
        try:
            when = datetime.fromisoformat(scheduled_at.replace("Z", "+00:00"))
        except ValueError:
            raise ScheduleError(f"bad scheduled-at time {scheduled_at!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return when.replace(second=0, microsecond=0).timestamp()


def heartbeat(tick: Tick) -> None:
    """The scheduler's own canary: one structured log line per tick proves ticks are flowing."""
    log.info(json.dumps({"scheduler": "heartbeat", "task": tick.task, "due": tick.due_iso}))


# The deployment's periodic tasks. Add event-sending tasks here with the name of an event that
# `sluice.catalog.ROUTES` routes to a workflow, e.g.
#   PeriodicTask("reindex", Every(3600), event="media/embedding.requested", data={...}).
REGISTRY = Registry([PeriodicTask("heartbeat", Every(60), action=heartbeat)])


def cron_tick(
    task_name: str, scheduled_at: str | None = None, *, registry: Registry | None = None
) -> tuple[PeriodicTask, Tick]:
    """The task and tick a cron POST stands for (sqsd's Taskname and Scheduled-At headers)."""
    task = (registry or REGISTRY).get(task_name)
    return task, Tick(task.name, _minute(scheduled_at))


def cron_event(
    task_name: str, scheduled_at: str | None = None, *, registry: Registry | None = None
) -> Event:
    """The event a cron POST of `task_name` turns into (same id for the same scheduled minute)."""
    task, tick = cron_tick(task_name, scheduled_at, registry=registry)
    return task.tick_event(tick)


__all__ = [
    "CRON_URL_PREFIX",
    "GROUPS",
    "OVERLAP",
    "REGISTRY",
    "Cron",
    "Every",
    "PeriodicTask",
    "Registry",
    "Tick",
    "Token",
    "cron_event",
    "cron_tick",
    "cron_yaml",
    "tick_event_id",
]
