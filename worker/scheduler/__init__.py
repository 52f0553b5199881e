"""Drift-free periodic tasks: a registry, a RabbitMQ hatchery-queue scheduler, and cron.yaml."""

from worker.scheduler.registry import (
    REGISTRY,
    PeriodicTask,
    Registry,
    Tick,
    cron_event,
    cron_tick,
    cron_yaml,
)
from worker.scheduler.schedule import Cron, Every, ScheduleError

__all__ = [
    "REGISTRY",
    "Cron",
    "Every",
    "PeriodicTask",
    "Registry",
    "ScheduleError",
    "Tick",
    "cron_event",
    "cron_tick",
    "cron_yaml",
]
