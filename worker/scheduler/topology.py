"""The scheduler's RabbitMQ topology: an idempotent declaration of all of it (names: sluice.scheduling).

Per task: a hatchery queue where the task's single token waits out a per-message TTL, then is
dead-lettered (at-least-once) into the processor exchange and on to the task's processor queue,
which has one active consumer at a time. Everything is quorum and durable; the control exchange
carries lifecycle events, and a task's status queue keeps its last few outcomes (those sent with
its key in their BCC header, see sluice.scheduling.names; bounded length, oldest dropped:
information for `sluice schedules list`, not state); the dead exchange/queue collects
ticks beyond their retry limit (and redriven ones that failed again)."""

from __future__ import annotations

from typing import Any

from sluice.scheduling.names import (
    BROKER_DELIVERY_MARGIN,
    RETIRED_STATUS_EVENTS,
    STATUS_LENGTH,
    Names,
)
from sluice.scheduling.registry import PeriodicTask


def _quorum(**extra: Any) -> dict[str, Any]:
    return {"x-queue-type": "quorum", **extra}


def declare(channel: Any, names: Names, tasks: list[PeriodicTask]) -> None:
    """Declare the topology for `tasks` on a pika channel (same arguments: a no-op)."""
    channel.exchange_declare(names.scheduler_exchange, "direct", durable=True)
    channel.exchange_declare(names.processor_exchange, "direct", durable=True)
    channel.exchange_declare(names.control_exchange, "topic", durable=True)
    channel.exchange_declare(names.dead_exchange, "fanout", durable=True)
    channel.exchange_declare(names.registry_exchange, "fanout", durable=True)
    channel.queue_declare(names.dead_queue, durable=True, arguments=_quorum())
    channel.queue_bind(names.dead_queue, names.dead_exchange)
    for task in tasks:
        hatchery, processor = names.hatchery(task.name), names.processor(task.name)
        channel.queue_declare(
            hatchery,
            durable=True,
            arguments=_quorum(
                **{
                    "x-dead-letter-exchange": names.processor_exchange,
                    "x-dead-letter-routing-key": task.name,
                    # at-least-once: the token leaves the hatchery only once the processor queue
                    # has it, so a broker failure mid-transfer cannot lose it.
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                }
            ),
        )
        channel.queue_bind(hatchery, names.scheduler_exchange, routing_key=task.name)
        channel.queue_declare(
            processor,
            durable=True,
            arguments=_quorum(
                **{
                    # One consumer runs a task at a time, whatever the number of worker instances.
                    "x-single-active-consumer": True,
                    "x-delivery-limit": task.max_attempts + BROKER_DELIVERY_MARGIN,
                    "x-dead-letter-exchange": names.dead_exchange,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                }
            ),
        )
        channel.queue_bind(processor, names.processor_exchange, routing_key=task.name)
        status = names.status(task.name)
        channel.queue_declare(
            status,
            durable=True,
            arguments=_quorum(**{"x-max-length": STATUS_LENGTH, "x-overflow": "drop-head"}),
        )
        channel.queue_bind(status, names.control_exchange, routing_key=names.status_key(task.name))
        for event in RETIRED_STATUS_EVENTS:
            # Unbinding a binding that does not exist succeeds (RabbitMQ's queue.unbind).
            channel.queue_unbind(status, names.control_exchange, routing_key=f"{task.name}.{event}")
