"""Stateful stack: what holds data and must outlive deployments (queues, keys; later bucket, table)."""

from __future__ import annotations

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_kms as kms
from constructs import Construct

from sluice import catalog, naming
from stacks.broker import Broker
from stacks.config import EnvConfig
from stacks.coordination import CoordinationTable
from stacks.keys import allow_log_encryption, customer_key
from stacks.lifecycle import removal_policy
from stacks.media_store import UPLOADS, MediaStore
from stacks.network import Network
from stacks.queues import DurableQueue
from stacks.uploads import notify_uploads


class StatefulStack(Stack):
    """Queues and their keys for one environment; RETAIN in prod, DESTROY in dev."""

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvConfig, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(
            scope, construct_id, termination_protection=config.termination_protection, **kwargs
        )
        removal = removal_policy(config)
        self.key: kms.IKey | None = None
        if config.data_key:
            self.key = customer_key(
                self,
                "DataKey",
                description=f"{config.prefix}: queues and data at rest",
                removal_policy=removal,
            )
            # The flow logs and the Lambda log groups are encrypted with it.
            allow_log_encryption(self.key)
        # The worker's VPC (stateful: the broker and other data services live in it too).
        self.network = Network(
            self, "Network", config=config.network, removal_policy=removal, key=self.key
        )
        self.events = DurableQueue(
            self,
            "Events",
            queue_name=naming.queue_name(config.name, "events"),
            config=config.events_queue,
            removal_policy=removal,
            key=self.key,
        )
        # Heavy tasks (transcode, embed) for the worker's tasks process (issue 5).
        self.tasks = DurableQueue(
            self,
            "Tasks",
            queue_name=naming.queue_name(config.name, "tasks"),
            config=config.tasks_queue,
            removal_policy=removal,
            key=self.key,
        )
        # Media bucket, jobs table and notifications topic (issue 3).
        self.media = MediaStore(self, "Media", config=config, removal_policy=removal, key=self.key)
        # Concurrency slots and fan-in joins of the workflows (issue 13), found by its name.
        self.coordination = CoordinationTable(
            self, "Coordination", config=config, removal_policy=removal, key=self.key
        )
        # `sluice jobs show` finds the jobs table by this output.
        CfnOutput(self, catalog.JOBS_TABLE_OUTPUT, value=self.media.table.table_name)
        # An upload alone starts the pipeline (issue 4).
        notify_uploads(self.media.bucket, self.events.queue, prefix=UPLOADS)
        # The optional RabbitMQ broker of the periodic scheduler (issue 7); None without one.
        self.broker: Broker | None = None
        if config.broker is not None:
            self.broker = Broker(
                self,
                "Broker",
                config=config,
                broker=config.broker,
                vpc=self.network.vpc,
                removal_policy=removal,
                key=self.key,
            )
