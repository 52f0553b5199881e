"""Workflow declarations: one `workflow.toml` beside each workflow's code
(`lambdas/workflows/<name>/workflow.toml`), the one place a workflow is described.

Everything else derives from the declarations: the stacks build each workflow's durable Lambda,
alias, role, step Lambdas, alarms and dashboard widgets from them; the routes (event name ->
workflows) the worker and the producer use are computed from their `events`; the durable Lambda
reads its own declaration for its retries, timeout, concurrency and failure handler; the README's
workflow table is rendered from them (docs/workflows.md).

This module only reads files from a directory it is given (it imports nothing of the code that
uses it): the stacks pass the repository's `lambdas/workflows`, and stage the routes into every
bundle that ships `sluice` as `sluice/workflows.json` (`routes_document`), which
`sluice.catalog` reads at run time.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sluice.envelope import Event

FILE = "workflow.toml"
# Lambda durable functions: ExecutionTimeout is at most 366 days.
DURABLE_MAX_EXECUTION_S = 31_622_400
# Time the durable Lambda keeps after a declared timeout to run the failure handler: its
# ExecutionTimeout is timeout_s + this (see lambdas/common/workflow.py).
FAILURE_GRACE_S = 3600
MAX_TIMEOUT_S = DURABLE_MAX_EXECUTION_S - FAILURE_GRACE_S
# A workflow's name is a Python package name, a Lambda handler path and part of resource names.
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
# Event names (sluice.envelope's pattern).
_EVENT = re.compile(r"[a-z][a-z0-9-]*(/[a-z0-9][a-z0-9._-]*)+")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def value_at(doc: Any, path: str) -> str | None:
    """The value at a declared dotted `path` (`data.customer_id`) of an event's document, as
    text (a string as is, other values as JSON); None when it is absent, null or empty."""
    for part in path.split("."):
        if not isinstance(doc, Mapping) or part not in doc:
            return None
        doc = doc[part]
    if doc is None or doc == "":
        return None
    return doc if isinstance(doc, str) else json.dumps(doc, sort_keys=True)


MISSING_KEY = "<missing>"


def key_value(event: Mapping[str, Any], path: str) -> str:
    """The value at dotted `path` of the event (`data.customer_id`); MISSING_KEY when absent
    (events without the field share one key: they are limited together, never unlimited)."""
    value = value_at(event, path)
    return MISSING_KEY if value is None else value


class DeclarationError(ValueError):
    """A declaration is invalid; the message names the file and the setting."""


def _dotted(value: str | None) -> str | None:
    if value is not None and not _KEY.fullmatch(value):
        raise ValueError(f'must be a dotted path such as "data.customer_id", got {value!r}')
    return value


# A dotted path into the event (`data.customer_id`): what groups runs under a limit or a control.
DottedPath = Annotated[str, AfterValidator(_dotted)]


class Concurrency(BaseModel):
    """How many runs of a workflow may execute at once (enforced by lambdas/common/concurrency)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int | None = Field(None, ge=1, description="runs of the workflow executing at once")
    key: DottedPath | None = Field(
        None, description='dotted path into the event, e.g. "data.customer_id"'
    )
    key_limit: int | None = Field(None, ge=1, description="runs per key value at once (needs key)")

    @model_validator(mode="after")
    def _key_and_limit(self) -> Concurrency:
        if self.key_limit is not None and self.key is None:
            raise ValueError("key_limit needs key")
        if self.key is not None and self.key_limit is None:
            raise ValueError("key needs key_limit")
        return self


class CancelOn(BaseModel):
    """An event that cancels the workflow's runs it matches (sluice/run_control.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str = Field(description="the event name that cancels, e.g. media/deleted")
    match: str = Field(
        description="dotted path into the run's event whose value the cancelling event names, "
        'e.g. "data.media_id"'
    )
    on: str | None = Field(
        None, description="the path of that value in the cancelling event (default: match)"
    )

    @field_validator("event")
    @classmethod
    def _event(cls, value: str) -> str:
        if not _EVENT.fullmatch(value):
            raise ValueError(f"malformed event name {value!r} (e.g. media/deleted)")
        return value

    @field_validator("match", "on")
    @classmethod
    def _dotted(cls, value: str | None) -> str | None:
        if value is not None and not _KEY.fullmatch(value):
            raise ValueError(f'must be a dotted path such as "data.media_id", got {value!r}')
        return value

    @property
    def event_path(self) -> str:
        """Where the cancelling event holds the value."""
        return self.on or self.match


# Flow control (docs/flow-control.md): what bounds its windows and queues.
MAX_PERIOD_S = 86_400  # a rate limit's or a throttle's period, a debounce's waits
MAX_WINDOW_LIMIT = 1000  # events counted in one window: their ids are one DynamoDB item's set
MAX_IDEMPOTENCY_WINDOW_S = 30 * 86_400
MAX_PRIORITY = 100
# SQS delays a message at most 15 minutes: a debounce's waits are wake-ups of one delay each.
SQS_MAX_DELAY_S = 900
# A batch's events are started in one payload and forgotten in one transaction (100 items).
MAX_BATCH = 50


class _Window(BaseModel):
    """At most `limit` starts per `period_s` per key value (fixed windows aligned to the epoch)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(ge=1, le=MAX_WINDOW_LIMIT, description="starts per period per key")
    period_s: int = Field(ge=1, le=MAX_PERIOD_S, description="the window's length (s)")
    key: DottedPath | None = Field(None, description="dotted path: one window per value")


class RateLimit(_Window):
    """Starts over the limit are skipped (counted and logged), not retried."""


class Throttle(_Window):
    """Starts over the limit wait in the coordination table and start in a later window."""


class Idempotency(BaseModel):
    """A second event with the same key within `window_s` starts nothing (a duplicate)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: tuple[DottedPath, ...] = Field(
        min_length=1, max_length=8, description="dotted paths whose values, joined, are the key"
    )
    window_s: int = Field(ge=1, le=MAX_IDEMPOTENCY_WINDOW_S, description="how long a key holds")


class Priority(BaseModel):
    """The order of waiting starts (a throttle's held events, the runs queued for concurrency
    slots): the integer at `key`, clamped to 0..max (else `default`), plus one per `aging_s`
    waited; higher first, then arrival order (`rank`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: DottedPath = Field(description="dotted path to an integer")
    max: int = Field(9, ge=1, le=MAX_PRIORITY, description="the highest priority")
    default: int = Field(0, ge=0, description="when the event has no integer there")
    aging_s: int = Field(60, ge=1, le=MAX_PERIOD_S, description="waited seconds per +1")

    @model_validator(mode="after")
    def _bounded(self) -> Priority:
        if self.default > self.max:
            raise ValueError(f"default: must be <= max ({self.max}), got {self.default}")
        return self

    def of(self, doc: Mapping[str, Any]) -> int:
        """The priority of an event's document: the integer at `key`, clamped to 0..max; the
        default when there is none."""
        try:
            value = int(key_value(doc, self.key))
        except ValueError:
            return self.default
        return min(max(value, 0), self.max)


def rank(
    priority: Priority | None, level: int, arrival_ms: int, now_ms: int, name: str
) -> tuple[int, int, str]:
    """The sort key of a waiting start (the one rule for a throttle's queue and the concurrency
    slots' queue): its priority `level` aged by one per `aging_s` waited, up to the highest,
    then arrival, then name. Any start reaches the highest priority after `max * aging_s`, and
    then only the starts that arrived before it go first: none waits forever. Without a
    declared priority: arrival order."""
    effective = level
    if priority is not None:
        aged = (now_ms - arrival_ms) // (priority.aging_s * 1000)
        effective = min(priority.max, level + max(0, aged))
    return (-effective, arrival_ms, name)


class Debounce(BaseModel):
    """One start per key after `quiet_s` without events, with the last one (at the latest
    `max_wait_s` after the first)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quiet_s: int = Field(ge=1, le=SQS_MAX_DELAY_S, description="quiet period (s)")
    max_wait_s: int | None = Field(None, ge=1, le=SQS_MAX_DELAY_S, description="at most (s)")
    key: DottedPath | None = Field(None, description="dotted path: one debounce per value")

    @model_validator(mode="after")
    def _longer(self) -> Debounce:
        if self.max_wait_s is not None and self.max_wait_s < self.quiet_s:
            raise ValueError(
                f"max_wait_s: must be >= quiet_s ({self.quiet_s}), got {self.max_wait_s}"
            )
        return self


class Batch(BaseModel):
    """Up to `size` events, or those that arrived within `window_s` of the first, per key: one
    run whose event carries them in `data.events` (in arrival order)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(ge=1, le=MAX_BATCH, description="events per run at most")
    window_s: int = Field(ge=1, le=SQS_MAX_DELAY_S, description="from the first event (s)")
    key: DottedPath | None = Field(None, description="dotted path: one batch per value")


FLOW_SETTINGS = ("idempotency", "rate_limit", "throttle", "priority", "debounce", "batch")


class Flow(BaseModel):
    """A workflow's flow control: what the worker decides before it starts a run
    (worker/flow.py, docs/flow-control.md). Every control is optional. `cancel_on` is the
    declaration's (Declaration): the worker also drops the events it holds that a cancellation
    names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    idempotency: Idempotency | None = Field(None, description="duplicates start nothing")
    rate_limit: RateLimit | None = Field(None, description="starts over the limit are skipped")
    throttle: Throttle | None = Field(None, description="starts over the limit wait")
    priority: Priority | None = Field(None, description="the order of waiting starts")
    debounce: Debounce | None = Field(None, description="one start per quiet period")
    batch: Batch | None = Field(None, description="one start per batch of events")
    cancel_on: tuple[CancelOn, ...] = Field(
        (), description="events that cancel a running run whose event matches theirs"
    )

    @model_validator(mode="after")
    def _combinations(self) -> Flow:
        if self.debounce is not None and (self.throttle or self.rate_limit or self.batch):
            raise ValueError("debounce: cannot be combined with throttle, rate_limit or batch")
        if self.batch is not None and (self.throttle or self.rate_limit):
            raise ValueError("batch: cannot be combined with throttle or rate_limit")
        return self

    @property
    def controlled(self) -> bool:
        """Whether the worker decides anything before a start (a priority alone orders only
        the concurrency slots' queue, which the run itself keeps)."""
        return any(getattr(self, name) is not None for name in FLOW_SETTINGS if name != "priority")

    def flow(self) -> Flow:
        """Only the flow control (what the worker is given)."""
        return Flow.model_validate(self.model_dump(include={*FLOW_SETTINGS, "cancel_on"}))


class Declaration(Flow):
    """One workflow, as its `workflow.toml` declares it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="the workflow's name: its folder under lambdas/workflows/")
    description: str = Field("", description="what the workflow does, one line")
    events: tuple[str, ...] = Field(
        min_length=1, description="the event names that start it (one execution per event id)"
    )
    retries: int = Field(
        3, ge=0, le=20, description="retries of each step on transient failures (attempts - 1)"
    )
    timeout_s: int = Field(
        7 * 86_400,
        ge=60,
        description="execution timeout (s); the failure handler runs when it passes",
    )
    concurrency: Concurrency | None = Field(None, description="runs executing at once")
    cancel_on: tuple[CancelOn, ...] = Field(
        (), description="events that cancel a running run whose event matches theirs"
    )
    on_failure: str = Field(
        "on_failure",
        description="the step Lambda run once when a run ends badly (lambdas/steps/<name>)",
    )
    steps: tuple[str, ...] = Field(
        (), description="the step Lambdas it invokes (lambdas/steps/<name>)"
    )
    uses: tuple[Literal["jobs_table", "tasks_queue"], ...] = Field(
        (),
        description="what the workflow function itself touches (its steps have their own "
        "grants): jobs_table (it claims its job), tasks_queue (heavy steps run by the worker)",
    )

    @field_validator("id", "on_failure")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"must match {_NAME.pattern}, got {value!r}")
        return value

    @field_validator("timeout_s")
    @classmethod
    def _durable_limit(cls, value: int) -> int:
        if value > MAX_TIMEOUT_S:
            raise ValueError(
                f"must be <= {MAX_TIMEOUT_S} s, got {value}: Lambda durable functions allow an "
                f"ExecutionTimeout of at most {DURABLE_MAX_EXECUTION_S} s (366 days), and the "
                f"failure handler keeps {FAILURE_GRACE_S} s after the declared timeout"
            )
        return value

    @field_validator("steps")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for step in value:
            if not _NAME.fullmatch(step):
                raise ValueError(f"must match {_NAME.pattern}, got {step!r}")
        if len(set(value)) != len(value):
            raise ValueError("a step is named twice")
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _EVENT.fullmatch(name):
                raise ValueError(f"malformed event name {name!r} (e.g. media/uploaded)")
        if len(set(value)) != len(value):
            raise ValueError("an event is named twice")
        return value

    @model_validator(mode="after")
    def _priority_orders(self) -> Declaration:
        if self.priority is not None and self.throttle is None and self.concurrency is None:
            raise ValueError(
                "priority: needs throttle or concurrency (it orders the starts they hold)"
            )
        return self

    @model_validator(mode="after")
    def _handler_apart(self) -> Declaration:
        if self.on_failure in self.steps:
            raise ValueError(f"on_failure: {self.on_failure!r} is also one of the steps")
        return self

    @model_validator(mode="after")
    def _cancel_apart(self) -> Declaration:
        seen = set()
        for cancel in self.cancel_on:
            if cancel.event in self.events:
                raise ValueError(
                    f"cancel_on: {cancel.event!r} also starts the workflow: its runs would "
                    "cancel the runs it starts"
                )
            if cancel in seen:
                raise ValueError(f"cancel_on: {cancel.event!r} matching {cancel.match!r} twice")
            seen.add(cancel)
        return self

    @property
    def attempts(self) -> int:
        """Attempts of each step: the first and `retries` more."""
        return self.retries + 1

    @property
    def execution_timeout_s(self) -> int:
        """The durable function's ExecutionTimeout: the declared timeout and the handler's grace."""
        return self.timeout_s + FAILURE_GRACE_S

    @property
    def lambdas(self) -> tuple[str, ...]:
        """Every step Lambda the workflow invokes, its failure handler included."""
        return (*self.steps, *((self.on_failure,) if self.on_failure not in self.steps else ()))


def _where(loc: Iterable[Any]) -> str:
    return ".".join(str(p) for p in loc if not isinstance(p, int))


def parse(path: Path, *, known_events: Iterable[str] | None = None, label: str = "") -> Declaration:
    """The declaration in `path` (a workflow.toml), validated; DeclarationError names the file
    (as `label`, default the path) and the setting."""
    where = label or str(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeclarationError(f"{where}: {exc}") from None
    folder = path.parent.name
    doc.setdefault("id", folder)
    try:
        decl = Declaration.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        message = str(err["msg"]).removeprefix("Value error, ")
        limits = err.get("ctx") or {}
        if err["type"] == "extra_forbidden":
            message = "unknown setting"
        elif err["type"] == "greater_than_equal":
            message = f"must be >= {limits['ge']}, got {err['input']!r}"
        elif err["type"] == "less_than_equal":
            message = f"must be <= {limits['le']}, got {err['input']!r}"
        elif err["type"] == "missing":
            message = "required"
        setting = _where(err["loc"])
        raise DeclarationError(f"{where}: {setting + ': ' if setting else ''}{message}") from None
    if decl.id != folder:
        raise DeclarationError(
            f"{where}: id: must be the folder's name {folder!r}, got {decl.id!r}"
        )
    if known_events is not None:
        known = set(known_events)
        named = [("events", n) for n in decl.events]
        named += [("cancel_on.event", c.event) for c in decl.cancel_on]
        for setting, name in named:
            if name not in known:
                raise DeclarationError(
                    f"{where}: {setting}: unknown event {name!r}; known events: "
                    f"{', '.join(sorted(known))} (declare a new one in sluice/catalog.py EVENTS)"
                )
    return decl


def load(root: Path, *, known_events: Iterable[str] | None = None) -> dict[str, Declaration]:
    """Every `root/<name>/workflow.toml`, validated, by workflow name (sorted)."""
    if not root.is_dir():
        raise DeclarationError(f"{root}: no such directory of workflows")
    known = None if known_events is None else tuple(known_events)
    found: dict[str, Declaration] = {}
    for path in sorted(root.glob(f"*/{FILE}")):
        label = _label(path, root)
        found[path.parent.name] = parse(path, known_events=known, label=label)
    return found


def _label(path: Path, root: Path) -> str:
    """`lambdas/workflows/x/workflow.toml` for the repository's, the path for others."""
    parts = path.parts
    if len(parts) >= 4 and parts[-4] == "lambdas" and parts[-3] == "workflows":
        return "/".join(parts[-4:])
    return str(path)


def step_names(declarations: Mapping[str, Declaration]) -> tuple[str, ...]:
    """Every step Lambda the workflows invoke (failure handlers included), each once, sorted."""
    return tuple(sorted({step for d in declarations.values() for step in d.lambdas}))


def routes(declarations: Mapping[str, Declaration]) -> dict[str, tuple[str, ...]]:
    """Event name -> the workflows it starts (by workflow name), both sorted."""
    table: dict[str, list[str]] = {}
    for name in sorted(declarations):
        for event in declarations[name].events:
            table.setdefault(event, []).append(name)
    return {event: tuple(table[event]) for event in sorted(table)}


Cancels = dict[str, tuple[tuple[str, str], ...]]


def cancels(declarations: Mapping[str, Declaration]) -> Cancels:
    """Event name -> the (workflow, path in the event) pairs whose runs it cancels, sorted."""
    table: dict[str, list[tuple[str, str]]] = {}
    for name in sorted(declarations):
        for cancel in declarations[name].cancel_on:
            table.setdefault(cancel.event, []).append((name, cancel.event_path))
    return {event: tuple(sorted(set(table[event]))) for event in sorted(table)}


def routes_document(declarations: Mapping[str, Declaration]) -> str:
    """What the stacks stage into each bundle as `sluice/workflows.json`: the workflows, the
    routes, the cancelling events and the flow controls (sluice.catalog reads it at run time)."""
    return json.dumps(
        {
            "workflows": sorted(declarations),
            "routes": {event: list(names) for event, names in routes(declarations).items()},
            "cancels": {
                event: [list(pair) for pair in pairs]
                for event, pairs in cancels(declarations).items()
            },
            "flow": {
                name: f.model_dump(exclude_none=True) for name, f in flows(declarations).items()
            },
        },
        indent=1,
        sort_keys=True,
    )


def read_routes_document(
    text: str,
) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]], Cancels]:
    """(workflows, routes, cancels) from a `routes_document`."""
    doc = json.loads(text)
    return (
        tuple(doc["workflows"]),
        {e: tuple(w) for e, w in doc["routes"].items()},
        {e: tuple((w, m) for w, m in pairs) for e, pairs in doc.get("cancels", {}).items()},
    )


def flows(declarations: Mapping[str, Declaration]) -> dict[str, Flow]:
    """Workflow -> its flow control, for the workflows that declare any."""
    return {name: d.flow() for name, d in sorted(declarations.items()) if d.controlled}


def with_throttles(
    declared: Mapping[str, Flow], throttles: Mapping[str, Throttle]
) -> Mapping[str, Flow]:
    """`declared` with the throttles of `throttles` in place of those workflows' own (a local
    run's short windows, devtools/local). Only a declared throttle can be replaced."""
    if not throttles:
        return declared
    unknown = sorted(w for w in throttles if getattr(declared.get(w), "throttle", None) is None)
    if unknown:
        raise ValueError(f"no declared throttle to replace: {', '.join(unknown)}")
    return {
        name: flow.model_copy(update={"throttle": throttles[name]}) if name in throttles else flow
        for name, flow in declared.items()
    }


def read_flow_document(text: str) -> dict[str, Flow]:
    """Workflow -> its flow control, from a `routes_document`."""
    return {
        name: Flow.model_validate(doc) for name, doc in json.loads(text).get("flow", {}).items()
    }


def failure_report(
    *,
    workflow: str,
    job_id: str,
    event: Event,
    reason: Mapping[str, Any],
    context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a workflow's failure handler is told about a run that ended badly: the run's
    context, its job and event, and why (reason, step, error class and type, message, attempts).
    The workflow wrapper sends it when a run fails or times out, `sluice runs cancel` when an
    operator stops one."""
    return {
        **(context or {}),
        "job_id": job_id,
        "correlation_id": event.correlation_id,
        "workflow": workflow,
        "event_id": event.id,
        "event_name": event.name,
        **reason,
    }
