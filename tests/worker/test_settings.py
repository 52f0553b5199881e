"""The worker's settings: parsed once from the environment, every bad value named."""

from __future__ import annotations

import pytest

from sluice.settings import SettingsError, WebSettings

ALIAS = "arn:aws:lambda:eu-west-1:123456789012:function:transcribe:live"
GOOD = {
    "SLUICE_ENV": "dev",
    "SLUICE_ALIAS_TRANSCRIBE_AUDIO": ALIAS,
    "SLUICE_EVENTS_DLQ_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/dlq",
    "SLUICE_MAX_BODY_BYTES": "65536",
    "SLUICE_HTTP_PATH": "/events",
    "SLUICE_INVOKE_TIMEOUT_S": "2.5",
}


def test_the_environment_becomes_typed_settings():
    s = WebSettings.read(GOOD)
    assert s.workflow_aliases == {"transcribe_audio": ALIAS}
    assert (s.max_body_bytes, s.http_path, s.invoke_timeout_s) == (65536, "/events", 2.5)


def test_defaults_apply_when_optional_variables_are_absent():
    s = WebSettings.read({k: GOOD[k] for k in ("SLUICE_ENV", "SLUICE_EVENTS_DLQ_URL")})
    assert (s.workflow_aliases, s.max_body_bytes, s.http_path) == ({}, 256 * 1024, "/")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SLUICE_ENV", "", "SLUICE_ENV"),
        ("SLUICE_ALIAS_X", "nope", "SLUICE_ALIAS_X: must be a Lambda alias ARN"),
        ("SLUICE_EVENTS_DLQ_URL", "dlq", "SLUICE_EVENTS_DLQ_URL"),
        ("SLUICE_MAX_BODY_BYTES", "lots", "SLUICE_MAX_BODY_BYTES: must be a number"),
        ("SLUICE_MAX_BODY_BYTES", str(2 * 1024 * 1024), "SLUICE_MAX_BODY_BYTES: must be between"),
        ("SLUICE_HTTP_PATH", "events", "SLUICE_HTTP_PATH: must start with '/'"),
        ("SLUICE_HTTP_PATH", "/health", "SLUICE_HTTP_PATH: /health is the health check"),
        ("SLUICE_INVOKE_TIMEOUT_S", "0", "SLUICE_INVOKE_TIMEOUT_S"),
    ],
)
def test_a_bad_variable_is_refused_with_its_name(variable, value, message):
    with pytest.raises(SettingsError, match=message.replace("[", r"\[")):
        WebSettings.read({**GOOD, variable: value})
