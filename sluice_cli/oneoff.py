"""The one-off tasks' Python API (`sluice schedules at|cancel` is a thin layer over it).

    from sluice_cli.oneoff import OneOffs
    oneoffs = OneOffs(broker_url, dynamodb_client, table)
    job = oneoffs.at(datetime(2027, 3, 3, 9, tzinfo=UTC), "reindex", {"scope": "all"})
    oneoffs.cancel(job.id)
    [r.oneoff for r in oneoffs.list() if r.pending]

`at` records the one-off (coordination table) and then publishes it, confirmed, to the one-off
run queue; a scheduler process sends it on through its wait queues and runs it at its due time
(sluice/scheduling/oneoff.py). A failed publish removes the record again.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sluice.scheduling import oneoff as spec
from sluice.scheduling.names import Names
from sluice.scheduling.oneoff import OneOff
from sluice.scheduling.oneoff_records import OneOffRecords, Record
from sluice.scheduling.overrides import OverrideStore, effective
from sluice.scheduling.registry import REGISTRY, Registry

# How far ahead a one-off may be scheduled (a year, and a day of slack).
MAX_AHEAD_S = 366 * 86_400
_RELATIVE = re.compile(r"\+(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class OneOffError(ValueError):
    """A one-off that cannot be scheduled or cancelled; the message says why."""


def parse_time(text: str, now: float | None = None) -> float:
    """Epoch seconds of an ISO 8601 time (no zone: UTC) or of `+<n><s|m|h|d>` from now."""
    now = time.time() if now is None else now
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        return now + float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise OneOffError(
            f"bad time {text!r}: give ISO 8601 (2027-03-03T09:00:00Z) or +90s, +15m, +2h, +3d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class OneOffs:
    """Schedule, cancel and list one-off tasks of one deployment (its broker and table)."""

    def __init__(
        self,
        broker_url: str,
        dynamodb: Any,
        table: str,
        *,
        names: Names | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.names = names or Names()
        self.registry = registry or REGISTRY
        self.records = OneOffRecords(dynamodb, table, self.names.prefix)
        self.overrides = OverrideStore(dynamodb, table, self.names.prefix)
        self._channel: Any = None  # opened on the first publish, kept until close()

    def at(
        self,
        when: float | datetime,
        task: str,
        payload: Mapping[str, Any] | None = None,
        *,
        oneoff_id: str | None = None,
        now: float | None = None,
    ) -> OneOff:
        """Run `task` (declared, or added at run time) once at `when` (epoch seconds or an
        aware datetime)."""
        now = time.time() if now is None else now
        due = when.timestamp() if isinstance(when, datetime) else float(when)
        due = round(due * 1000) / 1000  # the ledger's precision: every copy agrees on the tick
        tasks = self.tasks()
        if task not in tasks:
            raise OneOffError(f"unknown task {task!r}; tasks: {', '.join(tasks)}")
        if due > now + MAX_AHEAD_S:
            ahead = timedelta(seconds=round(due - now))
            raise OneOffError(f"{ahead} ahead: a one-off may be at most a year ahead")
        try:
            json.dumps(dict(payload or {}))
        except (TypeError, ValueError) as exc:
            raise OneOffError(f"the payload must be a JSON object: {exc}") from None
        try:
            oneoff = OneOff(oneoff_id or spec.new_id(), task, due, dict(payload or {}), expect=now)
        except ValueError as exc:
            raise OneOffError(str(exc)) from None
        if not self.records.create(oneoff, round(now * 1000)):
            raise OneOffError(f"a one-off with id {oneoff.id!r} exists already")
        try:
            self._publish_retrying(oneoff)
        except BaseException:
            self.records.delete(oneoff.id)
            raise
        return oneoff

    def tasks(self) -> list[str]:
        """The tasks a one-off may name: the registry as it runs (the declared tasks and those
        added at run time, paused ones too; not removed ones)."""
        overrides = self.overrides.read().tasks
        return [e.task.name for e in effective(self.registry, overrides) if not e.disabled]

    def _publish_retrying(self, oneoff: OneOff, attempts: int = 3) -> None:
        """Publish; a nack (a quorum queue just declared may refuse a publish until it is
        ready) is tried again: a second copy would only be dropped by its claim."""
        import pika

        for attempt in range(1, attempts + 1):
            try:
                self._publish(oneoff)
                return
            except pika.exceptions.NackError:
                if attempt == attempts:
                    raise
                time.sleep(0.1 * attempt)

    def _publish(self, oneoff: OneOff) -> None:
        import pika

        if self._channel is None or not self._channel.is_open:
            self.close()
            connection = pika.BlockingConnection(pika.URLParameters(self.broker_url))
            channel = connection.channel()
            spec.declare(channel, self.names)  # the run queue, so it waits for a scheduler
            channel.confirm_delivery()
            self._channel = channel
        try:
            self._channel.basic_publish(
                spec.exchange(self.names),
                spec.RUN_KEY,
                oneoff.encode(),
                pika.BasicProperties(delivery_mode=2, content_type="application/json"),
                mandatory=True,
            )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the broker connection (the next `at` opens one again)."""
        if self._channel is not None:
            with contextlib.suppress(Exception):
                self._channel.connection.close()
        self._channel = None

    def __enter__(self) -> OneOffs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cancel(self, oneoff_id: str) -> Record:
        """Cancel a one-off that has not started; OneOffError when it cannot be."""
        if self.records.cancel(oneoff_id):
            record = self.records.read(oneoff_id)
            assert record is not None
            return record
        record = self.records.read(oneoff_id)
        if record is None:
            raise OneOffError(f"no one-off {oneoff_id!r}")
        raise OneOffError(f"one-off {oneoff_id} is {record.state}: too late to cancel")

    def list(self) -> list[Record]:
        """Every one-off on record, by due time (finished ones for 30 days after)."""
        return self.records.all()
