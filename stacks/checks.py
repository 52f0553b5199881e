"""Checks of the synthesized templates that CDK's validation plugins cannot make: limits on the
values tokens resolve to. `app.py` runs them after every synth; any problem fails it.

Elastic Beanstalk's environment properties (Configuring environment properties, "Environment
property limits", https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/environments-cfg-softwaresettings.html):
keys of up to 128 characters, values of up to 256 from a small character set, and 4,096 bytes in
all as `key=value` strings. A property past them fails the environment's deployment, and a
process whose setting is missing would dead-letter every event. Values are measured with every
name CloudFormation generates at its longest (`stacks/rendering.py`, `worst_case`).
"""

from __future__ import annotations

import re
from pathlib import Path

from stacks.rendering import Environment
from stacks.summary import templates

EB_ENVIRONMENT = "aws:elasticbeanstalk:application:environment"
EB_MAX_KEY = 128
EB_MAX_VALUE = 256
EB_MAX_TOTAL_BYTES = 4096
# EB allows `_ . : / + \\ - @` in keys, but recommends this pattern for every platform's shell.
EB_KEY = re.compile(r"[A-Z_][A-Z0-9_]*")
# Letters, digits, white space and `_ . : / = + \\ - @ ' "` (quotes would need escaping: none).
EB_VALUE = re.compile(r"[A-Za-z0-9 \t_.:/=+\\@-]*")


def eb_property_problems(env: Environment) -> list[str]:
    """What Elastic Beanstalk would refuse in the environment properties of `env`'s worker."""
    problems = []
    for _, lid, props in env.resources("AWS::ElasticBeanstalk::Environment"):
        options = [o for o in props.get("OptionSettings", []) if o["Namespace"] == EB_ENVIRONMENT]
        total = 0
        for option in options:
            key, value = option["OptionName"], str(option["Value"])
            total += len(f"{key}={value}".encode())
            if len(key) > EB_MAX_KEY or not EB_KEY.fullmatch(key):
                problems.append(f"{lid}: property name {key!r} is not {EB_KEY.pattern} of <= 128")
            if len(value) > EB_MAX_VALUE:
                problems.append(
                    f"{lid}: {key} may be {len(value)} characters long (limit {EB_MAX_VALUE})"
                )
            bad = sorted(set(EB_VALUE.sub("", value)))
            if bad:
                problems.append(f"{lid}: {key} holds characters EB does not accept: {bad}")
        if total > EB_MAX_TOTAL_BYTES:
            problems.append(
                f"{lid}: the environment properties take {total} bytes (limit "
                f"{EB_MAX_TOTAL_BYTES}) with every generated name at its longest"
            )
    return problems


def after_synth(outdir: Path, *, region: str) -> list[str]:
    """Every problem the checks find in the cloud assembly at `outdir`."""
    worst = Environment(region=region, templates=templates(outdir), worst_case=True)
    return eb_property_problems(worst)
