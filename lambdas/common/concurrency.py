"""Concurrency limits of a workflow, taken durably (docs/concurrency.md).

`hold_slots` queues the run and waits (durably, polling, no compute between polls) until it holds
a slot of every limit that applies: the key's first, then the workflow's. `release_slots` gives
them back; it must run when the run ends, on success and on failure (`slots_held` does both).
A run killed without releasing loses its slots to the next poll of a waiter once Lambda says
its execution is no longer running (`execution_is_running`), or when its lease ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aws_durable_execution_sdk_python import DurableContext, StepContext
from aws_durable_execution_sdk_python.config import Duration
from aws_durable_execution_sdk_python.types import WaitForConditionCheckContext
from aws_durable_execution_sdk_python.waits import WaitForConditionConfig, WaitForConditionDecision
from botocore.exceptions import ClientError

from adapters.errors import code
from adapters.slots import IsRunning, Slots, scope
from lambdas.common.runtime import clients, env, settings
from sluice.workflows import Priority, key_value

FIRST_POLL_S = 2
MAX_POLL_S = 30
# Execution states that keep a slot: it may still run steps (a paused run resumes).
ALIVE = frozenset({"RUNNING", "PAUSING", "PAUSED"})


def poll_delay_s(attempt: int) -> int:
    """The wait after poll `attempt` (1-based): 2 s doubling to 30 s."""
    return int(min(FIRST_POLL_S * 2 ** (attempt - 1), MAX_POLL_S))


def execution_is_running(lambda_client: Any) -> IsRunning:
    """Whether a durable execution (by ARN) may still run steps, asked of Lambda's
    GetDurableExecution. Unsure (throttled, no permission) counts as running: a slot is never
    taken from a run that may still be working."""

    def is_running(arn: str) -> bool:
        try:
            status = lambda_client.get_durable_execution(DurableExecutionArn=arn)["Status"]
        except ClientError as exc:
            return code(exc) != "ResourceNotFoundException"
        return status in ALIVE

    return is_running


@dataclass(frozen=True)
class Held:
    """The slots a run took: (scope, limit) in the order taken, and its arrival."""

    run: str
    arrival_ms: int
    scopes: tuple[tuple[str, int], ...] = field(default_factory=tuple)


def plan(
    workflow: str,
    event: Mapping[str, Any],
    *,
    limit: int | None = None,
    key: str | None = None,
    key_limit: int | None = None,
) -> list[tuple[str, int]]:
    """The slots a run of `workflow` must hold, in the order it takes them: the key's, then
    the workflow's (a run holding the workflow slot waits for nothing: no deadlock)."""
    scopes = []
    if key is not None and key_limit is not None:
        scopes.append((scope(workflow, key_value(event, key)), key_limit))
    if limit is not None:
        scopes.append((scope(workflow), limit))
    return scopes


def default_slots() -> Slots:
    return Slots(
        clients("dynamodb"),
        env("coordination_table"),
        check_after_s=settings().slot_check_after_s,
    )


def hold_slots(
    ctx: DurableContext,
    *,
    workflow: str,
    event: Mapping[str, Any],
    run: str,
    limit: int | None = None,
    key: str | None = None,
    key_limit: int | None = None,
    priority: Priority | None = None,
    lease_s: int,
    slots: Callable[[], Slots] = default_slots,
    is_running: Callable[[], IsRunning] | None = None,
) -> Held:
    """Wait, durably, until run `run` holds every slot its limits require; what it holds.

    A slot's lease is `lease_s`: the workflow's execution timeout (no execution outlives it, so
    a lease never ends under a run that still works). With a declared `priority` the queue is
    ranked by it (higher first, aging, then arrival: `sluice.workflows.rank`); else arrival."""
    scopes = plan(workflow, event, limit=limit, key=key, key_limit=key_limit)
    if not scopes:
        return Held(run=run, arrival_ms=0)
    arn = ctx.state.durable_execution_arn
    # Its own step, so a retried enqueue queues the run at the same place.
    arrival_ms: int = ctx.step(lambda _: int(time.time() * 1000), name="slots arrival")
    level = 0 if priority is None else priority.of(event)
    alive = is_running or (lambda: execution_is_running(clients("lambda")))

    for scope_, n in scopes:

        def enqueue(_: StepContext, scope_: str = scope_) -> None:
            slots().enqueue(scope_, run, arn=arn, arrival_ms=arrival_ms, priority=level)

        ctx.step(enqueue, name=f"slot queue {scope_}")

        def check(
            state: dict[str, Any], check_ctx: WaitForConditionCheckContext, scope_=scope_, n=n
        ) -> dict[str, Any]:
            try:
                acquired = slots().try_acquire(
                    scope_,
                    run,
                    arn=arn,
                    arrival_ms=arrival_ms,
                    limit=n,
                    lease_s=lease_s,
                    is_running=alive(),
                    priority=level,
                    order=priority,
                )
            except Exception as exc:  # a failed poll is a poll to repeat, not a failed run
                check_ctx.logger.warning(
                    "slot poll failed", extra={"scope": scope_, "error": str(exc)}
                )
                acquired = False
            return {"acquired": acquired, "polls": int(state.get("polls", 0)) + 1}

        def strategy(state: dict[str, Any], attempts: int) -> WaitForConditionDecision:
            if state.get("acquired"):
                return WaitForConditionDecision.stop_polling()
            return WaitForConditionDecision.continue_waiting(
                Duration.from_seconds(poll_delay_s(attempts))
            )

        ctx.wait_for_condition(
            check,
            config=WaitForConditionConfig(
                wait_strategy=strategy, initial_state={"acquired": False, "polls": 0}
            ),
            name=f"slot {scope_}",
        )
    return Held(run=run, arrival_ms=arrival_ms, scopes=tuple(scopes))


def release_slots(
    ctx: DurableContext, held: Held, *, slots: Callable[[], Slots] = default_slots
) -> None:
    """Give back every slot `held` names, in reverse order (idempotent; a durable step)."""
    if not held.scopes:
        return

    def release(_: StepContext) -> None:
        store = slots()
        for scope_, _n in reversed(held.scopes):
            store.release(scope_, held.run, arrival_ms=held.arrival_ms)

    ctx.step(release, name="slots release")


@contextmanager
def slots_held(ctx: DurableContext, **kwargs: Any) -> Iterator[Held]:
    """`hold_slots(ctx, **kwargs)`, then the body, then `release_slots`, also when the body
    raises. A suspension (the SDK's BaseException) passes through without releasing: the run
    still holds its slots while it waits."""
    slots = kwargs.get("slots", default_slots)
    held = hold_slots(ctx, **kwargs)
    try:
        yield held
    except Exception:
        release_slots(ctx, held, slots=slots)
        raise
    release_slots(ctx, held, slots=slots)
