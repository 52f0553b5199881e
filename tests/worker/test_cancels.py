"""Declared cancellation (`cancel_on`) end to end: real durable runs of a declared workflow in the
durable runner's Lambda API (devtools/durable_lambda.py, as `make local-up` serves it), the
coordination table in moto's server, and the worker's Canceller calling both over HTTP as it
calls AWS."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from aws_durable_execution_sdk_python.config import Duration, WaitForCallbackConfig

from devtools.durable_lambda import DurableService, serve
from devtools.local.resources import create_coordination_table
from lambdas.common.workflow import Run, declared_workflow
from sluice import naming
from sluice.catalog import WORKFLOW_ALIAS
from sluice.envelope import Event
from sluice.run_control import CANCEL_PREFIX, RunRecords
from sluice.settings import LambdaSettings, WebSettings
from sluice.workflows import CancelOn, Declaration
from worker.cancels import Canceller, first_received
from worker.dispatch import Delivery, Dispatcher
from worker.observability import Metrics

REGION = "eu-west-1"
TABLE = naming.coordination_table("cancel-test")
DELETED = "media/deleted"
DECLARATION = Declaration(
    id="waiter",
    events=("media/transcription.requested",),
    retries=0,
    cancel_on=(CancelOn(event=DELETED, match="data.key"),),
)
CANCELS = {DELETED: (("waiter", "data.key"),)}
# What the failure handler was told, one entry per call.
FAILURES: list[dict[str, Any]] = []


def wait_for_a_callback(run: Run) -> dict[str, Any]:
    run.ctx.wait_for_callback(
        lambda _callback_id, _ctx: None,
        config=WaitForCallbackConfig(timeout=Duration.from_seconds(3600)),
        name="approval",
    )
    return {"done": True}


waiter = declared_workflow(DECLARATION, wait_for_a_callback)


def on_failure(event: Any, _context: Any) -> dict[str, Any]:
    FAILURES.append(dict(event))
    return {"status": "FAILED"}


@pytest.fixture
def ddb(moto_ddb: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    # the workflow Lambda's settings, named by its model
    monkeypatch.setenv(LambdaSettings.variables()["coordination_table"], TABLE)
    create_coordination_table(moto_ddb, TABLE)
    return moto_ddb


@pytest.fixture
def lam(ddb: Any) -> Iterator[Any]:
    service = DurableService({"waiter": waiter}, {"on_failure": on_failure})
    server = serve(service)
    FAILURES.clear()
    yield boto3.client(
        "lambda", endpoint_url=f"http://127.0.0.1:{server.server_address[1]}", region_name=REGION
    )
    server.shutdown()
    service.close()


def canceller(lam: Any, ddb: Any, *, clock: Any = time.time) -> Canceller:
    return Canceller(
        lambda_client=lam,
        dynamodb_client=ddb,
        table=TABLE,
        failure_handlers={"waiter": "on_failure"},
        cancels=CANCELS,
        clock=clock,
    )


def start(lam: Any, key: str, event_id: str) -> str:
    event = Event(
        name="media/transcription.requested", id=event_id, data={"bucket": "b", "key": key}
    )
    answer = lam.invoke(
        FunctionName=f"waiter:{WORKFLOW_ALIAS}",
        InvocationType="Event",
        DurableExecutionName=event.execution_name,
        Payload=event.start_payload(),
    )
    return str(answer["DurableExecutionArn"])


def status(lam: Any, arn: str) -> dict[str, Any]:
    return dict(lam.get_durable_execution(DurableExecutionArn=arn))


def until(predicate: Any, what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def registered(ddb: Any, key: str) -> list[str]:
    items = ddb.scan(TableName=TABLE)["Items"]
    return sorted(
        i["name"]["S"]
        for i in items
        if i["pk"]["S"] == f"{CANCEL_PREFIX}{DELETED}#data.key#{key}"
        and i["sk"]["S"] != "cancelled"
    )


def waiting(lam: Any, arn: str) -> bool:
    history = lam.get_durable_execution_history(DurableExecutionArn=arn)["Events"]
    return any("CallbackStarted" in json.dumps(e, default=str) for e in history)


def deleted(key: str, event_id: str) -> Event:
    return Event(name=DELETED, id=event_id, data={"bucket": "b", "key": key})


def test_a_cancelling_event_stops_exactly_the_matching_runs_and_runs_their_handler_once(lam, ddb):
    # Given two runs waiting, on two objects
    runs = {key: start(lam, key, f"ev-{key}") for key in ("k1", "k2")}
    until(lambda: all(waiting(lam, arn) for arn in runs.values()), "both runs to wait")
    assert registered(ddb, "k1") == ["ev-k1"] and registered(ddb, "k2") == ["ev-k2"]

    # When k1 is deleted
    stopped = canceller(lam, ddb).cancel(deleted("k1", "del-1"))

    # Then its run, and only it, is stopped with the reason; its handler ran once
    assert [(s["workflow"], s["execution_name"]) for s in stopped] == [("waiter", "ev-k1")]
    first = status(lam, runs["k1"])
    assert first["Status"] == "STOPPED"
    assert first["Error"]["ErrorType"] == "Cancelled"
    assert "media/deleted del-1" in first["Error"]["ErrorMessage"]
    assert status(lam, runs["k2"])["Status"] == "RUNNING"
    assert [(f["job_id"], f["reason"], f["event_id"]) for f in FAILURES] == [
        ("ev-k1", "cancelled", "ev-k1")
    ]
    # and it is recorded, and no longer registered
    (record,) = RunRecords(ddb, TABLE).list("waiter")
    assert (record.name, record.status) == ("ev-k1", "STOPPED")
    assert registered(ddb, "k1") == [] and registered(ddb, "k2") == ["ev-k2"]

    # When the same event comes again (sqsd re-delivers it), nothing more happens
    assert canceller(lam, ddb).cancel(deleted("k1", "del-1")) == []
    assert len(FAILURES) == 1


def test_a_run_that_registers_after_a_cancellation_received_later_cancels_itself(lam, ddb):
    # Given a cancellation of k3 received (by the worker's clock) after the run below registers,
    # recorded before that run registers
    assert canceller(lam, ddb, clock=lambda: time.time() + 30).cancel(deleted("k3", "d3")) == []
    # When the run starts
    arn = start(lam, "k3", "ev-k3")
    # Then it finds the cancellation when it registers, and fails through its failure handler
    until(lambda: status(lam, arn)["Status"] == "FAILED", "the run to cancel itself")
    assert [(f["job_id"], f["reason"]) for f in FAILURES] == [("ev-k3", "cancelled")]
    assert "cancelled by media/deleted" in status(lam, arn)["Error"]["ErrorMessage"]
    assert registered(ddb, "k3") == []


def test_a_run_started_after_the_cancellation_is_not_cancelled(lam, ddb):
    # Given k4 deleted (the events queue first received it then), then uploaded again
    received = datetime.now(UTC)
    canceller(lam, ddb).cancel(deleted("k4", "d4"), received=received)
    time.sleep(0.01)
    arn = start(lam, "k4", "ev-k4-again")
    until(lambda: waiting(lam, arn), "the new run to wait")
    # When the old deletion is delivered again (sqsd's first-received time is the same)
    assert canceller(lam, ddb).cancel(deleted("k4", "d4"), received=received) == []
    # Then the new run keeps running
    assert status(lam, arn)["Status"] == "RUNNING" and FAILURES == []


def test_an_event_without_the_matched_value_cancels_nothing(lam, ddb):
    arn = start(lam, "k5", "ev-k5")
    until(lambda: waiting(lam, arn), "the run to wait")
    nothing = Event(name=DELETED, id="d-none", data={"bucket": "b"})
    assert canceller(lam, ddb).scopes(nothing) == {}
    assert canceller(lam, ddb).cancel(nothing) == []
    assert status(lam, arn)["Status"] == "RUNNING"


def test_sqsds_first_received_time_counts_to_the_end_of_its_second():
    # sqsd sends whole seconds (devtools/sqsd.py sends it as sqsd does)
    assert first_received("2026-12-02T07:16:40Z") == datetime(
        2026, 12, 2, 7, 16, 40, 999_999, tzinfo=UTC
    )
    assert first_received("") is None and first_received("yesterday") is None


def test_the_worker_answers_a_cancelling_event_with_what_it_cancelled(lam, ddb):
    # Given a waiting run on k6 and the worker's dispatcher with the canceller
    arn = start(lam, "k6", "ev-k6")
    until(lambda: waiting(lam, arn), "the run to wait")
    lines = io.StringIO()
    dispatcher = Dispatcher(
        settings=WebSettings.read(
            {
                "SLUICE_ENV": "test",
                "SLUICE_EVENTS_DLQ_URL": "https://sqs.eu-west-1.amazonaws.com/1/d",
            }
        ),
        lambda_client=lam,
        sqs_client=None,
        metrics=Metrics("Sluice-test/Worker", {"Environment": "test"}, stream=lines),
        canceller=canceller(lam, ddb),
    )
    # When sqsd POSTs the deletion (media/deleted starts no workflow of the catalog)
    body = deleted("k6", "del-6").to_json().encode()
    delivery = Delivery(message_id="m-6", first_received_at=time.strftime("%Y-%m-%dT%H:%M:%SZ"))
    result = dispatcher.handle(body, delivery)
    # Then it answers 200, cancelled, and counts it
    assert (result.status, result.outcome) == (200, "cancelled")
    assert result.executions == [
        {"workflow": "waiter", "execution_name": "ev-k6", "arn": arn, "cancelled_by": "del-6"}
    ]
    assert json.loads(lines.getvalue().splitlines()[-1])["Cancelled"] == 1
    assert status(lam, arn)["Status"] == "STOPPED"


def test_a_cancelling_event_the_worker_cannot_act_on_is_retried_not_lost(lam, ddb):
    settings = WebSettings.read(
        {"SLUICE_ENV": "test", "SLUICE_EVENTS_DLQ_URL": "https://sqs.eu-west-1.amazonaws.com/1/d"}
    )
    body = deleted("k7", "del-7").to_json().encode()
    metrics = Metrics("Sluice-test/Worker", {"Environment": "test"}, stream=io.StringIO())
    # without a coordination table (a deployment fault) ...
    bare = Dispatcher(settings=settings, lambda_client=lam, sqs_client=None, metrics=metrics)
    result = bare.handle(body, Delivery(message_id="m-7"))
    assert (result.status, result.reason) == (503, "no_coordination_table")
    # ... or with the table unreachable
    broken = Canceller(
        lambda_client=lam,
        dynamodb_client=boto3.client(
            "dynamodb", endpoint_url="http://127.0.0.1:9", region_name=REGION
        ),
        table=TABLE,
        failure_handlers={},
        cancels=CANCELS,
    )
    down = Dispatcher(
        settings=settings, lambda_client=lam, sqs_client=None, metrics=metrics, canceller=broken
    )
    assert down.handle(body, Delivery(message_id="m-7")).status == 503
