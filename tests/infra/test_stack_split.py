"""The two stacks of an environment are coupled by names, not by CloudFormation exports.

An export in use can be neither changed nor removed: a change to what the stateless stack reads
of the stateful one would need a two-phase deploy. The stateless stack names each stateful
resource by its deterministic name (sluice/naming.py) instead.
"""

from __future__ import annotations

import json

import pytest


@pytest.mark.xfail(strict=True, reason="the stateless stack still imports ~20 exports")
def test_the_stateless_stack_imports_nothing_from_the_stateful_stack(synth, env):
    s = synth(env)
    assert "Fn::ImportValue" not in json.dumps(s.stateless.to_json())
    outputs = s.stateful.to_json().get("Outputs", {})
    assert [name for name, output in outputs.items() if "Export" in output] == []
