"""The worker's VPC: private subnets behind NAT, flow logs, S3 and DynamoDB gateway endpoints."""

from __future__ import annotations

from aws_cdk import Acknowledgment, RemovalPolicy, Stack, Validations
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from sluice import naming
from stacks import parameters
from stacks.config import EnvConfig, NetworkConfig


def availability_zones(scope: Construct, config: NetworkConfig) -> list[str]:
    """The zones the VPC spans, one private subnet each: the first `max_azs` of the stack's (as
    `ec2.Vpc` picks them), so both stacks of an environment count the same subnets."""
    return Stack.of(scope).availability_zones[: config.max_azs]


class Network(Construct):
    """`vpc`: public subnets hold only the NAT gateways; everything of ours runs in the private
    ones. S3 and DynamoDB traffic stays on the gateway endpoints (no NAT cost, no internet path)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: NetworkConfig,
        removal_policy: RemovalPolicy,
        key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.flow_log_group = logs.LogGroup(
            self,
            "FlowLogs",
            removal_policy=removal_policy,
            encryption_key=key,
        )
        # RetentionDays is a name enum in Python; the config holds days (validated against the
        # values CloudWatch accepts), so set the number on the L1.
        cfn_group = self.flow_log_group.node.default_child
        assert isinstance(cfn_group, logs.CfnLogGroup)
        cfn_group.retention_in_days = config.flow_log_retention_days
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=config.max_azs,
            nat_gateways=config.nat_gateways,
            subnet_configuration=[
                # Only the NAT gateways live here, on Elastic IPs: nothing gets a public IP.
                ec2.SubnetConfiguration(
                    name="public",
                    subnet_type=ec2.SubnetType.PUBLIC,
                    cidr_mask=24,
                    map_public_ip_on_launch=False,
                ),
                ec2.SubnetConfiguration(
                    name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
                ),
            ],
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3),
                "DynamoDb": ec2.GatewayVpcEndpointOptions(
                    service=ec2.GatewayVpcEndpointAwsService.DYNAMODB
                ),
            },
            flow_logs={
                # The id names the log, not its traffic (config.flow_log_traffic): renaming it
                # would replace the flow log.
                "All": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_cloud_watch_logs(self.flow_log_group),
                    traffic_type=ec2.FlowLogTrafficType[config.flow_log_traffic],
                )
            },
        )
        self.private_subnets = self.vpc.select_subnets(
            subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS
        )
        # `named_vpc` counts on one private subnet per zone.
        assert len(self.private_subnets.subnet_ids) == len(availability_zones(self, config))
        self._acknowledge()

    def publish(self, env: str) -> None:
        """Hand the VPC's and private subnets' ids (AWS generates them) to the stateless stack."""
        parameters.publish(self, env, naming.VPC_ID, self.vpc.vpc_id)
        parameters.publish_list(
            self, env, naming.PRIVATE_SUBNET_IDS, self.private_subnets.subnet_ids
        )

    def _acknowledge(self) -> None:
        for subnet in self.vpc.public_subnets:
            route = subnet.node.try_find_child("DefaultRoute")
            for pack in ("NIST.800.53.R5", "HIPAA.Security"):
                Validations.of(route or subnet).acknowledge(
                    Acknowledgment(
                        id=f"{pack}-VPCNoUnrestrictedRouteToIGW",
                        reason="the public subnets hold only the NAT gateways, whose way out is "
                        "this route; no instance runs in them (nothing gets a public IP)",
                    )
                )
        flow_role_policy = self.vpc.node.find_child("All").node.find_child("IAMRole")
        for pack in ("NIST.800.53.R5", "HIPAA.Security"):
            Validations.of(flow_role_policy).acknowledge(
                Acknowledgment(
                    id=f"{pack}-IAMNoInlinePolicy",
                    reason="CDK's role for VPC flow log delivery: its one policy writes only to "
                    "the flow log group and belongs to that role alone",
                )
            )


def named_vpc(scope: Construct, config: EnvConfig) -> ec2.IVpc:
    """The environment's VPC as the stateless stack finds it: the ids `Network.publish` wrote,
    its private subnets one per availability zone (no public subnet is used from there)."""
    zones = availability_zones(scope, config.network)
    return ec2.Vpc.from_vpc_attributes(
        scope,
        "Vpc",
        vpc_id=parameters.read(scope, config.name, naming.VPC_ID),
        availability_zones=zones,
        private_subnet_ids=parameters.read_list(
            scope, config.name, naming.PRIVATE_SUBNET_IDS, len(zones)
        ),
    )
