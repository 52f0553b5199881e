"""Every acknowledgement hides a finding: a stale one would pre-approve a future regression.

Each environment is built with its acknowledgements recorded aside instead of applied; then its
enabled checks run over it. Every acknowledgement must name, with the exact rule id (granular
ids included), a finding those checks report on its construct or below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import aws_cdk as cdk
import pytest

from stacks import compliance, config
from stacks.stage import SluiceStage
from tests.conftest import ROOT


@dataclass(frozen=True)
class Ack:
    path: str
    id: str
    reason: str


Finding = tuple[str, str]  # (rule id, construct path)


def stale(acks: list[Ack], findings: list[Finding]) -> list[Ack]:
    """The acknowledgements that no finding answers to."""

    def covers(ack: Ack, path: str) -> bool:
        return path == ack.path or path.startswith(ack.path + "/")

    return [a for a in acks if not any(r == a.id and covers(a, p) for r, p in findings)]


@dataclass
class Unacknowledged:
    """One environment built with acknowledgements recorded, not applied."""

    cfg: config.EnvConfig
    app: cdk.App
    acks: list[Ack]
    outdir: Path

    def nag_findings(self) -> list[Finding]:
        found = []
        for pack in self.cfg.compliance_packs:
            for v in compliance.PACKS[pack]().validate_scope(self.app).violations:
                found += [(v.rule_name, r.construct_path) for r in v.violating_resources]
        return found

    def guard_findings(self, add_plugins) -> list[Finding]:
        add_plugins(self.app, compliance.guard_validator(self.cfg))
        with pytest.raises(RuntimeError, match="ValidationFailed"):
            self.app.synth()
        report = json.loads((self.outdir / "validation-report.json").read_text())
        return [
            (f"{compliance.GUARD}::{v['ruleName']}", c["constructPath"])
            for plugin in report["pluginReports"]
            for v in plugin["violations"]
            for c in v["violatingConstructs"]
        ]


@pytest.fixture
def unacknowledged(tmp_path, monkeypatch):
    real_of = cdk.Validations.of

    def build(env: str) -> tuple[Unacknowledged, object]:
        acks: list[Ack] = []

        class Recorder:
            def __init__(self, scope) -> None:
                self.scope = scope

            def acknowledge(self, *rules: cdk.Acknowledgment) -> None:
                acks.extend(Ack(self.scope.node.path, r.id, r.reason) for r in rules)

        monkeypatch.setattr(cdk.Validations, "of", staticmethod(Recorder))
        context = json.loads((ROOT / "cdk.json").read_text())["context"]
        app = cdk.App(outdir=str(tmp_path), context={**context, "env": env})
        cfg = config.load(env)
        SluiceStage(app, config=cfg)

        def add_plugins(app, plugin) -> None:
            real_of(app).add_plugins(plugin)

        return Unacknowledged(cfg, app, acks, tmp_path), add_plugins

    return build


def _packs(cfg: config.EnvConfig) -> tuple[str, ...]:
    return tuple(compliance.PACKS[p]().read_pack_name + "-" for p in cfg.compliance_packs)


@pytest.mark.parametrize("env", tuple(config.ENVIRONMENTS))
def test_every_acknowledgement_hides_a_finding(env, unacknowledged):
    built, add_plugins = unacknowledged(env)
    nag = [a for a in built.acks if a.id.startswith(_packs(built.cfg))]
    guard = [a for a in built.acks if a.id.startswith(compliance.GUARD + "::")]
    assert nag and guard, "expected acknowledgements of both kinds"
    problems = stale(nag, built.nag_findings()) + stale(guard, built.guard_findings(add_plugins))
    listing = "\n".join(f"{a.path}: {a.id} — {a.reason[:70]}" for a in problems)
    assert not problems, f"{len(problems)} acknowledgements hide no finding:\n{listing}"


def test_the_check_flags_an_acknowledgement_without_a_finding():
    ack = Ack("S/Media/Bucket", "AwsSolutions-S1", "…")
    assert stale([ack], [("AwsSolutions-S1", "S/Media/Bucket/Resource")]) == []
    assert stale([ack], [("AwsSolutions-S1", "S/Other/Resource")]) == [ack]
    assert stale([ack], [("AwsSolutions-S10", "S/Media/Bucket/Resource")]) == [ack]


def test_a_wildcard_grant_without_its_reason_fails_synth_naming_the_policy():
    import aws_cdk as cdk
    from aws_cdk import aws_iam as iam

    from stacks import grants

    stack = cdk.Stack(cdk.App(), "S")
    policy = iam.ManagedPolicy(stack, "P")
    bucket = f"arn:{cdk.Aws.PARTITION}:s3:::b-{cdk.Aws.ACCOUNT_ID}/uploads/*"
    with pytest.raises(
        ValueError,
        match=r"S/P: s3:GetObject on arn:<AWS::Partition>:s3:::b-"
        r"<AWS::AccountId>/uploads/\*: a wildcard resource needs the reason",
    ):
        grants.allow(policy, ["s3:GetObject"], [bucket])
    # a named resource needs none; the notation is cdk-nag's (the tests above check it on
    # every acknowledgement the stacks write)
    grants.allow(policy, ["s3:GetObject"], [f"arn:{cdk.Aws.PARTITION}:s3:::b/k"])
    assert grants.nag_resource(policy, bucket) == (
        "arn:<AWS::Partition>:s3:::b-<AWS::AccountId>/uploads/*"
    )
