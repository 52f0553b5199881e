"""The scheduler's own RabbitMQ user, made at deploy time (Custom::BrokerUser).

Amazon MQ's API creates one RabbitMQ user, the administrator; any other must be made through
RabbitMQ's management API on the broker. A custom resource does it with a small function in the
VPC's private subnets (lambdas/provisioning/broker_user): the user the scheduler's secret names,
with that password, the `monitoring` tag and permissions on the scheduler's own names only
(sluice/scheduling/names.py). The function is the only reader of the admin secret.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, CustomResource, Duration, Validations
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from sluice.scheduling.names import SCHEDULER_PERMISSIONS, SCHEDULER_TAGS, SCHEDULER_VHOST
from stacks.broker import HTTPS_PORT, NamedBroker
from stacks.config import EnvConfig
from stacks.workflows import _Function

NAME = "broker_user"
# CloudFormation gives up on a custom resource that never answers after this long (default: one
# hour): the function's own timeout plus Lambda's two retries of a crashed invocation.
SERVICE_TIMEOUT = Duration.minutes(10)


class BrokerUser(Construct):
    """`function` (the provisioner), `security_group`, `resource` (the Custom::BrokerUser)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        broker: NamedBroker,
        vpc: ec2.IVpc,
    ) -> None:
        super().__init__(scope, construct_id)
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description=f"{broker.broker_name} user provisioning: out on 443 only",
            allow_all_outbound=False,
        )
        # Secrets Manager and CloudFormation's response URL, through the NAT gateway.
        self.security_group.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(HTTPS_PORT), "AWS APIs (HTTPS)"
        )
        broker.allow_from(self.security_group, amqps=False)
        self.provisioner = _Function(
            self,
            "Provisioner",
            kind="custom resource",
            name=NAME,
            package="provisioning",
            config=config,
            sizing=broker.config.provisioner,
            setting="broker.provisioner",
            # Its one AWS call is Secrets Manager's, in the runtime's own boto3.
            layer=None,
            environment={},
            key=broker.key,
            vpc=vpc,
            security_group=self.security_group,
        )
        self.provisioner.policy.add_statements(
            *broker.read_secrets(broker.admin_secret, broker.scheduler_secret, sid="BrokerUsers")
        )
        for pack in ("NIST.800.53.R5", "HIPAA.Security"):
            Validations.of(self.provisioner.function).acknowledge(
                Acknowledgment(
                    id=f"{pack}-LambdaDLQ",
                    reason="Invoked only by CloudFormation for this custom resource, which waits "
                    "for the function's answer at the request's ResponseURL and fails the stack "
                    "operation when none comes: a DLQ would hold requests nobody acts on.",
                )
            )
        self.resource = CustomResource(
            self,
            "SchedulerUser",
            resource_type="Custom::BrokerUser",
            service_token=self.provisioner.function.function_arn,
            service_timeout=SERVICE_TIMEOUT,
            properties={
                "ManagementUrl": broker.management_url,
                "AdminSecretArn": broker.admin_secret.secret_arn,
                "UserSecretArn": broker.scheduler_secret.secret_arn,
                "Vhost": SCHEDULER_VHOST,
                "Tags": SCHEDULER_TAGS,
                "Configure": SCHEDULER_PERMISSIONS.configure,
                "Write": SCHEDULER_PERMISSIONS.write,
                "Read": SCHEDULER_PERMISSIONS.read,
                # Read by nobody: a new value makes CloudFormation send an Update, which sets
                # the secret's current password on the broker.
                "PasswordRevision": str(broker.config.scheduler_password_revision),
            },
        )
        # The function reaches the broker through these rules: they must outlive the Delete.
        self.resource.node.add_dependency(self.security_group)
