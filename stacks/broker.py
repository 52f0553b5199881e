"""Amazon MQ for RabbitMQ: the optional broker that drives the drift-free periodic scheduler.

Private (no public endpoint) in the VPC's private subnets, reachable only from what `allow_from`
admits (the worker on AMQPS 5671 and the management API on 443; the broker user's provisioning
function on 443). Two users, each password generated in Secrets Manager: the administrator,
which Amazon MQ creates (a dynamic reference, never plain text in the template) and only the
provisioning function reads; and the scheduler's own user (stacks/broker_user.py makes it), which
only the scheduler process and that function read.

`Broker` is the stateful stack's: the broker, its security group and secrets. `NamedBroker` is the
same broker as the stateless stack finds it (through the SSM parameters `Broker` writes, no
cross-stack export): it admits the worker, grants the scheduler and watches the broker.
"""

from __future__ import annotations

import json

from aws_cdk import Acknowledgment, Aws, Duration, Fn, RemovalPolicy, Validations
from aws_cdk import aws_amazonmq as mq
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from sluice import metrics, naming
from sluice.scheduling.names import SCHEDULER_USER
from sluice.scheduling.registry import REGISTRY, Registry
from sluice.settings import SchedulerSettings
from stacks import grants, parameters
from stacks.config import BrokerConfig, EnvConfig
from stacks.monitoring import Monitoring

AMQPS_PORT = 5671
HTTPS_PORT = 443
LT = cw.ComparisonOperator.LESS_THAN_THRESHOLD
LTE = cw.ComparisonOperator.LESS_THAN_OR_EQUAL_TO_THRESHOLD
# A task keeps failing or missing ticks: this many failed attempts and missed ticks in 5 minutes
# (a tick failing on all 3 default attempts is one).
FAILING_TICKS = 3


def broker_name(config: EnvConfig) -> str:
    """The broker's name, e.g. `Sluice-prod-scheduler`."""
    return f"{config.prefix}-scheduler"


class Broker(Construct):
    """`broker` (CfnBroker), `security_group`, `admin_secret`, `scheduler_secret`,
    `amqps_endpoint`; `publish` hands what AWS generates of them to the stateless stack."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        broker: BrokerConfig,
        vpc: ec2.IVpc,
        removal_policy: RemovalPolicy,
        key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.key = key
        self.broker_name = broker_name(config)
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description=f"{self.broker_name}: AMQPS from the worker only",
            # The broker never opens connections of its own.
            allow_all_outbound=False,
        )
        self.admin_secret = self._user_secret(
            "AdminSecret", broker.admin_username, "RabbitMQ admin user", removal_policy
        )
        self.scheduler_secret = self._user_secret(
            "SchedulerSecret",
            SCHEDULER_USER,
            "RabbitMQ user of the scheduler process",
            removal_policy,
        )
        self._allow_log_delivery()
        private = vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS).subnet_ids
        single = broker.deployment_mode == "SINGLE_INSTANCE"
        self.broker = mq.CfnBroker(
            self,
            "Broker",
            broker_name=self.broker_name,
            engine_type="RABBITMQ",
            engine_version=broker.engine_version,
            host_instance_type=broker.instance_type,
            deployment_mode=broker.deployment_mode,
            publicly_accessible=False,
            auto_minor_version_upgrade=True,
            # One subnet for a single instance; a cluster spreads its nodes over the AZs.
            subnet_ids=private[:1] if single else private,
            security_groups=[self.security_group.security_group_id],
            users=[
                mq.CfnBroker.UserProperty(
                    username=broker.admin_username,
                    password=self.admin_secret.secret_value_from_json("password").unsafe_unwrap(),
                )
            ],
            logs=mq.CfnBroker.LogListProperty(general=True),
            maintenance_window_start_time=mq.CfnBroker.MaintenanceWindowProperty(
                day_of_week=broker.maintenance_day,
                time_of_day=broker.maintenance_time_utc,
                time_zone="UTC",
            ),
            # RabbitMQ brokers encrypt at rest with an AWS-owned key only (no customer keys).
            encryption_options=mq.CfnBroker.EncryptionOptionsProperty(use_aws_owned_key=True),
        )
        self.broker.apply_removal_policy(removal_policy)
        # AmqpEndpoints is e.g. ["amqps://b-1234.mq.eu-west-1.amazonaws.com:5671"].
        self.amqps_endpoint = Fn.select(0, self.broker.attr_amqp_endpoints)

    def publish(self, env: str) -> None:
        """Hand what AWS generates (the security group's id, the endpoint, the secrets' ARNs with
        their random suffix) to the stateless stack, which reads it as `NamedBroker`."""
        for name, value in {
            naming.BROKER_SECURITY_GROUP_ID: self.security_group.security_group_id,
            naming.BROKER_AMQPS_ENDPOINT: self.amqps_endpoint,
            naming.BROKER_ADMIN_SECRET_ARN: self.admin_secret.secret_arn,
            naming.BROKER_SCHEDULER_SECRET_ARN: self.scheduler_secret.secret_arn,
        }.items():
            parameters.publish(self, env, name, value)

    def _user_secret(
        self,
        construct_id: str,
        username: str,
        what: str,
        removal_policy: RemovalPolicy,
    ) -> secretsmanager.Secret:
        """A broker user's credentials: {"username": …, "password": <generated>}."""
        # Amazon MQ refuses ',', ':' and '=' in passwords; letters and digits also keep the
        # password safe inside the AMQP URL the worker builds.
        secret = secretsmanager.Secret(
            self,
            construct_id,
            description=f"{self.broker_name}: {what}",
            encryption_key=self.key,
            removal_policy=removal_policy,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template=json.dumps({"username": username}),
                generate_string_key="password",
                password_length=32,
                exclude_punctuation=True,
            ),
        )
        Validations.of(secret).acknowledge(
            Acknowledgment(
                id="AwsSolutions-SMG4",
                reason="The broker keeps its own copy of each user's password and AWS provides "
                "no Secrets Manager rotation function for Amazon MQ users: rotating the secret "
                "alone would lock the user out (and the scheduler reads its password only at "
                "start). Rotation is a runbook procedure that changes the broker and the secret "
                "together (docs/runbook.md#scheduler-broker-credentials).",
            )
        )
        for rule in (
            "NIST.800.53.R5-SecretsManagerRotationEnabled",
            "HIPAA.Security-SecretsManagerRotationEnabled",
        ):
            Validations.of(secret).acknowledge(
                Acknowledgment(
                    id=rule,
                    reason="No Secrets Manager rotation exists for Amazon MQ users (see "
                    "AwsSolutions-SMG4); rotation is the runbook's manual procedure.",
                )
            )
        return secret

    def _allow_log_delivery(self) -> None:
        """Amazon MQ writes general logs to /aws/amazonmq/broker/<id>/general only when the
        account's CloudWatch Logs resource policy lets it."""
        logs.ResourcePolicy(
            self,
            "LogDelivery",
            resource_policy_name=f"{self.broker_name}-logs",
            policy_statements=[
                iam.PolicyStatement(
                    principals=[iam.ServicePrincipal("mq.amazonaws.com")],
                    actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                    resources=[
                        f"arn:{Aws.PARTITION}:logs:{Aws.REGION}:{Aws.ACCOUNT_ID}:"
                        "log-group:/aws/amazonmq/*"
                    ],
                )
            ],
        )


class NamedBroker(Construct):
    """The broker as the stateless stack finds it: its security group, endpoint and secrets by
    the SSM parameters `Broker.publish` writes. `security_group_id`, `admin_secret`,
    `scheduler_secret`, `amqps_endpoint`, `management_url`."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        broker: BrokerConfig,
        key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.config = broker
        self.key = key
        self.broker_name = broker_name(config)
        # Where the scheduler publishes the broker figures the alarms read.
        self.metrics_namespace = naming.metrics_namespace(config.name, "Scheduler")

        def read(name: str) -> str:
            return parameters.read(self, config.name, name)

        self.security_group_id = read(naming.BROKER_SECURITY_GROUP_ID)
        self.admin_secret = secretsmanager.Secret.from_secret_complete_arn(
            self, "AdminSecret", read(naming.BROKER_ADMIN_SECRET_ARN)
        )
        self.scheduler_secret = secretsmanager.Secret.from_secret_complete_arn(
            self, "SchedulerSecret", read(naming.BROKER_SCHEDULER_SECRET_ARN)
        )
        self.amqps_endpoint = read(naming.BROKER_AMQPS_ENDPOINT)
        # Amazon MQ serves RabbitMQ's management API over HTTPS on the AMQPS host (the scheduler
        # derives the same URL: broker_metrics.management_url; a test holds the two together).
        host = Fn.select(0, Fn.split(":", Fn.select(1, Fn.split("://", self.amqps_endpoint))))
        self.management_url = Fn.join("", ["https://", host])

    def read_secrets(self, *secrets: secretsmanager.ISecret, sid: str) -> list[iam.PolicyStatement]:
        """Statements that read `secrets`' values (and decrypt them with the data key, only
        through Secrets Manager): for a policy in the reader's own stack.

        No grant_*() here: grants land in an inline policy (NIST/HIPAA IAMNoInlinePolicy). The
        key policy delegates to IAM, and the secrets have no resource policy.
        """
        statements = [
            iam.PolicyStatement(
                sid=sid,
                actions=["secretsmanager:GetSecretValue"],
                resources=[s.secret_arn for s in secrets],
            )
        ]
        if self.key is not None:
            statements.append(
                iam.PolicyStatement(
                    sid=f"{sid}Key",
                    actions=["kms:Decrypt"],
                    resources=[self.key.key_arn],
                    conditions={
                        "StringEquals": {
                            "kms:ViaService": f"secretsmanager.{Aws.REGION}.amazonaws.com"
                        }
                    },
                )
            )
        return statements

    def allow_from(self, other: ec2.SecurityGroup, *, amqps: bool = True) -> None:
        """Admit `other` on the management API (443) and, with `amqps`, on AMQPS: nothing else."""
        # The broker's group as `other` sees it, made under `other`: the rules both ways live
        # with `other`, so whatever depends on `other` depends on its way to the broker too.
        group = ec2.SecurityGroup.from_security_group_id(
            other, "Broker", self.security_group_id, allow_all_outbound=False, mutable=True
        )
        broker = ec2.Connections(security_groups=[group], default_port=ec2.Port.tcp(AMQPS_PORT))
        if amqps:
            other.connections.allow_to_default_port(broker, "to the broker (AMQPS)")
        # RabbitMQ's management API: the scheduler reads each node's memory and disk there, the
        # provisioning function makes the scheduler's user.
        other.connections.allow_to(
            broker, ec2.Port.tcp(HTTPS_PORT), "to the broker (management API)"
        )

    def grant_connect(
        self,
        scope: Construct,
        role: iam.IRole,
        *,
        events_queue: sqs.IQueue,
        ledger: list[iam.PolicyStatement],
    ) -> iam.ManagedPolicy:
        """Let the scheduler's `role` read its broker user's credentials, send events, publish
        the broker figures and keep its tick `ledger` (those statements): one managed policy,
        created in `scope` (the role's stack)."""
        statements = [
            *ledger,
            # A tick's default action sends its event to the events queue.
            iam.PolicyStatement(
                sid="SchedulerSendsEvents",
                actions=["sqs:SendMessage"],
                resources=[events_queue.queue_arn],
            ),
            # Its own user's, never the administrator's.
            *self.read_secrets(self.scheduler_secret, sid="SchedulerSecret"),
        ]
        policy = iam.ManagedPolicy(
            scope,
            "BrokerAccess",
            description=f"{self.broker_name}: read the scheduler user's credentials",
            statements=statements,
            roles=[role],
        )
        # The broker figures the alarms read.
        grants.allow(
            policy,
            ["cloudwatch:PutMetricData"],
            ["*"],
            sid="BrokerFigures",
            conditions={"StringEquals": {"cloudwatch:namespace": self.metrics_namespace}},
            reason="cloudwatch:PutMetricData has no resource type; a condition limits it to "
            "this environment's scheduler namespace.",
        )
        return policy

    def worker_environment(self) -> dict[str, str]:
        """The scheduler process's settings for the broker (sluice.settings.SchedulerSettings)."""
        kept = {"hold_s": self.config.hold_tokens_s} if self.config.hold_tokens_s else {}
        return SchedulerSettings.render(
            broker_endpoint=self.amqps_endpoint,
            broker_secret_arn=self.scheduler_secret.secret_arn,
            metrics_namespace=self.metrics_namespace,
            **kept,
        )

    # -- alarms ---------------------------------------------------------------------------------
    # Amazon MQ publishes no per-queue metrics for RabbitMQ 4, and its memory and disk figures
    # of a cluster are sums over the nodes. The scheduler measures what the alarms need itself
    # (worker/scheduler/broker_metrics.py): per task, per node, in this namespace.

    def _own(self, name: str, statistic: str = "Maximum", **dims: str) -> cw.Metric:
        return cw.Metric(
            namespace=self.metrics_namespace,
            metric_name=name,
            dimensions_map=dims or None,
            statistic=statistic,
            period=Duration.minutes(5),
        )

    def _per_node(self, name: str, function: str) -> cw.MathExpression:
        """The worst node's `name` (a Metrics Insights query: node names are the broker's)."""
        return cw.MathExpression(
            # Our own constants, not input: no injection.
            expression=f'SELECT {function}({name}) FROM SCHEMA("{self.metrics_namespace}", Node)',  # noqa: S608
            using_metrics={},
            label=f"{name}, worst node",
            period=Duration.minutes(5),
        )

    def watch(self, monitoring: Monitoring, registry: Registry = REGISTRY) -> None:
        """Memory and disk pressure on any node, task queues without a consumer, dead-lettered
        ticks and tokens piling up, through the environment's alarm topic."""
        cfg = self.config
        monitoring.alarm(
            "Broker-Memory",
            metric=self._per_node(metrics.MEMORY_USED_PCT, "MAX"),
            threshold=cfg.memory_alarm_pct,
            runbook="scheduler-broker-memory-or-disk-pressure",
            summary="A broker node's memory near RabbitMQ's high watermark (publishers get "
            "blocked).",
        )
        monitoring.alarm(
            "Broker-Disk",
            metric=self._per_node(metrics.DISK_FREE_RATIO, "MIN"),
            threshold=cfg.disk_free_alarm_ratio,
            comparison=LTE,
            runbook="scheduler-broker-memory-or-disk-pressure",
            summary="A broker node's free disk near RabbitMQ's limit (publishers get blocked).",
        )
        monitoring.alarm(
            "Broker-DeadTicks",
            metric=self._own(metrics.DEAD_TICKS),
            threshold=1,
            runbook="scheduler-dead-lettered-ticks",
            summary="Scheduler ticks dead-lettered after their retry limit.",
        )
        for task in registry:
            monitoring.alarm(
                f"Broker-NoConsumer-{task.name}",
                metric=self._own(metrics.CONSUMERS, Task=task.name),
                threshold=1,
                comparison=LT,
                runbook="scheduler-task-without-consumer",
                summary=f"Periodic task {task.name}: no scheduler process consumes its queue "
                "(or none reports: a silent scheduler counts as none).",
                missing=cw.TreatMissingData.BREACHING,
            )
            monitoring.alarm(
                f"Broker-Failing-{task.name}",
                metric=cw.MathExpression(
                    expression="FILL(failed, 0) + FILL(missed, 0)",
                    using_metrics={
                        "failed": self._own(metrics.TICKS_FAILED, "Sum", Task=task.name),
                        "missed": self._own(metrics.TICKS_MISSED, "Sum", Task=task.name),
                    },
                    label="failed attempts + missed ticks",
                    period=Duration.minutes(5),
                ),
                threshold=FAILING_TICKS,
                runbook="scheduler-task-failing-or-missing-ticks",
                summary=f"Periodic task {task.name}: {FAILING_TICKS} or more failed attempts "
                "or missed ticks in 5 minutes.",
            )
            monitoring.alarm(
                f"Broker-Depth-{task.name}",
                metric=self._own(metrics.TOKENS_READY, Task=task.name),
                threshold=2,
                runbook="scheduler-queue-depth",
                summary=f"Periodic task {task.name}: tokens pile up in its processor queue.",
            )
