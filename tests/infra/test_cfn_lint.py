"""Every synthesized template passes cfn-lint, with AWS's serverless rules too, with no errors."""

from __future__ import annotations

import json

from cfnlint.api import ManualArgs, lint_file


def test_templates_have_no_cfn_lint_errors(synth, env):
    files = synth(env).template_files()
    assert len(files) == 2
    for path in files:
        matches = lint_file(
            path,
            ManualArgs(
                regions=[synth(env).config.region],
                # cfn-lint-serverless: AWS's rules for Lambda, SQS, SNS and friends (E/W/I).
                append_rules=["cfn_lint_serverless.rules"],
            ),
        )
        errors = [
            f"{m.rule.id} {m.path}: {m.message}" for m in matches if m.rule.id.startswith("E")
        ]
        assert errors == [], f"{path.name}:\n" + "\n".join(errors)
        assert json.loads(path.read_text())["Resources"]
