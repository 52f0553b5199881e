"""A durable SQS queue with its dead-letter queue: encrypted, TLS only, redrive both ways scoped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from sluice import naming
from stacks.config import QueueConfig


class QueuePair(Protocol):
    """A queue and its dead-letter queue: a `DurableQueue`, or one named from another stack."""

    @property
    def queue(self) -> sqs.IQueue: ...

    @property
    def dlq(self) -> sqs.IQueue: ...


class DurableQueue(Construct):
    """`queue` feeds its consumers; after `max_receive_count` receives a message moves to `dlq`."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        queue_name: str,
        config: QueueConfig,
        removal_policy: RemovalPolicy,
        key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if config.customer_managed_key and key is None:
            raise ValueError(f"{queue_name}: customer_managed_key is set but no KMS key was given")
        encryption = (
            dict(
                encryption=sqs.QueueEncryption.KMS,
                encryption_master_key=key,
                data_key_reuse=Duration.hours(1),
            )
            if config.customer_managed_key
            else dict(encryption=sqs.QueueEncryption.SQS_MANAGED)
        )
        # The DLQ admits only its own source queue. The source is named by ARN, not by reference:
        # a reference would make the two queues depend on each other (a cycle CloudFormation refuses).
        source_arn = Stack.of(self).format_arn(service="sqs", resource=queue_name)
        self.dlq = sqs.Queue(
            self,
            "Dlq",
            queue_name=naming.dead_letter_queue_name(queue_name),
            retention_period=Duration.seconds(config.dlq_retention_s),
            enforce_ssl=True,
            removal_policy=removal_policy,
            redrive_allow_policy=sqs.RedriveAllowPolicy(
                redrive_permission=sqs.RedrivePermission.BY_QUEUE,
                source_queues=[sqs.Queue.from_queue_arn(self, "Source", source_arn)],
            ),
            **encryption,  # type: ignore[arg-type]
        )
        # cfn-lint-serverless asks every queue for a redrive policy (ES6000); a DLQ is where
        # redrive ends, and its messages wait for an operator (sluice dlq peek/redrive).
        cfn_dlq = self.dlq.node.default_child
        assert isinstance(cfn_dlq, sqs.CfnQueue)
        cfn_dlq.add_metadata("cfn-lint", {"config": {"ignore_checks": ["ES6000"]}})
        self.queue = sqs.Queue(
            self,
            "Queue",
            queue_name=queue_name,
            visibility_timeout=Duration.seconds(config.visibility_timeout_s),
            retention_period=Duration.seconds(config.retention_s),
            receive_message_wait_time=Duration.seconds(20),
            enforce_ssl=True,
            removal_policy=removal_policy,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dlq, max_receive_count=config.max_receive_count
            ),
            **encryption,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class NamedQueue:
    """The `DurableQueue` another stack created, found by its name."""

    queue: sqs.IQueue
    dlq: sqs.IQueue


def named_queue(
    scope: Construct,
    construct_id: str,
    *,
    queue_name: str,
    config: QueueConfig,
    key: kms.IKey | None = None,
) -> NamedQueue:
    """The queue `queue_name` and its DLQ as `DurableQueue` made them (named, encrypted with
    `key` where `config` says so), by ARN and URL built from the names: no cross-stack export."""
    if config.customer_managed_key and key is None:
        raise ValueError(f"{queue_name}: customer_managed_key is set but no KMS key was given")
    stack = Stack.of(scope)
    key_arn = key.key_arn if config.customer_managed_key and key is not None else None

    def by_name(construct_id: str, name: str) -> sqs.IQueue:
        return sqs.Queue.from_queue_attributes(
            scope,
            construct_id,
            queue_arn=stack.format_arn(service="sqs", resource=name),
            queue_name=name,
            # What the queue's Ref returns; left out, CDK would parse it out of the ARN token.
            queue_url=f"https://sqs.{stack.region}.{stack.url_suffix}/{stack.account}/{name}",
            key_arn=key_arn,
        )

    return NamedQueue(
        queue=by_name(construct_id, queue_name),
        dlq=by_name(f"{construct_id}Dlq", naming.dead_letter_queue_name(queue_name)),
    )
