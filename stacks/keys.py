"""Customer-managed KMS keys: yearly rotation, grants only for AWS services, named service users.

Every key Sluice creates comes from `customer_key`, so each carries the statement AWS Control
Tower's CT.KMS.PR.3 asks for: `kms:CreateGrant` is denied unless an AWS service asks for the
grant (DynamoDB, SQS and Secrets Manager create grants for the resources they encrypt).
"""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct


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
