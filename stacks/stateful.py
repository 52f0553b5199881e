"""Stateful stack: what holds data and must outlive deployments (queues, keys, VPC, bucket, table,
broker).

The stateless stack finds all of it by name (sluice.naming), or through the SSM parameters this
stack writes where AWS generates the name (stacks/parameters.py): no CloudFormation export.
"""

from __future__ import annotations

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_kms as kms
from constructs import Construct

from sluice import catalog, naming
from stacks.broker import Broker, NamedBroker
from stacks.config import EnvConfig
from stacks.coordination import CoordinationTable
from stacks.keys import allow_log_encryption, customer_key, named_data_key, publish_data_key
from stacks.lifecycle import removal_policy
from stacks.media_store import UPLOADS, MediaStore, named_media
from stacks.network import Network, named_vpc
from stacks.queues import DurableQueue, named_queue
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
            key = customer_key(
                self,
                "DataKey",
                description=f"{config.prefix}: queues and data at rest",
                removal_policy=removal,
            )
            # The flow logs and the Lambda log groups are encrypted with it.
            allow_log_encryption(key)
            publish_data_key(key, config)
            self.key = key
        # The worker's VPC (stateful: the broker and other data services live in it too).
        self.network = Network(
            self, "Network", config=config.network, removal_policy=removal, key=self.key
        )
        self.network.publish(config.name)
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
            self.broker.publish(config.name)


class StatefulResources(Construct):
    """The stateful stack's resources as the stateless stack finds them: by name (sluice.naming),
    or through the SSM parameters the stateful stack writes where AWS generates the name. No
    CloudFormation export, so either stack can change without a two-phase deploy; `key`, `vpc`,
    `events`, `tasks`, `media` and `broker` stand for the StatefulStack's."""

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvConfig) -> None:
        super().__init__(scope, construct_id)
        self.key = named_data_key(self, config)
        self.vpc = named_vpc(self, config)
        self.events = named_queue(
            self,
            "Events",
            queue_name=naming.queue_name(config.name, "events"),
            config=config.events_queue,
            key=self.key,
        )
        self.tasks = named_queue(
            self,
            "Tasks",
            queue_name=naming.queue_name(config.name, "tasks"),
            config=config.tasks_queue,
            key=self.key,
        )
        self.media = named_media(self, "Media", config=config, key=self.key)
        self.broker: NamedBroker | None = None
        if config.broker is not None:
            self.broker = NamedBroker(
                self, "Broker", config=config, broker=config.broker, key=self.key
            )
