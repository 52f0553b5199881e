"""What happens to data when a stack goes away: one rule for every stateful resource."""

from __future__ import annotations

from aws_cdk import RemovalPolicy

from stacks.config import EnvConfig


def removal_policy(config: EnvConfig) -> RemovalPolicy:
    """Keep data in environments that retain it, except after a failed first create.

    RETAIN_ON_UPDATE_OR_DELETE is CloudFormation's RetainExceptOnCreate: a resource is kept when
    its stack is deleted or it is replaced, but deleted when the stack operation that created it
    rolls back. Named resources (queues, bucket, broker, log groups) kept after a rolled-back
    first create would make the retry fail with "already exists"; empty ones are worth nothing.
    """
    return RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE if config.retain_data else RemovalPolicy.DESTROY
