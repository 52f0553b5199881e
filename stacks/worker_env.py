"""The Elastic Beanstalk worker: application, version (the worker bundle) and worker-tier environment.

sqsd on each instance reads the events queue and POSTs every message to the `web` process
(worker/app.py). The instance profile is scoped to this environment's resources; auto scaling
tracks the events backlog per instance (.ebextensions/scaling.config in the bundle).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from aws_cdk import Acknowledgment, Aws, Duration, RemovalPolicy, Stack, Validations
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticbeanstalk as eb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import custom_resources as cr
from constructs import Construct

from sluice import catalog, naming
from sluice.settings import WebSettings
from stacks import coordination, grants
from stacks.bundling import ROOT, stage_bundle
from stacks.compliance import GUARD
from stacks.config import EnvConfig
from stacks.declarations import ROUTES_PATH, declared, routes_file
from stacks.queues import QueuePair

WORKER_DIR = ROOT / "worker"
SQSD_MAX_RETRIES = 100
SLUICE_DIR = ROOT / "sluice"
ADAPTERS_DIR = ROOT / "adapters"
# What Elastic Beanstalk reads at the application bundle's root.
EB_ROOT_FILES = ("Procfile", "requirements.txt", "cron.yaml", ".ebextensions", ".platform")
TASKS_STOP_HOOK = ".platform/hooks/postdeploy/10_tasks_stop_timeout.sh"
CONFIG_HOOK = TASKS_STOP_HOOK.replace("/hooks/", "/confighooks/")
# EB service-role policies AWS maintains in step with the platform (enhanced health and managed
# platform updates act on resources EB creates and names itself at environment creation), by
# their path in AWS's list of managed policies: the two live under different paths, and a wrong
# path fails the stack at deploy (tests/infra/test_catalogues.py checks them against that list).
SERVICE_ROLE_POLICIES = (
    "service-role/AWSElasticBeanstalkEnhancedHealth",
    "AWSElasticBeanstalkManagedUpdatesCustomerRolePolicy",
)


# AWS's managed instance policy for worker tiers, AWSElasticBeanstalkWorkerTier, statement by
# statement, and what the scoped instance policy below does instead. A test compares these Sids
# with AWS's published document (moto's copy), so a statement AWS adds is decided here, not
# silently missed.
WORKER_TIER_COMPARISON = {
    "MetricsAccess": "kept (Metrics): cloudwatch:PutMetricData has no resource type; a "
    "condition limits it to this environment's namespace and EB's",
    "XRayAccess": "kept (Tracing): the X-Ray daemon's calls, which have no resource type",
    "QueueAccess": "narrowed (EventsQueue): sqsd receives, deletes and extends messages of the "
    "events queue only, and its cron leader sends cron.yaml jobs to it",
    "BucketAccess": "narrowed (EbEnvironmentFiles, EbEnvironmentListing, EbLogPublication, "
    "ApplicationVersion): reads under resources/environments/ of EB's regional bucket, log "
    "uploads under resources/environments/logs/, and this application version's object",
    "DynamoPeriodicTasks": "narrowed (CronLeaderTable): EB's cron leader tables of this account "
    "and region only",
    "CloudWatchLogsAccess": "narrowed (EbLogs): this environment's /aws/elasticbeanstalk/<env>/ "
    "log groups",
    "ElasticBeanstalkHealthAccess": "narrowed (EbHealth): this application and environment",
    "AIEnvironmentAnalysisInvokeFoundationModel": "dropped: EB's AI environment analysis is an "
    "optional console feature; no Sluice process calls Amazon Bedrock",
    "AIEnvironmentAnalysisInvokeInferenceProfile": "dropped: as above (Bedrock)",
    "AIEnvironmentAnalysisReadOnly": "dropped: as above (Bedrock, EB events for the analysis)",
    "MarketplaceOperationsFromBedrock": "dropped: as above (Marketplace subscriptions for Bedrock)",
}


PLATFORM_ARN = "PlatformSummaryList.0.PlatformArn"
# How configuration changes that replace instances roll, for each deployment policy: one batch at
# a time once healthy, or a full new set beside the old.
ROLLING_UPDATE_TYPE = {"RollingWithAdditionalBatch": "Health", "Immutable": "Immutable"}
# EB names the Auto Scaling groups of its environments' stacks awseb-e-<id>-… and tags each with
# the environment's name.
EB_GROUP_NAMES = "awseb-e-*"
EB_ENVIRONMENT_TAG = "elasticbeanstalk:environment-name"


def scaling_options(config: EnvConfig, *, events: QueuePair, tasks: QueuePair) -> dict[str, object]:
    """The aws:elasticbeanstalk:customoption settings .ebextensions/scaling.config reads."""
    worker = config.worker
    return {
        "EventsQueueName": events.queue.queue_name,
        "BacklogPerInstance": worker.backlog_per_instance,
        "TasksQueueName": tasks.queue.queue_name,
        "TasksPerInstance": worker.tasks_per_instance,
    }


def platform_filters(branch: str) -> list[dict[str, object]]:
    """ListPlatformVersions filters for `branch`'s recommended worker-tier version."""
    return [
        {"Type": "PlatformBranchName", "Operator": "=", "Values": [branch]},
        {"Type": "PlatformLifecycleState", "Operator": "=", "Values": ["recommended"]},
        {"Type": "SupportedTier", "Operator": "=", "Values": ["Worker/SQS/HTTP"]},
    ]


def worker_bundle(routes: Path | None = None) -> Path:
    """The directory CDK zips and uploads as the application version.

    The root holds what EB reads there (EB_ROOT_FILES, kept in worker/ beside the code they start);
    the code is the `worker`, `adapters` and `sluice` packages, once each, so every process
    imports them by the same names as in this repository (tests/infra/test_bundles.py lists
    every file), and the declared workflows' routes beside `sluice` (`routes`, default the
    repository's declarations) which the web process routes events by.
    """
    return stage_bundle(
        "worker",
        {
            **{name: WORKER_DIR / name for name in EB_ROOT_FILES},
            # EB runs .platform/hooks after a deploy and .platform/confighooks after a
            # configuration-only one: the same hook serves both, kept once in the repository.
            CONFIG_HOOK: WORKER_DIR / TASKS_STOP_HOOK,
            "worker": WORKER_DIR,
            "adapters": ADAPTERS_DIR,
            "sluice": SLUICE_DIR,
            ROUTES_PATH: routes or routes_file(declared()),
        },
        exclude=[f"worker/{name}" for name in EB_ROOT_FILES],
    )


def option(namespace: str, name: str, value: object) -> eb.CfnEnvironment.OptionSettingProperty:
    text = value if isinstance(value, str) else json.dumps(value)
    return eb.CfnEnvironment.OptionSettingProperty(
        namespace=namespace, option_name=name, value=text
    )


class WorkerEnvironment(Construct):
    """`environment` (worker tier) running `application_version`; `instance_role`, `service_role`."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        vpc: ec2.IVpc,
        events: QueuePair,
        tasks: QueuePair,
        workflow_aliases: Mapping[str, lambda_.IAlias],
        media_bucket: str,
        key: kms.IKey | None = None,
        extra_environment: Mapping[str, str] | None = None,
        routes: Path | None = None,
    ) -> None:
        """`tasks` is the heavy steps' queue, which scaling follows with `events`; `media_bucket`
        keeps dead letters too large for the DLQ (claim check); `key` is the environment's data
        key; `extra_environment`: the tasks and scheduler processes' settings."""
        super().__init__(scope, construct_id)
        worker = config.worker
        app_name = f"{config.prefix}-worker"
        env_name = f"{config.prefix}-worker"
        self.environment_name = env_name
        # The worker's own counts (dispatch failures) go here; the alarms read them.
        self.metrics_namespace = naming.metrics_namespace(config.name, "Worker")

        self.application = eb.CfnApplication(
            self, "Application", application_name=app_name, description="Sluice events worker"
        )
        self.bundle = s3_assets.Asset(self, "Bundle", path=str(worker_bundle(routes)))
        self.application_version = eb.CfnApplicationVersion(
            self,
            "Version",
            application_name=app_name,
            source_bundle=eb.CfnApplicationVersion.SourceBundleProperty(
                s3_bucket=self.bundle.s3_bucket_name, s3_key=self.bundle.s3_object_key
            ),
        )
        self.application_version.node.add_dependency(self.application)

        self.instance_role = iam.Role(
            self,
            "InstanceRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description=f"{env_name} instances: EB's agents and sqsd",
        )
        self.instance_profile = iam.CfnInstanceProfile(
            self, "InstanceProfile", roles=[self.instance_role.role_name]
        )
        # One role per Procfile process, assumed from the instance role (worker/credentials.py):
        # the process that runs ffmpeg over uploads cannot start workflows or read the broker
        # secret, the web process cannot touch media. Grants go to the process that calls.
        self.process_roles: dict[str, iam.Role] = {
            process: iam.Role(
                self,
                f"{process.title()}Role",
                assumed_by=iam.ArnPrincipal(self.instance_role.role_arn),
                description=f"{env_name}: the {process} process",
            )
            for process in naming.WORKER_PROCESSES
        }
        self._grant_instance(
            app_name=app_name,
            env_name=env_name,
            events=events,
        )
        self._grant_scale_in_protection(env_name)
        self._grant_web(
            config=config,
            events=events,
            workflow_aliases=workflow_aliases,
            media_bucket=media_bucket,
            key=key,
        )
        self.service_role = iam.Role(
            self,
            "ServiceRole",
            assumed_by=iam.ServicePrincipal(
                "elasticbeanstalk.amazonaws.com",
                conditions={"StringEquals": {"sts:ExternalId": "elasticbeanstalk"}},
            ),
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name(name)
                for name in SERVICE_ROLE_POLICIES
            ],
            description=f"{env_name}: Elastic Beanstalk's own role (health, managed updates)",
        )
        for name in SERVICE_ROLE_POLICIES:
            Validations.of(self.service_role).acknowledge(
                Acknowledgment(
                    id=f"AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/{name}]",
                    reason="Elastic Beanstalk's service role: enhanced health and managed "
                    "platform updates act on the Auto Scaling group, launch template and "
                    "CloudFormation stack EB creates and names at environment creation, so no "
                    "scoped copy can name them; AWS keeps this policy in step with the platform. "
                    "Our code never runs with this role (the instances use InstanceRole).",
                )
            )

        self.security_group = ec2.SecurityGroup(
            self,
            "Instances",
            vpc=vpc,
            description=f"{env_name} instances: no inbound; outbound to AWS APIs via NAT",
            allow_all_outbound=True,
        )
        private = vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        settings = [
            option("aws:elasticbeanstalk:environment", "EnvironmentType", "LoadBalanced"),
            option("aws:elasticbeanstalk:environment", "ServiceRole", self.service_role.role_arn),
            option("aws:ec2:instances", "InstanceTypes", worker.instance_type),
            option("aws:autoscaling:asg", "MinSize", worker.min_instances),
            option("aws:autoscaling:asg", "MaxSize", worker.max_instances),
            option(
                "aws:autoscaling:launchconfiguration",
                "IamInstanceProfile",
                self.instance_profile.ref,
            ),
            option("aws:autoscaling:launchconfiguration", "DisableIMDSv1", "true"),
            option(
                "aws:autoscaling:launchconfiguration",
                "SecurityGroups",
                self.security_group.security_group_id,
            ),
            option("aws:autoscaling:launchconfiguration", "RootVolumeType", "gp3"),
            option("aws:ec2:vpc", "VPCId", vpc.vpc_id),
            option("aws:ec2:vpc", "Subnets", ",".join(private.subnet_ids)),
            option("aws:ec2:vpc", "AssociatePublicIpAddress", "false"),
            # sqsd: our queue (its redrive policy owns dead-lettering), our timeouts.
            option("aws:elasticbeanstalk:sqsd", "WorkerQueueURL", events.queue.queue_url),
            option("aws:elasticbeanstalk:sqsd", "HttpPath", worker.http_path),
            option("aws:elasticbeanstalk:sqsd", "MimeType", "application/json"),
            option("aws:elasticbeanstalk:sqsd", "HttpConnections", worker.http_connections),
            option("aws:elasticbeanstalk:sqsd", "ConnectTimeout", 5),
            option("aws:elasticbeanstalk:sqsd", "InactivityTimeout", worker.processing_timeout_s),
            option(
                "aws:elasticbeanstalk:sqsd",
                "VisibilityTimeout",
                config.events_queue.visibility_timeout_s,
            ),
            option(
                "aws:elasticbeanstalk:sqsd",
                "ErrorVisibilityTimeout",
                worker.error_visibility_timeout_s,
            ),
            option("aws:elasticbeanstalk:sqsd", "RetentionPeriod", config.events_queue.retention_s),
            # The queue's redrive policy governs dead-lettering; sqsd's own counter (1-100)
            # is set to match it so neither gives up first.
            option(
                "aws:elasticbeanstalk:sqsd",
                "MaxRetries",
                min(config.events_queue.max_receive_count, SQSD_MAX_RETRIES),
            ),
            # Platform: managed minor/patch updates in a weekly window, enhanced health, X-Ray.
            option("aws:elasticbeanstalk:managedactions", "ManagedActionsEnabled", "true"),
            option("aws:elasticbeanstalk:managedactions", "PreferredStartTime", "Sun:03:00"),
            option(
                "aws:elasticbeanstalk:managedactions",
                "ServiceRoleForManagedUpdates",
                self.service_role.role_arn,
            ),
            option("aws:elasticbeanstalk:managedactions:platformupdate", "UpdateLevel", "minor"),
            option(
                "aws:elasticbeanstalk:managedactions:platformupdate",
                "InstanceRefreshEnabled",
                "true",
            ),
            option("aws:elasticbeanstalk:healthreporting:system", "SystemType", "enhanced"),
            # Publish EnvironmentHealth to CloudWatch every minute: the worker-health alarm reads it.
            option(
                "aws:elasticbeanstalk:healthreporting:system",
                "ConfigDocument",
                json.dumps(
                    {
                        "Version": 1,
                        "CloudWatchMetrics": {"Environment": {"EnvironmentHealth": 60}},
                    },
                    sort_keys=True,
                ),
            ),
            option("aws:elasticbeanstalk:xray", "XRayEnabled", "true"),
            # Logs: streamed to CloudWatch with the environment's retention, published to S3.
            option("aws:elasticbeanstalk:cloudwatch:logs", "StreamLogs", "true"),
            option(
                "aws:elasticbeanstalk:cloudwatch:logs", "RetentionInDays", config.log_retention_days
            ),
            option(
                "aws:elasticbeanstalk:cloudwatch:logs",
                "DeleteOnTerminate",
                "false" if config.retain_data else "true",
            ),
            option("aws:elasticbeanstalk:cloudwatch:logs:health", "HealthStreamingEnabled", "true"),
            option(
                "aws:elasticbeanstalk:cloudwatch:logs:health",
                "RetentionInDays",
                config.log_retention_days,
            ),
            option("aws:elasticbeanstalk:hostmanager", "LogPublicationControl", "true"),
            # CPU only adds instances (LowerThreshold 0 never fires); the backlog-per-instance
            # target tracking policy in .ebextensions/scaling.config does the real scaling.
            option("aws:autoscaling:trigger", "MeasureName", "CPUUtilization"),
            option("aws:autoscaling:trigger", "Statistic", "Average"),
            option("aws:autoscaling:trigger", "Unit", "Percent"),
            option("aws:autoscaling:trigger", "UpperThreshold", 85),
            option("aws:autoscaling:trigger", "LowerThreshold", 0),
            # What the target tracking policies in .ebextensions/scaling.config read.
            *(
                option("aws:elasticbeanstalk:customoption", name, value)
                for name, value in scaling_options(config, events=events, tasks=tasks).items()
            ),
            # Deploys keep capacity and let running tasks finish (the README's "Deploys"):
            # one instance at a time, each within EB's command timeout, which covers the tasks
            # process's drain. Configuration changes that replace instances follow the same
            # policy (rolling by health, or immutable).
            option("aws:elasticbeanstalk:command", "DeploymentPolicy", worker.deployment_policy),
            option("aws:elasticbeanstalk:command", "BatchSizeType", "Fixed"),
            option("aws:elasticbeanstalk:command", "BatchSize", 1),
            option("aws:elasticbeanstalk:command", "Timeout", worker.deploy_timeout_s),
            option("aws:autoscaling:updatepolicy:rollingupdate", "RollingUpdateEnabled", "true"),
            option(
                "aws:autoscaling:updatepolicy:rollingupdate",
                "RollingUpdateType",
                ROLLING_UPDATE_TYPE[worker.deployment_policy],
            ),
            option("aws:autoscaling:updatepolicy:rollingupdate", "MaxBatchSize", 1),
            # What the web process reads (sluice.settings.WebSettings); the other processes'
            # settings come in `extra_environment`, rendered from their own models.
            *(
                option("aws:elasticbeanstalk:application:environment", name, value)
                for name, value in {
                    **WebSettings.render(
                        env=config.name,
                        events_dlq_url=events.dlq.queue_url,
                        max_body_bytes=worker.max_body_bytes,
                        http_path=worker.http_path,
                        web_threads=worker.http_connections,
                        # The counts the worker alarms read go to CloudWatch once a minute.
                        publish_metrics_s=60,
                        metrics_namespace=self.metrics_namespace,
                        # Poison too large for an SQS message waits here, its pointer in the DLQ.
                        claim_check_bucket=media_bucket,
                        # Flow control's state and wake-ups (docs/flow-control.md).
                        coordination_table=naming.coordination_table(config.name),
                        events_queue_url=events.queue.queue_url,
                    ),
                    **naming.alias_variables(
                        {name: alias.function_arn for name, alias in workflow_aliases.items()}
                    ),
                    **{
                        naming.role_variable(process): role.role_arn
                        for process, role in self.process_roles.items()
                    },
                    "AWS_DEFAULT_REGION": Aws.REGION,
                    **(extra_environment or {}),
                }.items()
            ),
        ]
        self.environment = eb.CfnEnvironment(
            self,
            "Environment",
            application_name=app_name,
            environment_name=env_name,
            platform_arn=self._recommended_platform(config, key),
            tier=eb.CfnEnvironment.TierProperty(name="Worker", type="SQS/HTTP"),
            version_label=self.application_version.ref,
            option_settings=settings,
        )
        self.environment.node.add_dependency(self.application)

    def _grant_instance(self, *, app_name: str, env_name: str, events: QueuePair) -> None:
        """What EB's agents (deployment, logs, health, X-Ray daemon) and sqsd call, and the
        assumption of the process roles: nothing the application's code calls itself."""
        role = self.instance_role
        # Statements rather than grant_*(): grants land in an inline policy (NIST/HIPAA
        # IAMNoInlinePolicy) and bring wildcard KMS actions; this is one managed policy.
        keys = {events.queue.encryption_master_key} - {None}
        named = [
            # sqsd's side of the events queue; its cron leader also sends each cron.yaml job
            # there when it falls due (the periodic tasks of an environment without a broker).
            iam.PolicyStatement(
                sid="EventsQueue",
                actions=[
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:ChangeMessageVisibility",
                    "sqs:GetQueueAttributes",
                    "sqs:GetQueueUrl",
                    "sqs:SendMessage",
                ],
                resources=[events.queue.queue_arn],
            ),
            # The instances fetch exactly this application version; no wider read on the bucket.
            iam.PolicyStatement(
                sid="ApplicationVersion",
                actions=["s3:GetObject"],
                resources=[self.bundle.bucket.arn_for_objects(self.bundle.s3_object_key)],
            ),
        ]
        if keys:
            # SSE-KMS: receivers decrypt, senders generate a data key.
            named.append(
                iam.PolicyStatement(
                    sid="QueueKey",
                    actions=["kms:Decrypt", "kms:GenerateDataKey"],
                    resources=[k.key_arn for k in keys if k is not None],
                )
            )
        named.append(
            iam.PolicyStatement(
                sid="AssumeProcessRoles",
                actions=["sts:AssumeRole"],
                resources=[r.role_arn for r in self.process_roles.values()],
            )
        )
        region, account, partition = Aws.REGION, Aws.ACCOUNT_ID, Aws.PARTITION
        eb_stack = f"arn:{partition}:cloudformation:{region}:{account}:stack/awseb-e-*"
        eb_bucket = f"arn:{partition}:s3:::elasticbeanstalk-{region}-{account}"
        unnamed = [
            # EB names these at environment creation (awseb-e-<random id>-stack…).
            iam.PolicyStatement(
                sid="CronLeaderTable",
                actions=[
                    "dynamodb:BatchGetItem",
                    "dynamodb:BatchWriteItem",
                    "dynamodb:DeleteItem",
                    "dynamodb:GetItem",
                    "dynamodb:PutItem",
                    "dynamodb:Query",
                    "dynamodb:Scan",
                    "dynamodb:UpdateItem",
                ],
                resources=[
                    f"arn:{partition}:dynamodb:{region}:{account}:table/"
                    "awseb-e-*-stack-AWSEBWorkerCronLeaderRegistry*"
                ],
            ),
            iam.PolicyStatement(
                sid="EbStackMetadata",
                actions=[
                    "cloudformation:DescribeStackResource",
                    "cloudformation:DescribeStackResources",
                ],
                resources=[f"{eb_stack}/*"],
            ),
            iam.PolicyStatement(
                sid="EbLogs",
                actions=[
                    "logs:CreateLogGroup",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                    "logs:DescribeLogStreams",
                    "logs:PutRetentionPolicy",
                ],
                resources=[
                    f"arn:{partition}:logs:{region}:{account}:log-group:/aws/elasticbeanstalk/"
                    f"{env_name}/*"
                ],
            ),
            iam.PolicyStatement(
                sid="EbLogPublication",
                actions=["s3:PutObject"],
                resources=[f"{eb_bucket}/resources/environments/logs/*"],
            ),
            # EB's agents read the environment's manifest and deployment files from its regional
            # bucket, under resources/environments/<environment id>/ (the id exists only once
            # the environment does).
            iam.PolicyStatement(
                sid="EbEnvironmentFiles",
                actions=["s3:GetObject", "s3:GetObjectVersion"],
                resources=[f"{eb_bucket}/resources/environments/*"],
            ),
            iam.PolicyStatement(
                sid="EbEnvironmentListing",
                actions=["s3:ListBucket"],
                resources=[eb_bucket],
                conditions={"StringLike": {"s3:prefix": ["resources/environments/*"]}},
            ),
            iam.PolicyStatement(
                sid="EbHealth",
                actions=["elasticbeanstalk:PutInstanceStatistics"],
                resources=[
                    f"arn:{partition}:elasticbeanstalk:{region}:{account}:application/{app_name}",
                    f"arn:{partition}:elasticbeanstalk:{region}:{account}:environment/"
                    f"{app_name}/{env_name}",
                ],
            ),
        ]
        # No resource-level permissions exist for these; the condition narrows metrics to ours.
        resourceless_statements = [
            iam.PolicyStatement(
                sid="Metrics",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringEquals": {"cloudwatch:namespace": "AWS/ElasticBeanstalk"}},
            ),
            iam.PolicyStatement(
                sid="Tracing",
                actions=[
                    "xray:PutTraceSegments",
                    "xray:PutTelemetryRecords",
                    "xray:GetSamplingRules",
                    "xray:GetSamplingTargets",
                    "xray:GetSamplingStatisticSummaries",
                ],
                resources=["*"],
            ),
        ]
        resourceless = (
            "cloudwatch:PutMetricData and the X-Ray daemon's actions have no resource type (AWS "
            "service authorization reference); metrics are limited to EB's namespace by "
            "condition"
        )
        grants.policy(
            self,
            "InstancePolicy",
            description=f"{env_name} instances",
            statements=[*named, *unnamed, *resourceless_statements],
            roles=[role],
            reasons={
                "Metrics": resourceless,
                "Tracing": resourceless,
                "CronLeaderTable": "the cron leader table is created and named by Elastic "
                "Beanstalk (awseb-e-<id>-stack-…) after this template is deployed",
                "EbStackMetadata": "cfn-init on the instance reads the environment's own stack, "
                "which Elastic Beanstalk names at creation",
                "EbLogs": "the log groups of this environment's log files (one per file), "
                "created by EB's log streaming",
                "EbLogPublication": "EB publishes rotated logs under this prefix of its regional "
                "bucket, keyed by environment and instance id, which exist only after this "
                "template is deployed",
                "EbEnvironmentFiles": "EB's agents read the environment's manifest and "
                "deployment files under resources/environments/<environment id>/, an id EB "
                "assigns when it creates the environment",
            },
        )

    def _grant_scale_in_protection(self, env_name: str) -> None:
        """The tasks process protects its instance from scale-in while it runs a task
        (worker/protection.py): only in this environment's Auto Scaling group."""
        region, account, partition = Aws.REGION, Aws.ACCOUNT_ID, Aws.PARTITION
        groups = (
            f"arn:{partition}:autoscaling:{region}:{account}:autoScalingGroup:*:"
            f"autoScalingGroupName/{EB_GROUP_NAMES}"
        )
        grants.policy(
            self,
            "ScaleInProtectionPolicy",
            description=f"{env_name}: the tasks process protects its instance while it works",
            roles=[self.process_roles["tasks"]],
            statements=[
                iam.PolicyStatement(
                    sid="ProtectOwnInstance",
                    actions=["autoscaling:SetInstanceProtection"],
                    resources=[groups],
                    conditions={
                        "StringEquals": {f"autoscaling:ResourceTag/{EB_ENVIRONMENT_TAG}": env_name}
                    },
                ),
                iam.PolicyStatement(
                    sid="FindOwnGroup",
                    actions=["autoscaling:DescribeAutoScalingInstances"],
                    resources=["*"],
                ),
            ],
            reasons={
                "ProtectOwnInstance": "EB creates and names the environment's Auto Scaling group "
                "(awseb-e-<id>-stack-AWSEBAutoScalingGroup-<suffix>, and a temporary one during an "
                "immutable deploy) after this template is deployed; the condition on EB's "
                "environment-name tag keeps it to this environment's groups",
                "FindOwnGroup": "autoscaling:DescribeAutoScalingInstances has no resource type "
                "(AWS service authorization reference); it only reads which group an instance "
                "is in",
            },
        )

    def _grant_web(
        self,
        *,
        config: EnvConfig,
        events: QueuePair,
        workflow_aliases: Mapping[str, lambda_.IAlias],
        media_bucket: str,
        key: kms.IKey | None,
    ) -> None:
        """What the web process calls: start the workflows, dead-letter poison (with the body in
        the media bucket when it cannot fit the DLQ), publish its counts; for flow control
        (docs/flow-control.md), its items in the coordination table and its wake-ups on the
        events queue."""
        partition = Aws.PARTITION
        dead_letters = f"arn:{partition}:s3:::{media_bucket}/{catalog.DEAD_LETTER_PREFIX}*"
        statements = [
            iam.PolicyStatement(
                sid="StartWorkflows",
                actions=["lambda:InvokeFunction"],
                resources=[a.function_arn for _, a in sorted(workflow_aliases.items())],
            ),
            iam.PolicyStatement(
                sid="EventsDlq", actions=["sqs:SendMessage"], resources=[events.dlq.queue_arn]
            ),
            iam.PolicyStatement(
                sid="DeadLetterBodies", actions=["s3:PutObject"], resources=[dead_letters]
            ),
            iam.PolicyStatement(
                sid="FlowState",
                actions=list(coordination.WEB_ACTIONS),
                resources=[coordination.table_arn(config)],
            ),
            iam.PolicyStatement(
                sid="FlowWakeUps", actions=["sqs:SendMessage"], resources=[events.queue.queue_arn]
            ),
            iam.PolicyStatement(
                sid="Metrics",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringEquals": {"cloudwatch:namespace": self.metrics_namespace}},
            ),
        ]
        if key is not None:  # the queues, the bucket and the tables are encrypted with the data key
            statements.append(
                iam.PolicyStatement(
                    sid="DataKey",
                    actions=["kms:GenerateDataKey", "kms:Decrypt"],
                    resources=[key.key_arn],
                )
            )
        grants.policy(
            self,
            "WebPolicy",
            description=f"{self.environment_name}: the web process",
            statements=statements,
            roles=[self.process_roles["web"]],
            reasons={
                "Metrics": "cloudwatch:PutMetricData has no resource type; a condition limits "
                "it to this environment's worker namespace",
                "DeadLetterBodies": "Bodies of dead letters too large for the DLQ (claim "
                "check), under dead-letters/ only, keyed by their hash",
            },
        )

    def _recommended_platform(self, config: EnvConfig, key: kms.IKey | None) -> str:
        """The ARN of the configured branch's recommended platform version, asked of EB when
        the environment is created (or its branch changes), never pinned in the template.

        EB lets an account create an environment on an older platform version only while it
        uses that version; a fresh account would get "No Solution Stack named …". After the
        creation, managed platform updates keep the environment current; the template's value
        does not change, so CloudFormation never moves the environment back.
        """
        branch = config.worker.platform_branch
        call = cr.AwsSdkCall(
            service="ElasticBeanstalk",
            action="listPlatformVersions",
            parameters={"Filters": platform_filters(branch)},
            physical_resource_id=cr.PhysicalResourceId.of(f"{config.prefix}-platform:{branch}"),
            output_paths=[PLATFORM_ARN],
        )
        role = iam.Role(
            self,
            "PlatformLookupRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"{config.prefix}: look up EB's recommended platform at deploy time",
        )
        log_group = logs.LogGroup(
            self,
            "PlatformLookupLogs",
            log_group_name=naming.lambda_log_group(config.name, "platform_lookup"),
            removal_policy=RemovalPolicy.DESTROY,
            encryption_key=key,
        )
        cfn_group = log_group.node.default_child
        assert isinstance(cfn_group, logs.CfnLogGroup)
        cfn_group.retention_in_days = config.log_retention_days
        if key is not None:
            Validations.of(log_group).acknowledge(
                Acknowledgment(
                    id=f"{GUARD}::cloudwatch_log_group_encrypted_check",
                    reason="Encrypted with the environment's data key from the stateful stack: "
                    "KmsKeyId is its ARN built around an SSM parameter, which the rule cannot follow.",
                )
            )
        policy = grants.policy(
            self,
            "PlatformLookupPolicy",
            description=f"{config.prefix}: list EB platform versions, write its own logs",
            roles=[role],
            statements=[
                iam.PolicyStatement(
                    sid="Platforms",
                    actions=["elasticbeanstalk:ListPlatformVersions"],
                    resources=["*"],
                ),
                iam.PolicyStatement(
                    actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                    resources=[log_group.log_group_arn],
                ),
            ],
            reasons={
                "Platforms": "elasticbeanstalk:ListPlatformVersions lists AWS's public platform "
                "versions; nothing of the account is readable through it."
            },
        )
        lookup = cr.AwsCustomResource(
            self,
            "Platform",
            on_create=call,
            on_update=call,
            role=role,
            log_group=log_group,
            memory_size=128,
            install_latest_aws_sdk=False,
            timeout=Duration.minutes(2),
        )
        lookup.node.add_dependency(policy)
        # The provider is a singleton of the stack, its id the UUID without dashes.
        provider = Stack.of(self).node.find_child(
            "AWS" + cr.AwsCustomResource.PROVIDER_FUNCTION_UUID.replace("-", "")
        )
        for pack in ("NIST.800.53.R5", "HIPAA.Security"):
            for rule, reason in {
                "LambdaConcurrency": "CDK's AwsCustomResource provider runs once when the "
                "worker environment is created or its platform branch changes",
                "LambdaDLQ": "invoked synchronously by CloudFormation, which fails the "
                "deployment on an error: nothing to dead-letter",
                "LambdaInsideVPC": "calls only Elastic Beanstalk's public API",
            }.items():
                Validations.of(provider).acknowledge(
                    Acknowledgment(id=f"{pack}-{rule}", reason=reason)
                )
        return lookup.get_response_field(PLATFORM_ARN)
