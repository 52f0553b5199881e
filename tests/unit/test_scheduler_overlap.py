"""No overlap of an event task's runs (worker/scheduler/overlap.py): the guard's decisions, the
last-run record (the coordination table in moto, and process memory), and the registry's checks.

Lambda is botocore's own client with a Stubber: every request and answer is checked against
botocore's Lambda service model (ListDurableExecutionsByFunction: FunctionName,
DurableExecutionName; DurableExecutions[].Status one of RUNNING, SUCCEEDED, FAILED, TIMED_OUT,
STOPPED), and its errors are the ones that model declares.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from devtools.local.resources import ENV, REGION, create_coordination_table
from sluice import naming
from sluice.envelope import execution_name
from sluice.scheduling import registry as registry_module
from sluice.scheduling.registry import PeriodicTask, Tick, tick_event_id
from sluice.scheduling.schedule import Every, ScheduleError
from sluice.settings import SchedulerSettings
from sluice.workflows import Debounce, Flow
from worker.scheduler.__main__ import overlap_guard
from worker.scheduler.overlap import (
    LambdaRuns,
    LastRuns,
    MemoryLastRuns,
    OverlapGuard,
    TableLastRuns,
)

EVENT = "media/embedding.requested"  # starts embed_transcript (sluice.catalog.ROUTES)
WORKFLOW = "embed_transcript"
ALIAS = f"arn:aws:lambda:{REGION}:123456789012:function:{WORKFLOW}:live"
TASK = PeriodicTask("reindex", Every(60), event=EVENT)
PENDING_S = 30.0
NOW = 1_800_000_000.0


def tick(minute: int) -> Tick:
    return Tick(TASK.name, NOW - NOW % 60 + 60 * minute)


@pytest.fixture(params=["table", "memory"])
def last_runs(request: pytest.FixtureRequest) -> Iterator[LastRuns]:
    if request.param == "memory":
        yield MemoryLastRuns()
        return
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        table = naming.coordination_table(ENV)
        create_coordination_table(ddb, table)
        yield TableLastRuns(ddb, table, "sluice.sched")


@pytest.fixture
def lam() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client("lambda", region_name=REGION)
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def listed(stub: Stubber, of: Tick, *statuses: str) -> None:
    """Lambda's answer for the runs of tick `of` (one execution per status given)."""
    name = execution_name(tick_event_id(of))
    stub.add_response(
        "list_durable_executions_by_function",
        {
            "DurableExecutions": [
                {
                    "DurableExecutionArn": f"{ALIAS}/durable-execution/{name}/{i}",
                    "DurableExecutionName": name,
                    "FunctionArn": ALIAS,
                    "Status": status,
                    "StartTimestamp": datetime.fromtimestamp(of.due, UTC),
                }
                for i, status in enumerate(statuses)
            ]
        },
        {"FunctionName": WORKFLOW, "DurableExecutionName": name},
    )


def guard(last_runs: LastRuns, client: Any, now: list[float]) -> OverlapGuard:
    runs = LambdaRuns(client, {WORKFLOW: ALIAS})
    return OverlapGuard(last_runs, runs, pending_s=PENDING_S, clock=lambda: now[0])


def test_a_tick_is_skipped_while_the_previous_ticks_run_runs_and_runs_once_it_ended(
    last_runs, lam
) -> None:
    client, stub = lam
    now = [tick(0).due]
    overlap = guard(last_runs, client, now)
    # Given the task's first tick, which nothing holds back, sent
    assert overlap.admit(TASK, tick(0)).run
    overlap.sent(TASK, tick(0))
    # When the next tick comes while that run still runs
    now[0] = tick(1).due
    listed(stub, tick(0), "RUNNING")
    verdict = overlap.admit(TASK, tick(1))
    # Then it is skipped, naming the running tick
    assert (verdict.run, verdict.reason, verdict.previous) == (False, "running", tick(0).key)
    # and once the run ended (whatever its end), the next tick runs
    for end in ("SUCCEEDED", "FAILED", "TIMED_OUT", "STOPPED"):
        listed(stub, tick(0), end)
        assert overlap.admit(TASK, tick(2)).run, end


def test_a_sent_tick_whose_run_has_not_started_holds_the_next_ones_for_pending_s(
    last_runs, lam
) -> None:
    client, stub = lam
    now = [tick(0).due]
    overlap = guard(last_runs, client, now)
    overlap.sent(TASK, tick(0))
    # Given tick 0's event still on its way (Lambda lists no run of it yet)
    now[0] = tick(0).due + PENDING_S - 1
    listed(stub, tick(0))
    verdict = overlap.admit(TASK, tick(1))
    # Then the next tick is skipped while it may still start
    assert (verdict.run, verdict.reason, verdict.previous) == (False, "pending", tick(0).key)
    # and after pending_s it is taken as lost (dead-lettered, refused): the next tick runs
    now[0] = tick(0).due + PENDING_S + 1
    listed(stub, tick(0))
    assert overlap.admit(TASK, tick(1)).run


def test_a_status_lambda_cannot_give_skips_the_tick(last_runs, lam) -> None:
    client, stub = lam
    model = botocore.session.get_session().get_service_model("lambda")
    declared = {
        e.name for e in model.operation_model("ListDurableExecutionsByFunction").error_shapes
    }
    now = [tick(0).due]
    overlap = guard(last_runs, client, now)
    overlap.sent(TASK, tick(0))
    now[0] = tick(1).due
    # Given Lambda throttling the call, failing, or not knowing the function (errors its model
    # declares for the operation)
    for code, status in (
        ("TooManyRequestsException", 429),
        ("ServiceException", 500),
        ("ResourceNotFoundException", 404),
    ):
        assert code in declared
        stub.add_client_error(
            "list_durable_executions_by_function", service_error_code=code, http_status_code=status
        )
        verdict = overlap.admit(TASK, tick(1))
        # Then the tick is skipped (fail safe: an overlap cannot be undone), named unknown
        assert (verdict.run, verdict.reason, verdict.previous) == (False, "unknown", tick(0).key)


def test_a_retried_send_of_the_same_tick_is_not_its_own_overlap(last_runs, lam) -> None:
    client, _ = lam
    overlap = guard(last_runs, client, [tick(0).due])
    overlap.sent(TASK, tick(0))
    # The same tick again (a transient failure retried): the same event, started once by Lambda
    assert overlap.admit(TASK, tick(0)).run


def test_the_record_never_moves_back(last_runs) -> None:
    # A runner fenced while frozen that records its older tick late hides no newer run
    last_runs.record(TASK.name, tick(2).key, 2)
    last_runs.record(TASK.name, tick(1).key, 3)
    last = last_runs.read(TASK.name)
    assert last is not None and last.tick == tick(2).key


def test_the_workflow_is_asked_through_its_alias_and_only_the_exact_name_counts(lam) -> None:
    client, stub = lam
    # Given Lambda answering with the tick's run and one whose name only contains it
    name = execution_name(tick_event_id(tick(0)))
    other = Tick(f"x-{TASK.name}", tick(0).due)  # tick-x-reindex-<ms> contains tick-reindex-<ms>
    stub.add_response(
        "list_durable_executions_by_function",
        {
            "DurableExecutions": [
                {
                    "DurableExecutionArn": f"{ALIAS}/durable-execution/{n}/1",
                    "DurableExecutionName": n,
                    "FunctionArn": ALIAS,
                    "Status": status,
                    "StartTimestamp": datetime.fromtimestamp(NOW, UTC),
                }
                for n, status in (
                    (execution_name(tick_event_id(other)), "RUNNING"),
                    (name, "SUCCEEDED"),
                )
            ]
        },
        {"FunctionName": WORKFLOW, "DurableExecutionName": name},
    )
    runs = LambdaRuns(client, {WORKFLOW: ALIAS})
    assert runs.statuses(EVENT, tick_event_id(tick(0))) == {WORKFLOW: ["SUCCEEDED"]}


def test_without_workflow_aliases_the_scheduler_says_it_checks_no_overlap(caplog) -> None:
    settings = SchedulerSettings.read({})
    assert overlap_guard(settings, MemoryLastRuns(), lambda_client=object()) is None
    assert "NO OVERLAP CHECK" in caplog.text
    aliased = SchedulerSettings.read({naming.alias_variable(WORKFLOW): ALIAS})
    assert aliased.workflow_aliases == {WORKFLOW: ALIAS}
    assert overlap_guard(aliased, MemoryLastRuns(), lambda_client=object()) is not None


# -- the registry: bad combinations fail at import (the CDK app's synth), naming the setting ------


def test_overlap_must_be_skip_or_allow() -> None:
    with pytest.raises(
        ScheduleError, match=r"task r: overlap must be one of skip, allow, got 'queue'"
    ):
        PeriodicTask("r", Every(60), event=EVENT, overlap="queue")


def test_a_function_task_takes_no_overlap_setting() -> None:
    with pytest.raises(ScheduleError, match=r"task r: overlap='allow' applies to event tasks only"):
        PeriodicTask("r", Every(60), action=lambda tick: None, overlap="allow")


def test_an_event_task_skips_by_default_and_may_allow() -> None:
    assert TASK.overlap == "skip"
    assert PeriodicTask("r", Every(60), event=EVENT, overlap="allow").overlap == "allow"


def test_skip_is_refused_for_a_workflow_whose_runs_are_not_named_after_the_tick(
    monkeypatch,
) -> None:
    # Given embed_transcript declared with a debounce (its run takes a later event's name)
    flows = {WORKFLOW: Flow(debounce=Debounce(quiet_s=30, max_wait_s=60, key="data.task"))}
    monkeypatch.setattr(registry_module, "FLOWS", flows)
    with pytest.raises(ScheduleError, match=r"task r: overlap='skip' cannot see the runs of embed"):
        PeriodicTask("r", Every(60), event=EVENT)
    assert PeriodicTask("r", Every(60), event=EVENT, overlap="allow").overlap == "allow"
