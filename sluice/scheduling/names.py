"""The broker's names for the scheduler's exchanges and queues, and the time scales of a task.

One definition for the scheduler that declares them (worker/scheduler/topology.py), the CLI that
counts tokens and the alarms that watch the queues.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sluice.scheduling.registry import PeriodicTask

PREFIX = "sluice.sched"
# Attempts beyond a task's own limit that the broker still allows before it dead-letters a token
# by itself: a backstop for runs that kill their consumer (the runner cannot count those).
BROKER_DELIVERY_MARGIN = 2


# The lifecycle events a task's status queue keeps (its last STATUS_LENGTH of them): a tick's
# outcomes. A run's outcome carries its start's lateness (START_LATENESS), so `started` itself is
# not kept: a quorum enqueue less per tick, the costliest part of an event for the broker
# (bench/scheduler_bench.py, many tasks).
STATUS_EVENTS = (
    "succeeded",
    "failed",
    "dead_lettered",
    "missed",
    "paused",
    "skipped",
)
STATUS_LENGTH = 10
# A status queue is bound to one routing key, `<task>.status` (Names.status_key); an event it
# keeps carries that key in its BCC header (RabbitMQ's sender-selected distribution: the broker
# routes by it too and strips it before delivery), so the scheduler picks which of a task's events
# the queue keeps while every event still reaches the control exchange under `<task>.<event>`.
# A runner keeps every outcome, but a success only when its last kept outcome was not one or was
# kept STATUS_SUCCESS_EVERY_S or more earlier: a task's successes are the bulk of its outcomes,
# and their quorum enqueue was a quarter of the broker's CPU a tick (bench/scheduler_bench.py,
# ops phase: 0.33 of 1.19 ms).
STATUS_SUCCESS_EVERY_S = 10.0
# The keys status queues were bound to before: their bindings are removed at declare, so a broker
# declared by an older version routes a task's events to its status queue only by the BCC key.
RETIRED_STATUS_EVENTS = ("started", *STATUS_EVENTS)
# The field of a run's outcome event (succeeded, failed, skipped, missed after its start) that
# says how late the run started, in seconds.
START_LATENESS = "start_lateness_s"


@dataclass(frozen=True)
class Names:
    """Every exchange and queue name, derived from one prefix (tests use their own)."""

    prefix: str = PREFIX

    @property
    def scheduler_exchange(self) -> str:
        return f"{self.prefix}.hatchery"

    @property
    def processor_exchange(self) -> str:
        return f"{self.prefix}.processor"

    @property
    def control_exchange(self) -> str:
        return f"{self.prefix}.control"

    @property
    def registry_exchange(self) -> str:
        """Fanout: a prompt to every scheduler process to re-read the runtime overrides
        (sluice/scheduling/overrides.py); the overrides themselves live in the table."""
        return f"{self.prefix}.registry"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def leader_queue(self) -> str:
        return f"{self.prefix}.leader"

    def listener(self, tag: str) -> str:
        """The leader's exclusive queue of lifecycle events. Named here rather than by the
        server (amq.gen-…), so the scheduler user's permissions need cover only this prefix."""
        return f"{self.prefix}.listen.{tag}"

    def hatchery(self, task: str) -> str:
        return f"{self.prefix}.hatchery.{task}"

    def processor(self, task: str) -> str:
        return f"{self.prefix}.run.{task}"

    def status(self, task: str) -> str:
        """The task's last lifecycle events (STATUS_EVENTS), kept for `sluice schedules list`."""
        return f"{self.prefix}.status.{task}"

    @staticmethod
    def status_key(task: str) -> str:
        """The routing key binding the task's status queue (carried in a kept event's BCC)."""
        return f"{task}.status"


@dataclass(frozen=True)
class Permissions:
    """A RabbitMQ user's permissions on one vhost: regexes over exchange and queue names."""

    configure: str
    write: str
    read: str


# The broker user the scheduler connects as. Amazon MQ creates only an administrator; this user
# is made at deploy time through the management API (lambdas/provisioning/broker_user) and may
# touch nothing but the scheduler's own names. Everything the scheduler declares, publishes to,
# binds and consumes is named under PREFIX (it never uses the default exchange), so one pattern
# serves all three permissions; declaring a queue with a dead-letter exchange also needs write
# on that exchange and read on the queue, both under PREFIX too.
SCHEDULER_USER = "sluice-scheduler"
SCHEDULER_VHOST = "/"
_OWN = f"^{re.escape(PREFIX)}\\."
SCHEDULER_PERMISSIONS = Permissions(configure=_OWN, write=_OWN, read=_OWN)
# `monitoring` lets it read GET /api/nodes (the node figures the alarms use); no other tag.
SCHEDULER_TAGS = "monitoring"


def quiet_window_s(task: PeriodicTask) -> float:
    """How long a task may show no token and no activity before its token counts as lost.

    Half a period keeps re-seeding within one period; the floor covers a token's transit from
    hatchery to consumer and a busy machine's scheduling stalls, the ceiling keeps long periods
    responsive. A stall longer than the window can still make a spare token: the runner drops it
    on arrival (a `duplicate` event), so a tick never runs twice.
    """
    return min(max(task.period_s / 2, 0.1), 10.0)


def expiration_ms(delay_s: float) -> str:
    """A per-message TTL for pika's `expiration` property (whole milliseconds, never negative)."""
    return str(max(0, math.ceil(delay_s * 1000)))
