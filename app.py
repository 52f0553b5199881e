#!/usr/bin/env python3
"""CDK entry point: `cdk synth|deploy -c env=dev|staging|prod` (default dev)."""

import sys

import aws_cdk as cdk

from stacks import config
from stacks.stage import build

app = cdk.App()
try:
    cfg = config.load(app.node.try_get_context("env"))
except config.ConfigError as err:
    sys.exit(f"sluice: bad configuration: {err}")
build(app, cfg)
app.synth()
