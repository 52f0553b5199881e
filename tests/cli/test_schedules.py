"""`sluice schedules list|reseed`: the registry in code, and a clear answer when the broker is off."""

from __future__ import annotations

import re

from sluice.scheduling.registry import REGISTRY


def test_list_shows_every_registered_task_and_when_it_is_next_due(run) -> None:
    # Given the deployment's registry (no broker configured)
    # When an operator lists the schedules
    result = run("schedules", "list")
    # Then each task is a row with its schedule, next due time and what it does
    assert result.exit_code == 0, result.output
    for task in REGISTRY:
        row = next(line for line in result.output.splitlines() if line.startswith(task.name + " "))
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row)
    heartbeat = next(line for line in result.output.splitlines() if line.startswith("heartbeat "))
    assert "every 60 s" in heartbeat and "runs heartbeat()" in heartbeat
    assert "no broker: tokens not shown" in result.output


def test_reseed_without_a_broker_says_it_needs_one(run) -> None:
    result = run("schedules", "reseed", "heartbeat")
    assert result.exit_code == 1
    assert "reseed needs the broker: pass --broker-url or set SLUICE_BROKER_URL" in result.output


def test_reseed_of_an_unknown_task_lists_the_registered_ones(run) -> None:
    result = run("schedules", "reseed", "nosuch", "--broker-url", "amqp://127.0.0.1:1/")
    assert result.exit_code == 2
    assert "unknown task 'nosuch'; registered: heartbeat" in result.output


def test_list_with_an_unreachable_broker_names_the_setting(run) -> None:
    result = run("schedules", "list", "--broker-url", "amqp://guest:secret@127.0.0.1:1/%2F")
    assert result.exit_code == 1
    assert "cannot connect to the broker at amqp://***@127.0.0.1:1/%2F" in result.output
    assert "secret" not in result.output


def test_add_and_set_take_overlap_skip_or_allow_and_refuse_anything_else(run) -> None:
    # An unknown choice is refused before anything is read or written, naming the option
    for op in ("add", "set"):
        result = run("schedules", op, "nightly", "--overlap", "queue")
        assert result.exit_code == 2, result.output
        assert "Invalid value for '--overlap'" in result.output
        assert "'queue' is not one of 'skip', 'allow'" in result.output
