"""The worker's settings: parsed once from the environment, every bad value named."""

from __future__ import annotations

import json

import pytest

from sluice import catalog, workflows
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


def test_a_throttle_replaces_the_declared_one_and_keeps_the_rest_of_the_flow():
    # Given deliver_webhook's declared flow control and a replacement of its throttle
    declared = catalog.FLOWS["deliver_webhook"]
    assert declared.throttle is not None
    local = {"limit": 3, "period_s": 5, "key": declared.throttle.key}
    # When the worker reads it
    s = WebSettings.read({**GOOD, "SLUICE_THROTTLES": json.dumps({"deliver_webhook": local})})
    flows = workflows.with_throttles(catalog.FLOWS, s.throttles)
    # Then that throttle is the replacement, everything else is as declared
    assert flows["deliver_webhook"].throttle == workflows.Throttle(**local)
    assert flows["deliver_webhook"].model_copy(update={"throttle": declared.throttle}) == declared
    assert {w: f for w, f in flows.items() if w != "deliver_webhook"} == {
        w: f for w, f in catalog.FLOWS.items() if w != "deliver_webhook"
    }
    assert WebSettings.read(GOOD).throttles == {}


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
        (
            "SLUICE_THROTTLES",
            '{"transcribe_audio": {"limit": 1, "period_s": 5}}',
            "SLUICE_THROTTLES: .*no declared throttle to replace: transcribe_audio",
        ),
        (
            "SLUICE_THROTTLES",
            '{"deliver_webhook": {"limit": 0, "period_s": 5}}',
            "SLUICE_THROTTLES",
        ),
    ],
)
def test_a_bad_variable_is_refused_with_its_name(variable, value, message):
    with pytest.raises(SettingsError, match=message.replace("[", r"\[")):
        WebSettings.read({**GOOD, variable: value})


def test_the_tasks_process_reads_its_drain_stop_timeout_and_protection():
    from sluice.settings import TasksSettings

    variables = TasksSettings.variables()
    queue = {variables["queue_url"]: "https://sqs.eu-west-1.amazonaws.com/123456789012/tasks"}
    s = TasksSettings.read(
        {
            **queue,
            **TasksSettings.render(
                grace_s=300, stop_timeout_s=330, scale_in_protection=True, protection_max_s=28800
            ),
        }
    )
    assert (s.grace_s, s.stop_timeout_s, s.scale_in_protection, s.protection_max_s) == (
        300,
        330,
        True,
        28800,
    )
    # Off unless the stack turns it on: a local run has no instance to protect
    assert TasksSettings.read(queue).scale_in_protection is False
    # systemd would kill the process before its drain ends
    with pytest.raises(
        SettingsError, match=r"SLUICE_TASKS_STOP_TIMEOUT_S: .*above SLUICE_TASKS_GRACE_S"
    ):
        TasksSettings.read({**queue, **TasksSettings.render(grace_s=300, stop_timeout_s=300)})
