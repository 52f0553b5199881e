"""Stateless stack: compute and monitoring, replaceable at any deployment."""

from __future__ import annotations

from aws_cdk import Stack
from constructs import Construct

from stacks.config import EnvConfig
from stacks.monitoring import Monitoring
from stacks.stateful import StatefulStack


class StatelessStack(Stack):
    """Lambdas, the worker environment, alarms and the dashboard of one environment."""

    def __init__(  # type: ignore[no-untyped-def]
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        stateful: StatefulStack,
        **kwargs,
    ) -> None:
        super().__init__(
            scope, construct_id, termination_protection=config.termination_protection, **kwargs
        )
        self.monitoring = Monitoring(self, "Monitoring", config=config)
        self.monitoring.watch_queue(
            "Events",
            queue=stateful.events.queue,
            dlq=stateful.events.dlq,
            max_age_s=config.alarms.queue_age_s,
            backlog="events-queue-backlog",
        )
