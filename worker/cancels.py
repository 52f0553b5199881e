"""Declared cancellation on the worker: an event named in a workflow's `cancel_on` stops the runs
it matches (the design is in sluice/run_control.py and docs/workflows.md, "Cancel on an event").

For each (workflow, path) the event cancels, the worker records the cancellation in the
coordination table, reads the runs registered under the event's value at that path, and for
each: stops it, records it (STOPPED) and runs its failure handler with `reason: cancelled`; then
removes the registration. A failure part way is a transient error (sqsd re-delivers the event)
that redoes what is left: a run found STOPPED by this same event (its error names it) whose
registration is still there had its stop done but maybe not its record or handler, which are
done again.

An event that flow control holds (a throttle's queue, a debounce, a batch: docs/flow-control.md)
is not a run yet, so no registration names it. Before flow control starts a held event it asks
`held_cancelled`: a cancellation of a matching value received at or after the event arrived (the
same tombstone a run reads when it registers) drops it instead: it is recorded (STOPPED, reason
cancelled) and its failure handler runs, as for a stopped run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sluice import run_control
from sluice.catalog import CANCELS
from sluice.envelope import Event, event_from_dict
from sluice.run_control import CancelKeys, Registered, RunRecords, cancel_scope
from sluice.workflows import CancelOn, value_at

log = logging.getLogger("sluice.worker")


class Canceller:
    """Cancels the runs an event's declared `cancel_on` names. Clients are injected."""

    def __init__(
        self,
        *,
        lambda_client: Any,
        dynamodb_client: Any,
        table: str,
        failure_handlers: Mapping[str, str],
        cancels: Mapping[str, tuple[tuple[str, str], ...]] = CANCELS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lam = lambda_client
        self.keys = CancelKeys(dynamodb_client, table)
        self.records = RunRecords(dynamodb_client, table)
        self.failure_handlers = dict(failure_handlers)
        self.cancels = cancels  # event name -> (workflow, path): the declared `cancel_on`
        self.clock = clock

    def scopes(self, event: Event) -> dict[str, set[str]]:
        """The partitions the event cancels in, each with the workflows it cancels there."""
        doc = event.to_dict()
        found: dict[str, set[str]] = {}
        for workflow, path in self.cancels.get(event.name, ()):
            value = value_at(doc, path)
            if value is not None:
                found.setdefault(cancel_scope(event.name, path, value), set()).add(workflow)
        return found

    def cancel(self, event: Event, *, received: datetime | None = None) -> list[dict[str, str]]:
        """Cancel the runs `event` names that started by the time it was `received` (first, by
        the events queue: the same on every re-delivery; default now); the runs it stopped
        (workflow, execution name, ARN). Raises the clients' errors (the caller answers sqsd
        503: the event comes back)."""
        at = received or datetime.fromtimestamp(self.clock(), UTC)
        message = f"cancelled by {event.name} {event.id}"
        stopped: list[dict[str, str]] = []
        for scope, workflows in sorted(self.scopes(event).items()):
            for run in self.keys.cancel(scope, at=at):
                if run.workflow not in workflows:
                    continue
                if self._cancel(run, message):
                    stopped.append(
                        {"workflow": run.workflow, "execution_name": run.name, "arn": run.arn}
                    )
                self.keys.forget(scope, run)
        return stopped

    def held_cancelled(
        self,
        workflow: str,
        cancel_on: tuple[CancelOn, ...],
        event: Event,
        since_ms: int,
        *,
        seen: dict[str, str | None] | None = None,
    ) -> str | None:
        """If a cancellation declared in `cancel_on` names `event`, held by flow control since
        `since_ms`, and was received at or after that: record the event as a cancelled run and
        run its failure handler (safe to repeat); the cancelling event's name, else None.
        `seen` keeps the tombstones read (scope -> when) across one drain's events."""
        doc = event.to_dict()
        since = datetime.fromtimestamp(since_ms / 1000, UTC)
        seen = {} if seen is None else seen
        for cancel in cancel_on:
            value = value_at(doc, cancel.match)
            if value is None:
                continue
            scope = cancel_scope(cancel.event, cancel.event_path, value)
            if scope not in seen:
                seen[scope] = self.keys.cancelled_at(scope)
            at = seen[scope]
            if at is None or at < run_control.iso(since):
                continue
            message = f"cancelled by {cancel.event} received {at}, while held by flow control"
            run_control.after_stop(
                self.lam,
                workflow=workflow,
                name=event.execution_name,
                arn="",
                event=event,
                started=since,
                message=message,
                records=self.records,
                failure_handler=self.failure_handlers.get(workflow),
            )
            log.info(
                "held event cancelled: not started",
                extra={
                    "workflow": workflow,
                    "event_id": event.id,
                    "outcome": "cancelled",
                    "cancelled_by": cancel.event,
                    "reason": message,
                },
            )
            return cancel.event
        return None

    def _cancel(self, run: Registered, message: str) -> bool:
        doc = self.lam.get_durable_execution(DurableExecutionArn=run.arn, IncludeExecutionData=True)
        status, error = doc["Status"], doc.get("Error") or {}
        # Stopped by this very event before (a re-delivery after a failure part way): finish.
        cancelled_before = (
            status == "STOPPED"
            and error.get("ErrorType") == run_control.CANCELLED
            and error.get("ErrorMessage") == message
        )
        if status in run_control.ENDED and not cancelled_before:
            return False  # it ended on its own: nothing to cancel
        if not cancelled_before and not run_control.stop(self.lam, run.arn, message=message):
            return False
        payload = doc.get("InputPayload")
        try:
            event: Event | None = event_from_dict(json.loads(payload), ts_required=False)
        except Exception:  # not an event (started by hand): stopped, nothing to tell
            event = None
        if event is not None:
            run_control.after_stop(
                self.lam,
                workflow=run.workflow,
                name=run.name,
                arn=run.arn,
                event=event,
                started=doc.get("StartTimestamp"),
                message=message,
                records=self.records,
                failure_handler=self.failure_handlers.get(run.workflow),
            )
        log.info(
            "run cancelled",
            extra={"workflow": run.workflow, "execution_name": run.name, "reason": message},
        )
        return True


def first_received(header: str) -> datetime | None:
    """sqsd's X-Aws-Sqsd-First-Received-At (UTC, whole seconds) as the last instant of that
    second: a run started within the second the cancellation arrived is cancelled too. None
    when absent or not a time."""
    try:
        when = datetime.fromisoformat(header)
    except ValueError:
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return when.replace(microsecond=999_999) if when.microsecond == 0 else when
