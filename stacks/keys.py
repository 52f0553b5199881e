"""Customer-managed KMS keys: yearly rotation, grants only for AWS services, named service users.

Every key Sluice creates comes from `customer_key`, so each carries the statement AWS Control
Tower's CT.KMS.PR.3 asks for: `kms:CreateGrant` is denied unless an AWS service asks for the
grant (DynamoDB, SQS and Secrets Manager create grants for the resources they encrypt).
"""

from __future__ import annotations

from aws_cdk import ArnFormat, Aws, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

from sluice import naming
from stacks import parameters
from stacks.config import EnvConfig


def customer_key(
    scope: Construct, construct_id: str, *, description: str, removal_policy: RemovalPolicy
) -> kms.Key:
    key = kms.Key(
        scope,
        construct_id,
        description=description,
        enable_key_rotation=True,
        rotation_period=Duration.days(365),
        removal_policy=removal_policy,
    )
    key.add_to_resource_policy(
        iam.PolicyStatement(
            sid="GrantsOnlyForAwsServices",
            effect=iam.Effect.DENY,
            principals=[iam.AnyPrincipal()],
            actions=["kms:CreateGrant"],
            resources=["*"],
            conditions={
                "BoolIfExists": {
                    "kms:GrantIsForAWSResource": "false",
                    "aws:PrincipalIsAWSService": "false",
                }
            },
        )
    )
    return key


def publish_data_key(key: kms.Key, config: EnvConfig) -> None:
    """Hand the data key's id (AWS generates it) to the stateless stack (stacks/parameters.py)."""
    parameters.publish(key, config.name, naming.DATA_KEY_ID, key.key_id)


def named_data_key(scope: Construct, config: EnvConfig) -> kms.IKey | None:
    """The environment's data key as the stateless stack finds it: by the id the stateful stack
    wrote (`publish_data_key`); None where the environment has none.

    The id, not the ARN: the ARN built around it is an `Fn::Join`, which cfn-guard's
    CT.CLOUDWATCH.PR.3 reports as a finding the log groups acknowledge, whereas a bare `Ref` to
    the SSM-typed parameter makes cdk-validator-cfnguard 0.0.62 crash on its own report.
    Using an imported key changes no key policy: the key policy delegates to IAM, and the
    stateless stack's policies name the key's ARN.
    """
    if not config.data_key:
        return None
    key_id = parameters.read(scope, config.name, naming.DATA_KEY_ID)
    return kms.Key.from_key_arn(
        scope,
        "DataKey",
        Stack.of(scope).format_arn(
            service="kms",
            resource="key",
            resource_name=key_id,
            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
        ),
    )


def allow_log_encryption(key: kms.IKey) -> None:
    """Let CloudWatch Logs encrypt this account's log groups in this region with `key`.

    The actions and the encryption-context condition are those of CloudWatch Logs' guide
    ("Encrypt log data in CloudWatch Logs using AWS KMS").
    """
    stack = Stack.of(key)
    key.add_to_resource_policy(
        iam.PolicyStatement(
            sid="LogsEncryptLogGroups",
            principals=[iam.ServicePrincipal(f"logs.{Aws.REGION}.amazonaws.com")],
            actions=[
                "kms:Encrypt*",
                "kms:Decrypt*",
                "kms:ReEncrypt*",
                "kms:GenerateDataKey*",
                "kms:Describe*",
            ],
            resources=["*"],
            conditions={
                "ArnLike": {
                    "kms:EncryptionContext:aws:logs:arn": (
                        f"arn:{Aws.PARTITION}:logs:{stack.region}:{stack.account}:log-group:*"
                    )
                }
            },
        )
    )
