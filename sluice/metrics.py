"""The metrics Sluice's own processes publish: one definition for the code that publishes them and
for the alarms that read them (namespaces: sluice.naming.metrics_namespace)."""

from __future__ import annotations

# The worker's web process, per handled message (dimension Environment).
WORKER_COUNTS = (
    "Received",
    "Started",
    "Duplicates",
    "DeadLettered",
    "TransientFailures",
    "Cancelled",
    # Flow control (docs/flow-control.md): duplicates by idempotency key, events a rate limit
    # skipped, events a throttle holds back.
    "FlowDuplicates",
    "FlowSkipped",
    "FlowWaiting",
)
WORKER_LATENCY = "HandlingLatency"
WORKER_METRICS = (*WORKER_COUNTS, WORKER_LATENCY)

# The scheduler's broker figures (worker/scheduler/broker_metrics.py): per task (dimension Task),
# per node (dimension Node), or for the whole scheduler.
TOKENS_READY = "TokensReady"
CONSUMERS = "Consumers"
DEAD_TICKS = "DeadTicks"
MEMORY_USED_PCT = "MemoryUsedPct"
DISK_FREE_RATIO = "DiskFreeRatio"
# The scheduler's lifecycle events, counted per task (dimension Task) by each scheduler process
# and published with the broker figures: alarms read their Sum over the processes.
TICK_EVENTS = {
    "scheduled": "TicksScheduled",
    "started": "TicksStarted",
    "succeeded": "TicksSucceeded",
    "failed": "TicksFailed",  # every failed attempt, retried or not
    "dead_lettered": "TicksDeadLettered",
    "missed": "TicksMissed",  # ticks skipped (a `missed` event counts its `missed` ticks)
    "reseeded": "TokensReseeded",
    "abandoned": "TicksAbandoned",
    "fenced": "TicksFenced",
    # an event task's ticks skipped while its previous tick's run still ran (overlap = skip)
    "skipped": "TicksSkipped",
}
TICKS_FAILED = TICK_EVENTS["failed"]
TICKS_MISSED = TICK_EVENTS["missed"]
# The latest start of a tick after its due time, per task and publication (Maximum).
TICK_LATENESS = "TickLatenessMs"
SCHEDULER_METRICS = (
    TOKENS_READY,
    CONSUMERS,
    DEAD_TICKS,
    MEMORY_USED_PCT,
    DISK_FREE_RATIO,
    *TICK_EVENTS.values(),
    TICK_LATENESS,
)
