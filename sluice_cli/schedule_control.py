"""Periodic tasks changed at run time, as a Python API (`sluice schedules add|set|pause|resume|
remove` is its click layer in sluice_cli/schedules.py).

A change is written to the overrides in the coordination table (sluice/scheduling/overrides.py:
the durable record), then announced on the broker's registry exchange so every scheduler process
re-reads it at once (each re-reads it every few seconds anyway).
"""

from __future__ import annotations

from typing import Any, Literal

from sluice.scheduling.names import Names
from sluice.scheduling.overrides import (
    Entry,
    OverrideError,
    OverrideStore,
    change,
    effective,
)
from sluice.scheduling.registry import Registry

Op = Literal["add", "set", "pause", "resume", "remove"]


class ScheduleControl:
    """The runtime registry of one deployment: its declared tasks, overrides and broker."""

    def __init__(
        self, declared: Registry, store: OverrideStore, broker_url: str, names: Names
    ) -> None:
        self.declared, self.store, self.broker_url, self.names = declared, store, broker_url, names
        self.prompted = False  # whether the last change's prompt reached the broker

    def entries(self) -> list[Entry]:
        """The effective registry: each task as it runs, where it came from, paused or not."""
        return effective(self.declared, self.store.read().tasks)

    def add(self, name: str, **fields: Any) -> Entry:
        """A new task (`every_s` or `cron`, `event`, optional `data`, `group`, `overlap`); a declared task
        the operator removed comes back (as declared, with any of these changes)."""
        return self._change(name, "add", **fields)

    def set(self, name: str, **fields: Any) -> Entry:
        """Change a task's period (`every_s`) or `cron`, payload (`data`), `group` or `overlap`."""
        return self._change(name, "set", **fields)

    def pause(self, name: str) -> Entry:
        return self._change(name, "pause")

    def resume(self, name: str) -> Entry:
        return self._change(name, "resume")

    def remove(self, name: str) -> Entry:
        """Disable task NAME in every process: it runs no tick, its token ends, `list` shows it
        removed; `add NAME` brings it back (a declared task as declared)."""
        return self._change(name, "remove")

    def _change(self, name: str, op: Op, **fields: Any) -> Entry:
        fields = {k: v for k, v in fields.items() if v is not None}

        def edit(tasks: dict[str, Any]) -> None:
            tasks[name] = change(self.declared, tasks, name, op, **fields)

        written = self.store.update(edit)
        self.prompted = self.prompt()
        found = [e for e in effective(self.declared, written.tasks) if e.task.name == name]
        if not found:  # cannot happen: change() built the task
            raise OverrideError("task", f"task {name} was written but does not run")
        return found[0]

    def prompt(self) -> bool:
        """Ask every scheduler process to re-read the overrides; False when none has declared the
        registry exchange yet (the change applies when one starts) or the broker is unreachable
        (each process re-reads within a few seconds anyway)."""
        import pika
        import pika.exceptions

        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.broker_url))
        except (pika.exceptions.AMQPError, OSError):
            return False
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_publish(self.names.registry_exchange, "", b"{}")
            return True
        except pika.exceptions.AMQPError:
            return False
        finally:
            if connection.is_open:
                connection.close()
