"""Where media jobs keep their data: the media bucket, the jobs table and the notifications topic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aws_cdk import Acknowledgment, Aws, Duration, RemovalPolicy, Stack, Validations
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from sluice import catalog, naming
from stacks.compliance import GUARD
from stacks.config import EnvConfig

# Object key prefixes of the media bucket: the one definition the runtime code uses too.
UPLOADS = catalog.UPLOADS_PREFIX
TRANSCRIPTS = catalog.TRANSCRIPTS_PREFIX
TMP = catalog.TMP_PREFIX
TTL_ATTRIBUTE = naming.TTL_ATTRIBUTE
ACCESS_LOG_PREFIX = "media/"


def media_bucket_name(config: EnvConfig) -> str:
    """The media bucket's name: fixed per environment, account and region, so other stacks can
    name it (and its key prefixes in IAM policies) without a cross-stack export."""
    return naming.media_bucket(config.name, Aws.ACCOUNT_ID, config.region)


def media_objects_arn(config: EnvConfig, prefix: str) -> str:
    """The ARN of the media bucket's objects under `prefix`."""
    return f"arn:{Aws.PARTITION}:s3:::{media_bucket_name(config)}/{prefix}*"


class Media(Protocol):
    """What the stateless stack uses of the media store: a `MediaStore`, or one found by name."""

    @property
    def bucket_name(self) -> str: ...

    @property
    def table(self) -> dynamodb.ITable: ...

    @property
    def notifications(self) -> sns.ITopic: ...


def state_table(
    scope: Construct,
    construct_id: str,
    *,
    table_name: str,
    keys: tuple[str, ...],
    config: EnvConfig,
    removal_policy: RemovalPolicy,
    key: kms.IKey | None,
) -> dynamodb.Table:
    """A named DynamoDB table of the pipeline's state, as every such table is kept: string keys
    (partition, then sort), on demand, point-in-time recovery, items expiring by TTL, deletion
    protection where data is retained, encrypted with the data key where there is one."""
    string = dynamodb.AttributeType.STRING
    return dynamodb.Table(
        scope,
        construct_id,
        table_name=table_name,
        partition_key=dynamodb.Attribute(name=keys[0], type=string),
        sort_key=dynamodb.Attribute(name=keys[1], type=string) if len(keys) > 1 else None,
        billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
        point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
            point_in_time_recovery_enabled=True
        ),
        time_to_live_attribute=TTL_ATTRIBUTE,
        removal_policy=removal_policy,
        deletion_protection=config.retain_data,
        **(
            dict(encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED, encryption_key=key)
            if key is not None
            else dict(encryption=dynamodb.TableEncryption.AWS_MANAGED)
        ),  # type: ignore[arg-type]
    )


class MediaStore(Construct):
    """`bucket` (audio in, transcripts out), `table` (one record per job), `notifications`."""

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
        self.key = key
        # S3 server access logs can only be delivered to an SSE-S3 bucket.
        self.log_bucket = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=removal_policy,
            auto_delete_objects=False,
            lifecycle_rules=[
                s3.LifecycleRule(
                    expiration=Duration.days(max(90, config.log_retention_days)),
                    noncurrent_version_expiration=Duration.days(30),
                )
            ],
        )
        Validations.of(self.log_bucket).acknowledge(
            Acknowledgment(
                id=f"{GUARD}::s3_bucket_logging_enabled_check",
                reason="This is the access-log bucket itself: logging it into itself would loop.",
            ),
            Acknowledgment(
                id=f"{GUARD}::s3_event_notifications_enabled_check",
                reason="Holds only S3 access logs, which nothing processes as they arrive.",
            ),
            *(
                Acknowledgment(
                    id=f"{pack}-S3DefaultEncryptionKMS",
                    reason="S3 server access logging delivers only to SSE-S3 (AES256) buckets; "
                    "the logs hold request metadata, not media.",
                )
                for pack in ("NIST.800.53.R5", "HIPAA.Security")
            ),
        )
        if key is not None:  # without a key the rule is waived for every bucket (compliance.py)
            Validations.of(self.log_bucket).acknowledge(
                Acknowledgment(
                    id=f"{GUARD}::s3_bucket_default_encryption_kms_check",
                    reason="S3 server access logging delivers only to SSE-S3 (AES256) buckets; "
                    "the logs hold request metadata, not media.",
                )
            )
        encryption = (
            dict(encryption=s3.BucketEncryption.KMS, encryption_key=key, bucket_key_enabled=True)
            if key is not None
            else dict(encryption=s3.BucketEncryption.S3_MANAGED)
        )
        self.bucket_name = media_bucket_name(config)
        self.bucket = s3.Bucket(
            self,
            "Media",
            bucket_name=self.bucket_name,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=removal_policy,
            lifecycle_rules=[
                # Intermediate files (Transcribe's raw output, scratch renditions).
                s3.LifecycleRule(id="tmp", prefix=TMP, expiration=Duration.days(7)),
                # Bodies of dead letters kept by claim check: as long as the DLQ keeps a
                # message (14 days), and a fortnight more for the operator.
                s3.LifecycleRule(
                    id="dead-letters",
                    prefix=catalog.DEAD_LETTER_PREFIX,
                    expiration=Duration.days(28),
                ),
                s3.LifecycleRule(
                    id="old-versions",
                    noncurrent_version_expiration=Duration.days(30),
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                ),
            ],
            **encryption,  # type: ignore[arg-type]
        )
        # Access logging through a bucket policy for the S3 logging service (not the legacy
        # LogDeliveryWrite ACL, which ACL-disabled buckets refuse).
        self.log_bucket.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("logging.s3.amazonaws.com")],
                actions=["s3:PutObject"],
                resources=[self.log_bucket.arn_for_objects(f"{ACCESS_LOG_PREFIX}*")],
                conditions={
                    "ArnLike": {"aws:SourceArn": self.bucket.bucket_arn},
                    "StringEquals": {"aws:SourceAccount": Stack.of(self).account},
                },
            )
        )
        Validations.of(self.bucket).acknowledge(
            Acknowledgment(
                id=f"{GUARD}::s3_event_notifications_enabled_check",
                reason="ObjectCreated under uploads/ notifies the events queue through CDK's "
                "Custom::S3BucketNotifications resource (stacks/uploads.py), which the rule, "
                "reading only the bucket's own properties, cannot see.",
            )
        )
        cfn_bucket = self.bucket.node.default_child
        assert isinstance(cfn_bucket, s3.CfnBucket)
        cfn_bucket.logging_configuration = s3.CfnBucket.LoggingConfigurationProperty(
            destination_bucket_name=self.log_bucket.bucket_name,
            log_file_prefix=ACCESS_LOG_PREFIX,
        )
        # Named, so that the stateless stack finds it without an export (`named_media`). A name
        # given to an existing table or topic replaces it: they gained theirs before any deploy.
        self.table = state_table(
            self,
            "Jobs",
            table_name=naming.jobs_table(config.name),
            keys=("job_id",),
            config=config,
            removal_policy=removal_policy,
            key=key,
        )
        for pack in ("NIST.800.53.R5", "HIPAA.Security"):
            for bucket in (self.bucket, self.log_bucket):
                Validations.of(bucket).acknowledge(
                    Acknowledgment(
                        id=f"{pack}-S3BucketReplicationEnabled",
                        reason="Single-region deployment: versioning, RETAIN in prod and "
                        "noncurrent-version lifecycle protect the data; cross-region replication "
                        "is a disaster-recovery choice outside this stack.",
                    )
                )
            Validations.of(self.table).acknowledge(
                Acknowledgment(
                    id=f"{pack}-DynamoDBInBackupPlan",
                    reason="Point-in-time recovery is on (continuous backups, 35 days); job "
                    "records describe outputs that live in the versioned media bucket.",
                )
            )
        self.notifications = sns.Topic(
            self,
            "Notifications",
            topic_name=naming.notifications_topic(config.name),
            display_name=f"Sluice {config.name} job notifications",
            master_key=key or kms.Alias.from_alias_name(self, "SnsKey", "alias/aws/sns"),
            enforce_ssl=True,
        )


@dataclass(frozen=True)
class NamedMedia:
    """The media store another stack created, found by the names `MediaStore` gives it."""

    bucket_name: str
    table: dynamodb.ITable
    notifications: sns.ITopic


def named_media(
    scope: Construct, construct_id: str, *, config: EnvConfig, key: kms.IKey | None = None
) -> NamedMedia:
    """The media bucket, jobs table and notifications topic of `config`'s environment, by name
    (ARNs built from them, no cross-stack export); `key` encrypts them where there is one."""
    stack = Stack.of(scope)
    return NamedMedia(
        bucket_name=media_bucket_name(config),
        table=dynamodb.Table.from_table_attributes(
            scope,
            f"{construct_id}Jobs",
            table_name=naming.jobs_table(config.name),
            encryption_key=key,
        ),
        notifications=sns.Topic.from_topic_attributes(
            scope,
            f"{construct_id}Notifications",
            topic_arn=stack.format_arn(
                service="sns", resource=naming.notifications_topic(config.name)
            ),
            key_arn=key.key_arn if key is not None else None,
        ),
    )
