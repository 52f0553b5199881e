"""The coordination table: concurrency slots and fan-in joins of the workflows (issue 13,
docs/concurrency.md; adapters/slots.py and adapters/joins.py read and write it), and the
scheduler's tick ledger (worker/scheduler/ledger.py).

Named by `sluice.naming.coordination_table`, so the stateless stack grants and configures its
functions by that name, without a cross-stack reference to the construct.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Acknowledgment, Aws, RemovalPolicy, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from sluice import naming
from sluice.settings import LambdaSettings
from stacks import grants
from stacks.config import EnvConfig
from stacks.media_store import state_table
from stacks.workflows import EXECUTIONS_REASON, DurableWorkflow

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

# What the worker's web process does on it: for flow control (adapters/flow.py, worker/flow.py)
# read a partition (query), claim keys and hold events (put), admit into windows (update),
# release held events (delete); to cancel runs (worker/cancels.py) record a cancellation
# (update), read the registered runs (query), drop them (delete), record each run (put).
WEB_ACTIONS = (
    "dynamodb:Query",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
)


# What the scheduler does on the table: read a task's tick ledger item (get) and claim, renew
# and finish it (conditional updates); worker/scheduler/ledger.py.
LEDGER_ACTIONS = ("dynamodb:GetItem", "dynamodb:UpdateItem")


def ledger_statements(config: EnvConfig, key: kms.IKey | None) -> list[iam.PolicyStatement]:
    """What the scheduler's role needs for its tick ledger: the item actions it uses on this
    table, and the data key when the table is encrypted with it."""
    statements = [
        iam.PolicyStatement(
            sid="SchedulerTickLedger", actions=list(LEDGER_ACTIONS), resources=[table_arn(config)]
        )
    ]
    if key is not None:
        statements.append(
            iam.PolicyStatement(
                sid="SchedulerTickLedgerKey",
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[key.key_arn],
            )
        )
    return statements


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
    grants.allow(
        fn.checkpoints,
        ["lambda:GetDurableExecution"],
        [fn.executions_arn],
        reason=EXECUTIONS_REASON,
    )
    for name, value in LambdaSettings.render(
        coordination_table=naming.coordination_table(config.name),
    ).items():
        fn.function.add_environment(name, value)


def grant_canceller(
    scope: Construct,
    role: iam.IRole,
    *,
    workflows: Mapping[str, DurableWorkflow],
    failure_handlers: Mapping[str, lambda_.IAlias],
    config: EnvConfig,
) -> None:
    """Let `role` (the worker's web process) cancel the runs of `workflows`, the ones a declared
    `cancel_on` event may cancel: read and stop their executions and run their failure
    handlers. (Its items in the coordination table are `WEB_ACTIONS`, granted with the rest of
    what the web process does.)"""
    policy = iam.ManagedPolicy(
        scope,
        "CancelPolicy",
        description=f"{config.prefix}: the worker cancels the runs a cancel_on event names",
        roles=[role],
    )
    grants.allow(
        policy,
        ["lambda:GetDurableExecution", "lambda:StopDurableExecution"],
        [wf.executions_arn for _, wf in sorted(workflows.items())],
        sid="CancelRuns",
        reason=EXECUTIONS_REASON,
    )
    grants.allow(
        policy,
        ["lambda:InvokeFunction"],
        sorted({a.function_arn for a in failure_handlers.values()}),
        sid="FailureHandlers",
    )


def canceller_environment(failure_handlers: Mapping[str, lambda_.IAlias]) -> dict[str, str]:
    """What the worker's web process reads to cancel runs (sluice.settings.WebSettings) besides
    the coordination table: the failure handler of each workflow an event may cancel."""
    return naming.alias_variables(
        {name: alias.function_arn for name, alias in failure_handlers.items()},
        prefix=naming.FAILURE_HANDLER_VARIABLE_PREFIX,
    )
