"""Stateful stack: what holds data and must outlive deployments (queues, keys; later bucket, table)."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_kms as kms
from constructs import Construct

from stacks.config import EnvConfig
from stacks.queues import DurableQueue


class StatefulStack(Stack):
    """Queues and their keys for one environment; RETAIN in prod, DESTROY in dev."""

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(
            scope, construct_id, termination_protection=config.termination_protection, **kwargs
        )
        removal = RemovalPolicy.RETAIN if config.retain_data else RemovalPolicy.DESTROY
        self.key: kms.IKey | None = None
        if config.events_queue.customer_managed_key or config.tasks_queue.customer_managed_key:
            self.key = kms.Key(
                self,
                "DataKey",
                description=f"{config.prefix}: queues and data at rest",
                enable_key_rotation=True,
                rotation_period=Duration.days(365),
                removal_policy=removal,
            )
        self.events = DurableQueue(
            self,
            "Events",
            queue_name=f"{config.prefix}-events",
            config=config.events_queue,
            removal_policy=removal,
            key=self.key,
        )
