"""One environment as a cdk.Stage (stateful + stateless stacks) and the checks its synth runs."""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
from constructs import Construct

from stacks import compliance
from stacks.config import EnvConfig
from stacks.declarations import WORKFLOWS_ROOT
from stacks.stateful import StatefulStack
from stacks.stateless import StatelessStack


class SluiceStage(cdk.Stage):
    """The stacks of one environment, split by lifecycle."""

    def __init__(
        self, scope: Construct, *, config: EnvConfig, workflows_root: Path = WORKFLOWS_ROOT
    ) -> None:
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
            workflows_root=workflows_root,
        )
        # It finds the stateful stack's resources by name, not by export: deploy those first.
        self.stateless.add_stack_dependency(self.stateful)


def build(app: cdk.App, config: EnvConfig, *, workflows_root: Path = WORKFLOWS_ROOT) -> SluiceStage:
    """Add environment `config` to `app` and register the checks its synth runs; the workflows
    are those declared under `workflows_root` (lambdas/workflows/ unless a test gives another)."""
    compliance.register(app, config)
    return SluiceStage(app, config=config, workflows_root=workflows_root)
