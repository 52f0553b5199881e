"""The coordination table: concurrency slots and fan-in joins of the workflows (issue 13,
docs/concurrency.md; adapters/slots.py and adapters/joins.py read and write it).

Named by `sluice.naming.coordination_table`, so the stateless stack grants and configures its
functions by that name, without a cross-stack reference to the construct.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, Aws, RemovalPolicy, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from sluice import naming
from sluice.settings import LambdaSettings
from stacks.config import EnvConfig
from stacks.media_store import state_table
from stacks.workflows import DurableWorkflow

# What the runtime does on the table: slots read the counter and query the queue, enqueue and
# leave (put, delete), take a slot in one transaction (its items need put and delete), release
# (update); joins record and claim (update) and read (get).
ACTIONS = (
    "dynamodb:GetItem",
    "dynamodb:Query",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
)

# What the worker's web process does on it for flow control (adapters/flow.py, worker/flow.py):
# read a partition (query), claim keys and hold events (put), admit into windows (update),
# release held events (delete).
FLOW_ACTIONS = (
    "dynamodb:Query",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
)


def table_arn(config: EnvConfig) -> str:
    return (
        f"arn:{Aws.PARTITION}:dynamodb:{config.region}:{Aws.ACCOUNT_ID}:"
        f"table/{naming.coordination_table(config.name)}"
    )


class CoordinationTable(Construct):
    """`table`: string `pk` and `sk`, on demand, TTL on `expires_at`; encrypted and backed up
    like the jobs table."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        removal_policy: RemovalPolicy,
        key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.table = state_table(
            self,
            "Table",
            table_name=naming.coordination_table(config.name),
            keys=("pk", "sk"),
            config=config,
            removal_policy=removal_policy,
            key=key,
        )
        for pack in ("NIST.800.53.R5", "HIPAA.Security"):
            Validations.of(self.table).acknowledge(
                Acknowledgment(
                    id=f"{pack}-DynamoDBInBackupPlan",
                    reason="Point-in-time recovery is on (continuous backups, 35 days); the "
                    "table holds only coordination state (slots, joins) that expires by TTL "
                    "and is rebuilt by the runs that poll it.",
                )
            )


def grant(fn: DurableWorkflow, *, config: EnvConfig, key: kms.IKey | None) -> None:
    """Give workflow `fn` what it needs to take slots and join branches: the table's item
    actions (nothing else of DynamoDB), the data key when the table is encrypted with it, and
    GetDurableExecution on its own executions (is a holder still running?); and in its
    environment the table's name (sluice.settings.LambdaSettings). A slot's lease is the
    workflow's execution timeout, which the function reads from its own declaration.)"""
    fn.allow(list(ACTIONS), [table_arn(config)])
    if key is not None:
        fn.allow(["kms:Decrypt", "kms:GenerateDataKey"], [key.key_arn])
    # Beside its checkpoints: the same resource, the function's own executions (every version).
    fn.checkpoints.add_statements(
        iam.PolicyStatement(
            actions=["lambda:GetDurableExecution"], resources=[f"{fn.function.function_arn}:*"]
        )
    )
    for name, value in LambdaSettings.render(
        coordination_table=naming.coordination_table(config.name),
    ).items():
        fn.function.add_environment(name, value)
