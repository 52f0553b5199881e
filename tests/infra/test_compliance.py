"""cdk-nag 3: every pack an environment enables reports zero findings, and a bad resource is caught."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk import aws_sqs as sqs
from cdk_nag import AwsSolutionsChecks

from stacks import config
from stacks.compliance import PACKS
from stacks.stage import build


def _violations(result) -> list[str]:
    return [v.rule_name for v in result.violations]


@pytest.mark.parametrize(
    ("env", "pack"),
    [(e, p) for e, cfg in config.ENVIRONMENTS.items() for p in cfg.compliance_packs],
)
def test_each_enabled_pack_reports_zero_findings(synth, env, pack):
    app = synth(env).app
    result = PACKS[pack]().validate_scope(app)
    assert _violations(result) == []
    assert result.success


def test_prod_enables_all_three_packs():
    assert config.load("prod").compliance_packs == ("AwsSolutions", "NIST80053R5", "HIPAASecurity")


def test_the_checks_can_fail_a_queue_without_dlq_or_tls(tmp_path):
    # Given an app with a deliberately bad queue beside a real environment
    app = cdk.App(outdir=str(tmp_path))
    build(app, config.load("dev"))
    bad = cdk.Stack(app, "Bad")
    sqs.Queue(bad, "NoDlqNoTls")
    # When the AwsSolutions pack validates it
    result = AwsSolutionsChecks().validate_scope(app)
    # Then it fails, naming exactly the bad queue's findings
    assert not result.success
    assert sorted(_violations(result)) == ["AwsSolutions-SQS3", "AwsSolutions-SQS4"]
    # And synth itself refuses to produce a cloud assembly
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    report = (tmp_path / "validation-report.json").read_text()
    assert "Bad/NoDlqNoTls/Resource" in report


def test_the_cli_entry_point_synthesizes_prod_with_cdk_json_context(tmp_path):
    """What `cdk synth -c env=prod` runs: app.py with cdk.json's context (feature flags)."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    context = {**json.loads((ROOT / "cdk.json").read_text())["context"], "env": "prod"}
    proc = subprocess.run(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env={**os.environ, "CDK_CONTEXT_JSON": json.dumps(context), "CDK_OUTDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("assembly-Sluice-prod/*.template.json"))


def test_staging_rehearses_prods_encryption_and_packs():
    """Every KMS permission path and every pack's rule is first exercised in staging, not prod."""
    staging, prod = config.load("staging"), config.load("prod")
    assert staging.compliance_packs == prod.compliance_packs
    assert staging.data_key and prod.data_key
    for queue in ("events_queue", "tasks_queue"):
        assert (
            getattr(staging, queue).customer_managed_key
            == getattr(prod, queue).customer_managed_key
        )


def test_staging_resources_use_the_data_key_where_prod_does(synth):
    def keyed(env: str) -> set[str]:
        template = synth(env).stateful.to_json()["Resources"]
        return {
            lid.rstrip("0123456789ABCDEF")
            for lid, r in template.items()
            if "DataKey" in json.dumps(r.get("Properties", {}))
        }

    assert keyed("staging") == keyed("prod")
