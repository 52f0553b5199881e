"""Synthesize each environment once per test session; tests read its templates."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from stacks import config
from stacks.rendering import ACCOUNT, Environment
from stacks.rendering import Stack as RenderedStack
from stacks.stage import SluiceStage, build
from stacks.summary import templates
from tests.conftest import ROOT

ENVIRONMENTS = tuple(config.ENVIRONMENTS)


@dataclass(frozen=True)
class Synth:
    """One synthesized environment."""

    config: config.EnvConfig
    app: cdk.App
    stage: SluiceStage
    stateful: Template
    stateless: Template
    outdir: Path

    def template_files(self) -> list[Path]:
        return sorted(self.outdir.rglob("*.template.json"))

    @cached_property
    def rendered(self) -> Environment:
        """Every stack of the environment with its intrinsics resolved (tests/infra/render.py);
        parsed once per synth (each `resolve` reads it: per call it cost seconds a test)."""
        return Environment(
            region=self.config.region,
            templates=templates(self.outdir),
            account=self.config.account or ACCOUNT,
        )

    def rendered_stack(self, which: str) -> RenderedStack:
        """The "stateful" or "stateless" stack within `rendered`."""
        name = getattr(self.stage, which).stack_name
        (stack,) = [st for st in self.rendered.stacks if st.name == name]
        return stack

    def resolve(self, value: Any) -> Any:
        """`value` of the stateless template as CloudFormation resolves it at deploy: its SSM
        parameters read from what the stateful stack writes, every name and ARN rendered."""
        return self.rendered_stack("stateless").render(value)

    def stateful_value(self, construct: str, attr: str | None = None) -> Any:
        """The Ref (or `attr`) of the stateful stack's resource `construct` (its logical id less
        CDK's hash), as CloudFormation returns it: what the stateless stack must name."""
        stack = self.rendered_stack("stateful")
        (lid,) = [lid for lid in stack.resources if re.fullmatch(f"{construct}[0-9A-F]{{8}}", lid)]
        return stack.ref(lid) if attr is None else stack.get_att(lid, attr)


@cache
def _synth(env: str, outdir: str) -> Synth:
    cfg = config.load(env)
    # The same context (feature flags) as `cdk synth`, so tests see the templates that deploy.
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    app = cdk.App(outdir=outdir, context={**context, "env": env})
    stage = build(app, cfg)
    app.synth()  # runs the nag plugins: any finding raises here
    return Synth(
        config=cfg,
        app=app,
        stage=stage,
        stateful=Template.from_stack(stage.stateful),
        stateless=Template.from_stack(stage.stateless),
        outdir=Path(outdir),
    )


def synthesized(env: str, tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """`env` synthesized once per session (per xdist worker), for any test that needs it."""
    return _synth(env, str(tmp_path_factory.getbasetemp() / f"cdk.out-{env}"))


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory):
    """synth(env) -> Synth, built once per environment per session."""

    def get(env: str) -> Synth:
        return synthesized(env, tmp_path_factory)

    return get


@pytest.fixture(params=ENVIRONMENTS)
def env(request: pytest.FixtureRequest) -> str:
    return request.param


def resources(template: Template, kind: str) -> dict[str, dict]:
    return template.find_resources(kind)


def dump(template: Template) -> str:
    return json.dumps(template.to_json(), indent=1, sort_keys=True)
