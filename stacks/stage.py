"""One environment as a cdk.Stage (stateful + stateless stacks) and its compliance packs."""

from __future__ import annotations

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks, NIST80053R5Checks
from constructs import Construct

from stacks.config import EnvConfig
from stacks.stateful import StatefulStack
from stacks.stateless import StatelessStack

PACKS: dict[str, type[AwsSolutionsChecks | HIPAASecurityChecks | NIST80053R5Checks]] = {
    "AwsSolutions": AwsSolutionsChecks,
    "NIST80053R5": NIST80053R5Checks,
    "HIPAASecurity": HIPAASecurityChecks,
}


class SluiceStage(cdk.Stage):
    """The stacks of one environment, split by lifecycle."""

    def __init__(self, scope: Construct, *, config: EnvConfig) -> None:
        super().__init__(
            scope,
            config.prefix,
            env=cdk.Environment(account=config.account, region=config.region),
        )
        cdk.Tags.of(self).add("project", "sluice")
        cdk.Tags.of(self).add("environment", config.name)
        self.stateful = StatefulStack(
            self, "Stateful", stack_name=f"{config.prefix}-stateful", config=config
        )
        self.stateless = StatelessStack(
            self,
            "Stateless",
            stack_name=f"{config.prefix}-stateless",
            config=config,
            stateful=self.stateful,
        )


def build(app: cdk.App, config: EnvConfig) -> SluiceStage:
    """Add environment `config` to `app` and register the compliance packs it enables."""
    cdk.Validations.of(app).add_plugins(*(PACKS[name](app) for name in config.compliance_packs))
    return SluiceStage(app, config=config)
