#!/usr/bin/env python3
"""CDK entry point: `cdk synth|deploy -c env=dev|staging|prod` (default dev)."""

import sys
from pathlib import Path

import aws_cdk as cdk

from stacks import checks, config
from stacks.stage import build

app = cdk.App()
try:
    cfg = config.load(app.node.try_get_context("env"))
except config.ConfigError as err:
    sys.exit(f"sluice: bad configuration: {err}")
build(app, cfg)
assembly = app.synth()
problems = checks.after_synth(Path(assembly.directory), region=cfg.region)
if problems:
    sys.exit("sluice: the synthesized templates would fail to deploy:\n  " + "\n  ".join(problems))
