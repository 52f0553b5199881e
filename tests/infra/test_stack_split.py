"""The two stacks of an environment are coupled by names, not by CloudFormation exports.

An export in use can be neither changed nor removed: a change to what the stateless stack reads
of the stateful one would need a two-phase deploy. The stateless stack names each stateful
resource by its deterministic name (sluice/naming.py) instead, or, where AWS generates the name or
id, by the SSM parameter the stateful stack writes it to (stacks/parameters.py).
"""

from __future__ import annotations

import json

from sluice import naming
from tests.infra.conftest import resources


def test_the_stateless_stack_imports_nothing_from_the_stateful_stack(synth, env):
    s = synth(env)
    assert "Fn::ImportValue" not in json.dumps(s.stateless.to_json())
    outputs = s.stateful.to_json().get("Outputs", {})
    assert [name for name, output in outputs.items() if "Export" in output] == []


def test_every_parameter_the_stateless_stack_reads_the_stateful_stack_writes(synth, env):
    s = synth(env)
    read = {
        p["Default"]
        for p in s.stateless.to_json()["Parameters"].values()
        if p["Type"].startswith("AWS::SSM::Parameter::Value<")
        and not p["Default"].startswith("/cdk-bootstrap/")
    }
    stateful = s.rendered_stack("stateful")
    written = {
        stateful.render(r["Properties"]["Name"])
        for r in resources(s.stateful, "AWS::SSM::Parameter").values()
    }
    assert read == written
    assert read <= {naming.parameter(env, name) for name in naming.PARAMETERS}


def test_the_stateless_stack_deploys_after_the_stateful_one(synth, env):
    stage = synth(env).stage
    assert stage.stateful in stage.stateless.dependencies
