"""What checks the templates at synth, and every rule waived, with its reason, in this one place.

- cdk-nag 3 packs (AwsSolutions everywhere; NIST 800-53 R5 and HIPAA Security per environment);
- AWS Control Tower's proactive controls (cfn-guard rules bundled in cdklabs-cdk-validator-cfnguard).

Any finding fails synth. A finding about one construct is acknowledged on that construct, next to
the code that makes it; a rule that does not fit Sluice at all, or not an environment's chosen
settings, is waived here, and the waiver follows the setting rather than the environment's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks, NIST80053R5Checks
from cdklabs.cdk_validator_cfnguard import CfnGuardValidator

from stacks.config import EnvConfig

PACKS: dict[str, type[AwsSolutionsChecks | HIPAASecurityChecks | NIST80053R5Checks]] = {
    "AwsSolutions": AwsSolutionsChecks,
    "NIST80053R5": NIST80053R5Checks,
    "HIPAASecurity": HIPAASecurityChecks,
}
# The prefix cfn-guard findings are acknowledged with (`Validations.of(x).acknowledge(...)`).
GUARD = "cdk-validator-cfnguard"
# CloudWatch log groups kept at least this long satisfy CT.CLOUDWATCH.PR.2.
GUARD_MIN_LOG_RETENTION_DAYS = 365


@dataclass(frozen=True)
class Waiver:
    """Control Tower control `control` (its guard rule `rule`) left out where `applies(config)`."""

    control: str
    rule: str
    reason: str
    applies: Callable[[EnvConfig], bool] = lambda _: True

    @property
    def rule_file(self) -> str:
        """The plugin disables rules by file name: CT.LAMBDA.PR.3 -> ct-lambda-pr-3."""
        return self.control.lower().replace(".", "-")


GUARD_WAIVERS: tuple[Waiver, ...] = (
    Waiver(
        "CT.LAMBDA.PR.3",
        "lambda_inside_vpc_check",
        "Sluice's workflow and step functions (and CDK's deploy-time custom-resource "
        "handlers) call only AWS APIs, over TLS with IAM authorization; none reaches a resource "
        "inside the VPC. Placing them in it would add NAT traffic and network interfaces and "
        "protect nothing. The one function that reaches the broker (the broker user's "
        "provisioner) runs in the VPC's private subnets.",
    ),
    Waiver(
        "CT.S3.PR.9",
        "s3_bucket_object_lock_enabled_check",
        "Object Lock keeps every object version for a fixed period: a user's "
        "deletion request and the teardown of dev and staging could not be honoured. The media "
        "bucket is versioned, RETAINed in prod and expires only noncurrent versions after 30 days.",
    ),
    Waiver(
        "CT.CLOUDWATCH.PR.2",
        "cloudwatch_log_group_retention_period_check",
        "This environment keeps its logs for less than a year by choice "
        "(log_retention_days, network.flow_log_retention_days); prod keeps them 365 days.",
        lambda c: (
            min(c.log_retention_days, c.network.flow_log_retention_days)
            < GUARD_MIN_LOG_RETENTION_DAYS
        ),
    ),
    Waiver(
        "CT.CLOUDWATCH.PR.3",
        "cloudwatch_log_group_encrypted_check",
        "This environment has no customer-managed key (its queues use "
        "SQS-managed encryption, customer_managed_key off); staging and prod encrypt every log "
        "group with their data key.",
        lambda c: not c.data_key,
    ),
    Waiver(
        "CT.S3.PR.10",
        "s3_bucket_default_encryption_kms_check",
        "This environment has no customer-managed key; its media bucket uses "
        "SSE-S3. Staging and prod use SSE-KMS with their data key.",
        lambda c: not c.data_key,
    ),
    Waiver(
        "CT.MQ.PR.2",
        "mq_rabbit_deployment_mode_check",
        "This environment runs a single-instance broker (broker.deployment_mode) to "
        "save cost; prod runs CLUSTER_MULTI_AZ.",
        lambda c: c.broker is not None and c.broker.deployment_mode == "SINGLE_INSTANCE",
    ),
)


def guard_waivers(config: EnvConfig) -> list[Waiver]:
    return [w for w in GUARD_WAIVERS if w.applies(config)]


def guard_validator(config: EnvConfig) -> CfnGuardValidator:
    """The Control Tower rules, less this environment's waivers."""
    return CfnGuardValidator(
        control_tower_rules_enabled=True,
        disabled_rules=[w.rule_file for w in guard_waivers(config)],
    )


def register(app: cdk.App, config: EnvConfig) -> None:
    """Add the environment's nag packs and the Control Tower rules to `app`'s synth."""
    # The guard plugin still types itself with CDK's Beta1 plugin interface; CDK accepts it.
    cdk.Validations.of(app).add_plugins(
        *(PACKS[name](app) for name in config.compliance_packs),
        guard_validator(config),  # type: ignore[arg-type]
    )
