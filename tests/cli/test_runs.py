"""`sluice runs` and its Python API against Lambda's durable APIs as the local pipeline serves them.

The durable executions are real: AWS's durable execution runner (devtools/durable_lambda.py, the
same server `make local-up` runs) runs two small workflows: one whose step fails until its cause
is removed, one that waits for a callback. The CLI talks to it over HTTP with boto3, as it talks
to Lambda.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from aws_durable_execution_sdk_python import DurableContext, durable_execution
from aws_durable_execution_sdk_python.config import Duration, WaitForCallbackConfig
from botocore.config import Config
from click.testing import CliRunner

from devtools.durable_lambda import DurableService, serve
from devtools.local.resources import create_coordination_table
from sluice import naming
from sluice.catalog import WORKFLOW_ALIAS
from sluice.envelope import Event, execution_name
from sluice.run_control import RunRecords
from sluice_cli import cli
from sluice_cli.runs import Runs, operations, replay_name

# Real durable executions behind a loopback HTTP server, and moto's server: integration.
pytestmark = pytest.mark.integration

ENV = "runs-test"

# The fragile step fails while this holds a cause; the operator "fixes" it by clearing it.
CAUSE: dict[str, str] = {}
# What the failure handler was told, one entry per call.
FAILURES: list[dict[str, Any]] = []


def record_failure(event: Any, _context: Any) -> dict[str, Any]:
    FAILURES.append(dict(event))
    return {"job_id": event["job_id"], "status": "FAILED"}


def fragile(event: Any, _context: Any) -> dict[str, Any]:
    if CAUSE.get("cause"):
        raise RuntimeError(CAUSE["cause"])
    return {"echo": event["value"]}


@durable_execution
def flaky(event: Any, ctx: DurableContext) -> dict[str, Any]:
    out = ctx.invoke(f"fragile:{WORKFLOW_ALIAS}", {"value": event["data"]["value"]}, name="fragile")
    return {"done": out}


@durable_execution
def waiting(event: Any, ctx: DurableContext) -> Any:
    return ctx.wait_for_callback(
        lambda _callback_id, _ctx: None,
        config=WaitForCallbackConfig(timeout=Duration.from_seconds(3600)),
    )


@pytest.fixture
def records(moto_ddb: Any, monkeypatch: pytest.MonkeyPatch) -> RunRecords:
    """The coordination table of environment ENV in moto's server, as the stack makes it."""
    monkeypatch.setenv("SLUICE_ENV", ENV)
    table = naming.coordination_table(ENV)
    create_coordination_table(moto_ddb, table)
    return RunRecords(moto_ddb, table)


@pytest.fixture
def endpoint(records: RunRecords, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    service = DurableService(
        {"flaky": flaky, "waiting": waiting}, {"fragile": fragile, "on_failure": record_failure}
    )
    server = serve(service)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", url)
    monkeypatch.setenv(
        "SLUICE_WORKFLOW_FUNCTIONS", json.dumps({"flaky": "flaky", "waiting": "waiting"})
    )
    monkeypatch.setenv("SLUICE_FAILURE_HANDLERS", json.dumps({"waiting": "on_failure"}))
    CAUSE.clear()
    FAILURES.clear()
    yield url
    server.shutdown()
    service.close()


def lam(url: str) -> Any:
    return boto3.client(
        "lambda", endpoint_url=url, config=Config(retries={"mode": "standard", "max_attempts": 2})
    )


def start(url: str, workflow: str, event: Event) -> str:
    answer = lam(url).invoke(
        FunctionName=f"{workflow}:{WORKFLOW_ALIAS}",
        InvocationType="Event",
        DurableExecutionName=event.execution_name,
        Payload=event.start_payload(),
    )
    return str(answer["DurableExecutionArn"])


def settle(
    url: str, arn: str, *, until: frozenset[str] = frozenset({"SUCCEEDED", "FAILED"})
) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = lam(url).get_durable_execution(DurableExecutionArn=arn)["Status"]
        if status in until:
            return str(status)
        time.sleep(0.05)
    raise AssertionError(f"{arn} still {status}")


def sluice(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_failed_run_is_listed_shown_with_its_failing_step_replayed_and_succeeds(endpoint) -> None:
    # Given a run whose step fails for a cause an operator can remove
    CAUSE["cause"] = "upstream said no"
    ev = Event(name="demo/asked", data={"value": "v-1"}, id="ev-fail-1", correlation_id="c-1")
    failed = start(endpoint, "flaky", ev)
    assert settle(endpoint, failed) == "FAILED"
    ok = start(endpoint, "flaky", Event(name="demo/asked", data={"value": "v-2"}, id="ev-ok-1"))
    assert settle(endpoint, ok) == "FAILED"  # the cause is still there
    CAUSE.clear()
    ok3 = start(endpoint, "flaky", Event(name="demo/asked", data={"value": "v-3"}, id="ev-ok-3"))
    assert settle(endpoint, ok3) == "SUCCEEDED"

    # When the operator lists the failed runs of one action (its correlation id)
    listed = sluice("runs", "list", "--status", "FAILED", "--correlation-id", "c-1")
    # Then exactly that run is listed
    assert "ev-fail-1" in listed and "ev-ok-1" not in listed and "ev-ok-3" not in listed

    # And it is shown with the failing step's input, error and stack trace
    shown = json.loads(sluice("runs", "show", "ev-fail-1", "--json"))
    step = next(op for op in shown["operations"] if op["name"] == "fragile")
    assert step["kind"] == "ChainedInvoke" and step["status"] == "Failed"
    assert step["input"] == {"value": "v-1"}
    assert "upstream said no" in step["error"]["message"]
    # Lambda returns a failed function's stackTrace and the durable service keeps it in the
    # ChainedInvokeFailed error (test_operations_fold_… shows it is carried); the local runner
    # drops it for functions registered in-process, so here it is only a list.
    assert isinstance(step["error"]["stack_trace"], list)
    assert shown["input"]["data"] == {"value": "v-1"}

    # When it is replayed (the cause is gone), twice
    first = sluice("runs", "replay", "ev-fail-1")
    again = sluice("runs", "replay", "ev-fail-1")
    # Then one new run started, with the same input, linked both ways, and it succeeds
    new_name = Event(name="demo/asked", data={}, id=replay_name("ev-fail-1")).execution_name
    assert new_name in first and new_name in again
    runs = Runs(lam(endpoint), {"flaky": "flaky", "waiting": "waiting"})
    replays = runs.list(workflows=["flaky"], name=new_name)
    assert len(replays) == 1
    assert settle(endpoint, replays[0].arn) == "SUCCEEDED"
    replayed = runs.show(replays[0].arn)
    assert replayed.run.replay_of == "ev-fail-1"
    assert replayed.run.event.data == {"value": "v-1"}
    assert replayed.run.event.correlation_id == "c-1"
    original = runs.show(failed)
    assert [r.name for r in original.replays] == [new_name]
    assert "replayed   " + new_name in sluice("runs", "show", "ev-fail-1")


def test_bulk_replay_replays_each_failed_run_in_the_window_once(endpoint) -> None:
    CAUSE["cause"] = "down"
    arns = [
        start(endpoint, "flaky", Event(name="demo/asked", data={"value": f"b{i}"}, id=f"bulk-{i}"))
        for i in range(3)
    ]
    assert [settle(endpoint, a) for a in arns] == ["FAILED"] * 3
    CAUSE.clear()
    dry = sluice("runs", "replay", "--workflow", "flaky", "--since", "1h", "--dry-run")
    assert "dry run: 3 run(s) would be replayed" in dry
    sluice("runs", "replay", "--workflow", "flaky", "--since", "1h", "--yes")
    sluice("runs", "replay", "--workflow", "flaky", "--since", "1h", "--status", "FAILED", "--yes")
    runs = Runs(lam(endpoint), {"flaky": "flaky"})
    everything = runs.list(workflows=["flaky"], limit=100)
    replays = [r for r in everything if "replay" in r.name]
    # one replay per failed run, though bulk replay ran twice
    assert len(replays) == 3
    assert all(settle(endpoint, r.arn) == "SUCCEEDED" for r in replays)


def test_a_waiting_run_is_cancelled_with_its_reason_and_the_rest_keep_waiting(
    endpoint, records
) -> None:
    waiting_arns = {
        key: start(
            endpoint,
            "waiting",
            Event(name="demo/wait", data={"media_id": key}, id=f"wait-{key}"),
        )
        for key in ("m-1", "m-2")
    }
    deadline = time.monotonic() + 10
    runs = Runs(lam(endpoint), {"waiting": "waiting"})
    while time.monotonic() < deadline and not all(
        any(op.kind == "Callback" for op in runs.show(a).operations) for a in waiting_arns.values()
    ):
        time.sleep(0.05)
    dry = sluice(
        "runs", "cancel", "--workflow", "waiting", "--match", "data.media_id=m-1", "--dry-run"
    )
    assert "wait-m-1" in dry and "wait-m-2" not in dry
    sluice(
        "runs",
        "cancel",
        "--workflow",
        "waiting",
        "--match",
        "data.media_id=m-1",
        "--reason",
        "media deleted",
        "--yes",
    )
    stopped = runs.get(waiting_arns["m-1"])
    assert stopped.status == "STOPPED"
    assert stopped.error["type"] == "Cancelled" and stopped.error["message"] == "media deleted"
    assert runs.get(waiting_arns["m-2"]).status == "RUNNING"
    # And its failure handler ran once, told why; cancelling it again runs nothing more
    assert [(f["job_id"], f["reason"], f["message"]) for f in FAILURES] == [
        ("wait-m-1", "cancelled", "media deleted")
    ]
    sluice("runs", "cancel", "wait-m-1", "--reason", "again")
    assert len(FAILURES) == 1
    # And the cancelled run is recorded, to be listed after Lambda's history is gone
    (record,) = records.list("waiting")
    assert (record.name, record.status, record.arn) == ("wait-m-1", "STOPPED", waiting_arns["m-1"])
    assert record.reason["message"] == "media deleted"
    assert record.event["data"] == {"media_id": "m-1"}
    listed = sluice("runs", "list", "--recorded", "--workflow", "waiting")
    assert "STOPPED" in listed and "wait-m-1" in listed and "wait-m-2" not in listed


def test_a_failed_run_whose_history_expired_is_listed_and_replayed_from_its_record(
    endpoint, records
) -> None:
    # Given a failed run Lambda no longer knows (its history expired), as the workflow wrapper
    # recorded it, and another recorded a week earlier
    old = datetime.now(UTC) - timedelta(days=120)
    for name, started in (("gone-1", old), ("gone-0", old - timedelta(days=7))):
        event = Event(name="demo/asked", data={"value": name}, id=name, correlation_id="c-gone")
        records.record(
            workflow="flaky",
            name=name,
            arn=f"arn:aws:lambda:eu-west-1:123456789012:function:flaky:live/durable-execution/{name}/x",
            status="FAILED",
            event=event.to_dict(),
            reason={"reason": "step_failed", "step": "fragile", "message": "upstream said no"},
            started=started,
            ended=started + timedelta(minutes=1),
        )
    assert Runs(lam(endpoint), {"flaky": "flaky"}).list(workflows=["flaky"]) == []
    # When the operator lists the recorded failures of that window
    out = sluice("runs", "list", "--recorded", "--since", "125d", "--until", "119d", "--json")
    listed = [json.loads(line) for line in out.splitlines()]
    # Then only the run of the window is listed, with its event and reason
    assert [(r["name"], r["status"]) for r in listed] == [("gone-1", "FAILED")]
    assert listed[0]["input"]["data"] == {"value": "gone-1"}
    assert listed[0]["error"]["message"] == "upstream said no"
    # And replaying it (twice, once by ARN) starts one new run from the recorded event
    sluice("runs", "replay", "gone-1")
    sluice("runs", "replay", listed[0]["arn"])
    runs = Runs(lam(endpoint), {"flaky": "flaky"})
    (replay,) = runs.list(workflows=["flaky"])
    assert replay.name == execution_name(replay_name("gone-1"))
    assert settle(endpoint, replay.arn) == "SUCCEEDED"
    assert runs.get(replay.arn).replay_of == "gone-1"
    assert runs.get(replay.arn).event.correlation_id == "c-gone"


def test_operations_fold_a_history_into_one_entry_per_operation() -> None:
    # A history as botocore's model shapes it: a step retried once, then failed for good.
    t0 = "2026-12-02T10:00:00Z"
    events = [
        {"EventType": "ExecutionStarted", "EventId": 1, "Id": "x", "EventTimestamp": t0},
        {
            "EventType": "StepStarted",
            "EventId": 2,
            "Id": "s1",
            "Name": "claim",
            "EventTimestamp": t0,
        },
        {
            "EventType": "StepFailed",
            "EventId": 3,
            "Id": "s1",
            "Name": "claim",
            "EventTimestamp": t0,
            "StepFailedDetails": {
                "Error": {
                    "Payload": {"ErrorType": "Boom", "ErrorMessage": "no", "StackTrace": ["a", "b"]}
                },
                "RetryDetails": {"CurrentAttempt": 2, "NextAttemptDelaySeconds": 4},
            },
        },
        {
            "EventType": "ChainedInvokeStarted",
            "EventId": 4,
            "Id": "i1",
            "Name": "notify#2",
            "ChainedInvokeStartedDetails": {
                "FunctionName": "notify:live",
                "Input": {"Payload": '{"a": 1}'},
            },
        },
        {
            "EventType": "ChainedInvokeSucceeded",
            "EventId": 5,
            "Id": "i1",
            "Name": "notify#2",
            "ChainedInvokeSucceededDetails": {"Result": {"Payload": "not json"}},
        },
    ]
    ops = operations(events)
    assert [(o.kind, o.name, o.status, o.attempt) for o in ops] == [
        ("Step", "claim", "Failed", 2),
        ("ChainedInvoke", "notify#2", "Succeeded", 2),
    ]
    assert ops[0].error == {
        "type": "Boom",
        "message": "no",
        "data": None,
        "stack_trace": ["a", "b"],
    }
    assert ops[1].input == {"a": 1} and ops[1].output == "not json"
    assert ops[1].details == {"FunctionName": "notify:live"}


def test_unknown_workflow_or_status_is_refused_with_the_valid_ones(endpoint) -> None:
    result = CliRunner().invoke(cli, ["runs", "list", "--workflow", "nope"])
    assert result.exit_code != 0
    assert "unknown workflow nope: one of flaky, waiting" in result.output
    result = CliRunner().invoke(cli, ["runs", "list", "--since", "yesterday"])
    assert result.exit_code != 0 and "an age like 90m, 24h, 7d" in result.output
