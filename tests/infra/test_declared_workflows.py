"""A workflow is one declaration: written into a new folder with its handler and nothing else,
it is built, aliased, alarmed, output for the CLI and routed by the worker; an invalid one fails
synth naming the file and the setting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from sluice import catalog, naming, workflows
from stacks import config
from stacks.declarations import WORKFLOWS_ROOT
from stacks.stage import build
from tests.conftest import ROOT

NAME = "tally_words"
DECLARATION = """\
description = "Counts a transcript's words (a test's workflow)."
events = ["media/transcription.completed"]
retries = 1
timeout_s = 3600
"""
HANDLER = """\
from lambdas.common.workflow import Run, declaration, declared_workflow

DECLARATION = declaration(__file__)


def tally(run: Run) -> dict:
    return {"job_id": run.job_id, "status": "COMPLETED"}


handler = declared_workflow(DECLARATION, tally)
"""


def workflows_with(tmp_path: Path, name: str, declaration: str) -> Path:
    """The repository's workflows and one more, in a folder of their own."""
    root = tmp_path / "workflows"
    shutil.copytree(WORKFLOWS_ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    (root / name / "handler.py").write_text(HANDLER)
    (root / name / "workflow.toml").write_text(declaration)
    return root


def app(tmp_path: Path) -> cdk.App:
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    return cdk.App(outdir=str(tmp_path / "cdk.out"), context={**context, "env": "dev"})


@pytest.mark.slow
def test_a_declared_workflow_is_built_alarmed_output_and_routed_with_nothing_else_edited(tmp_path):
    # Given a new workflow folder: a declaration and a handler, nothing else
    root = workflows_with(tmp_path, NAME, DECLARATION)
    # When the dev environment is synthesized from that folder (cdk-nag and all)
    cdk_app = app(tmp_path)
    stage = build(cdk_app, config.load("dev"), workflows_root=root)
    cdk_app.synth()
    template = Template.from_stack(stage.stateless).to_json()
    resources = template["Resources"]

    # Then its durable function exists, with the declared timeout (and the handler's grace)
    (fn_id, fn), *more = [
        (lid, r["Properties"])
        for lid, r in resources.items()
        if r["Type"] == "AWS::Lambda::Function"
        and r["Properties"].get("Handler") == f"lambdas.workflows.{NAME}.handler.handler"
    ]
    assert not more
    assert fn["DurableConfig"]["ExecutionTimeout"] == 3600 + workflows.FAILURE_GRACE_S
    # invoking its failure handler through its alias
    assert "STEP_ON_FAILURE" in fn["Environment"]["Variables"]
    # And its live alias
    aliases = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::Alias" and r["Properties"]["FunctionName"] == {"Ref": fn_id}
    ]
    assert [a["Name"] for a in aliases] == [catalog.WORKFLOW_ALIAS]
    # And its alarms (failed + timed out, near quota) on its own function
    alarms = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm" and NAME in json.dumps(r["Properties"])
    ]
    assert len(alarms) == 2
    # And the output the CLI lists workflows by
    outputs = template["Outputs"]
    assert catalog.workflow_output(NAME) in outputs
    # And the worker is given its alias
    worker = next(
        r for r in resources.values() if r["Type"] == "AWS::ElasticBeanstalk::Environment"
    )
    names = {o["OptionName"] for o in worker["Properties"]["OptionSettings"]}
    assert naming.alias_variable(NAME) in names

    # And the worker bundle routes its event to it, as the worker itself reads the routes
    assets = [d for d in Path(cdk_app.outdir).rglob("asset.*") if (d / "Procfile").is_file()]
    (bundle,) = assets
    routed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sluice.catalog as c; "
            "print(c.ROUTES_FILE.is_file(), *c.workflows_for('media/transcription.completed'))",
        ],
        cwd=bundle,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert routed == ["True", "embed_transcript", NAME, "transcode_audio"]
    # And its function's bundle ships its code and its declaration
    code = [d for d in Path(cdk_app.outdir).rglob(f"asset.*/lambdas/workflows/{NAME}")]
    assert code and (code[0] / "workflow.toml").is_file()


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        (
            'events = ["media/transcription.finished"]\n',
            f"{NAME}/workflow.toml: events: unknown event 'media/transcription.finished'",
        ),
        (
            'events = ["media/uploaded"]\n[concurrency]\nlimit = 0\n',
            f"{NAME}/workflow.toml: concurrency.limit: must be >= 1, got 0",
        ),
        (
            'events = ["media/uploaded"]\ntimeout_s = 31622400\n',
            f"{NAME}/workflow.toml: timeout_s: must be <= 31618800 s, got 31622400: Lambda "
            "durable functions allow an ExecutionTimeout of at most 31622400 s (366 days)",
        ),
    ],
)
def test_an_invalid_declaration_fails_synth_naming_the_file_and_the_setting(
    tmp_path, declaration, message
):
    root = workflows_with(tmp_path, NAME, declaration)
    with pytest.raises(workflows.DeclarationError) as err:
        build(app(tmp_path), config.load("dev"), workflows_root=root)
    assert message in str(err.value), str(err.value)
