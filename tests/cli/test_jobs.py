"""`sluice jobs show ID`: the job record, the durable execution with its steps, the logs query."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from sluice_cli.aws import Aws
from sluice_cli.jobs import LOGS_QUERY
from tests.cli.conftest import JOBS_TABLE, REGION
from tests.conftest import ROOT

EXECUTION = (
    "arn:aws:lambda:eu-west-1:123456789012:function:Sluice-test-TranscribeAudio:live"
    "/durable-execution/job-7/0b5c"
)
FUNCTION = "arn:aws:lambda:eu-west-1:123456789012:function:Sluice-test-TranscribeAudio"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def put_job(ddb: Any, job_id: str, **fields: str) -> None:
    item = {"job_id": job_id, "status": "SUCCEEDED", "execution_arn": EXECUTION, **fields}
    ddb.put_item(TableName=JOBS_TABLE, Item={k: {"S": v} for k, v in item.items()})


def test_show_prints_the_job_record(jobs_table: Any, run) -> None:
    # Given a job record
    put_job(jobs_table, "job-7", transcript_key="transcripts/job-7.json")
    # When an operator shows the job
    result = run("jobs", "show", "job-7", "--jobs-table", JOBS_TABLE)
    # Then the record's fields are listed
    assert result.exit_code == 0, result.output
    assert "job job-7" in result.output
    assert "status           SUCCEEDED" in result.output
    assert "transcript_key   transcripts/job-7.json" in result.output


def test_show_prints_the_runbook_logs_query_for_the_id(jobs_table: Any, run) -> None:
    result = run("jobs", "show", "job-7", "--jobs-table", JOBS_TABLE)
    assert 'filter correlation_id = "job-7"' in result.output
    assert "/aws/lambda/Sluice-test-" in result.output
    assert "/aws/elasticbeanstalk/Sluice-test-worker/" in result.output


def test_the_logs_query_is_the_runbooks() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    assert LOGS_QUERY.format(id="<event-id>") in runbook


def test_a_job_without_record_says_so(jobs_table: Any, run) -> None:
    result = run("jobs", "show", "nope", "--jobs-table", JOBS_TABLE)
    assert result.exit_code == 0
    assert f"no record in {JOBS_TABLE}" in result.output


def test_durable_executions_are_reported_unavailable_where_the_api_is_missing(
    jobs_table: Any, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an endpoint without durable execution APIs (moto) and a known workflow function
    put_job(jobs_table, "job-7")
    monkeypatch.setenv("SLUICE_WORKFLOW_FUNCTIONS", json.dumps({"transcribe_audio": FUNCTION}))
    result = run("jobs", "show", "job-7", "--jobs-table", JOBS_TABLE)
    # Then the record still shows and the execution section says why it is missing
    assert result.exit_code == 0, result.output
    assert "status           SUCCEEDED" in result.output
    assert "durable executions\n  not available at region eu-west-1" in result.output


def test_table_name_comes_from_the_stateful_stack_output(jobs_table: Any, run) -> None:
    # Given the deployed stateful stack's output naming the jobs table
    put_job(jobs_table, "job-7")
    template = {
        "Resources": {"Q": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"JobsTableName": {"Value": JOBS_TABLE}},
    }
    boto3.client("cloudformation", region_name=REGION).create_stack(
        StackName="Sluice-test-stateful", TemplateBody=json.dumps(template)
    )
    # When no table is named on the command line
    result = run("jobs", "show", "job-7")
    # Then the stack output finds it
    assert result.exit_code == 0, result.output
    assert "status           SUCCEEDED" in result.output


def test_no_table_anywhere_names_the_fixes(jobs_table: Any, run) -> None:
    result = run("jobs", "show", "job-7")
    assert result.exit_code == 1
    assert "cannot find the jobs table: pass --jobs-table or set SLUICE_JOBS_TABLE" in result.output
    assert "Sluice-test-stateful" in result.output


def test_missing_table_is_named(jobs_table: Any, run) -> None:
    result = run("jobs", "show", "job-7", "--jobs-table", "Sluice-test-nosuch")
    assert result.exit_code == 1
    assert "jobs table Sluice-test-nosuch does not exist" in result.output


def _event(kind: str, name: str | None, minute: int, **details: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "EventType": kind,
        "EventId": minute + 1,
        "Id": f"op-{minute}",
        "EventTimestamp": T0.replace(minute=minute),
        **details,
    }
    if name:
        event["Name"] = name
    return event


def stubbed_lambda(failed: bool = False) -> tuple[Any, Stubber]:
    """A real botocore Lambda client answering the durable execution APIs with stubbed data."""
    client = boto3.client("lambda", region_name=REGION)
    stub = Stubber(client)
    stub.add_response(
        "list_durable_executions_by_function",
        {
            "DurableExecutions": [
                {
                    "DurableExecutionArn": EXECUTION,
                    "DurableExecutionName": "job-7",
                    "FunctionArn": FUNCTION,
                    "Status": "FAILED" if failed else "SUCCEEDED",
                    "StartTimestamp": T0,
                }
            ]
        },
        {"FunctionName": FUNCTION, "DurableExecutionName": "job-7"},
    )
    execution: dict[str, Any] = {
        "DurableExecutionArn": EXECUTION,
        "DurableExecutionName": "job-7",
        "FunctionArn": FUNCTION,
        "StartTimestamp": T0,
        "EndTimestamp": T0.replace(minute=9),
        "Status": "FAILED" if failed else "SUCCEEDED",
    }
    if failed:
        execution["Error"] = {"ErrorType": "BusinessError", "ErrorMessage": "not audio"}
    stub.add_response(
        "get_durable_execution",
        execution,
        {"DurableExecutionArn": EXECUTION, "IncludeExecutionData": False},
    )
    error = {"Error": {"Payload": {"ErrorType": "TransientError", "ErrorMessage": "throttled"}}}
    stub.add_response(
        "get_durable_execution_history",
        {
            "Events": [
                _event("ExecutionStarted", None, 0),
                _event("ChainedInvokeStarted", "fetch_audio_metadata", 1),
                _event("ChainedInvokeSucceeded", "fetch_audio_metadata", 2),
            ],
            "NextMarker": "page-2",
        },
        {"DurableExecutionArn": EXECUTION, "IncludeExecutionData": False},
    )
    stub.add_response(
        "get_durable_execution_history",
        {
            "Events": [
                _event(
                    "StepFailed",
                    "start_transcription",
                    3,
                    StepFailedDetails={**error, "RetryDetails": {"CurrentAttempt": 1}},
                ),
                _event("WaitStarted", "transcribe-wait", 4),
                _event("ExecutionSucceeded", None, 9),
            ]
        },
        {"DurableExecutionArn": EXECUTION, "IncludeExecutionData": False, "Marker": "page-2"},
    )
    return client, stub


def use_lambda(monkeypatch: pytest.MonkeyPatch, client: Any, *, env: bool = True) -> None:
    real = Aws.client

    def client_for(self: Aws, service: str) -> Any:
        return client if service == "lambda" else real(self, service)

    monkeypatch.setattr(Aws, "client", client_for)
    if env:
        monkeypatch.setenv("SLUICE_WORKFLOW_FUNCTIONS", json.dumps({"transcribe_audio": FUNCTION}))


def test_show_lists_the_execution_status_and_every_step(
    jobs_table: Any, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job whose durable execution succeeded after one retried step (two history pages)
    put_job(jobs_table, "job-7")
    client, stub = stubbed_lambda()
    use_lambda(monkeypatch, client)
    # When an operator shows the job
    with stub:
        result = run("jobs", "show", "job-7", "--jobs-table", JOBS_TABLE)
    # Then the execution (found once, by record and by name) is listed with its steps in order
    assert result.exit_code == 0, result.output
    assert result.output.count(f"\n  {EXECUTION}\n") == 1
    assert "status  SUCCEEDED" in result.output
    lines = [line.split() for line in result.output.splitlines() if "2026-11-23T10:0" in line]
    steps = [line[1:3] for line in lines if len(line) > 2 and line[0] != "started"]
    assert steps == [
        ["ChainedInvokeStarted", "fetch_audio_metadata"],
        ["ChainedInvokeSucceeded", "fetch_audio_metadata"],
        ["StepFailed", "start_transcription"],
        ["WaitStarted", "transcribe-wait"],
    ]
    assert "start_transcription  attempt 1  TransientError: throttled" in result.output
    stub.assert_no_pending_responses()


def test_show_gives_the_error_of_a_failed_execution(
    jobs_table: Any, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, stub = stubbed_lambda(failed=True)
    use_lambda(monkeypatch, client)
    with stub:
        result = run("jobs", "show", "job-7", "--jobs-table", JOBS_TABLE)
    assert result.exit_code == 0, result.output
    assert "status  FAILED" in result.output
    assert "error   BusinessError: not audio" in result.output


def _stack_log_groups(env: str, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The log groups the synthesized stacks of `env` really create for their Lambdas (the
    session's synth of `env`, which the infra tests on this worker share)."""
    from tests.infra.conftest import synthesized

    synth = synthesized(env, tmp_path_factory)
    groups = []
    for template in (synth.stateful, synth.stateless):
        for fn in template.find_resources("AWS::Lambda::Function").values():
            ref = fn["Properties"].get("LoggingConfig", {}).get("LogGroup")
            if ref is not None:
                group = template.to_json()["Resources"][ref["Ref"]]
                groups.append(group["Properties"]["LogGroupName"])
    return groups


@pytest.mark.infra  # synthesizes the app to read the log groups it really creates
def test_logs_option_queries_every_log_group_the_stack_creates(
    jobs_table: Any, run, monkeypatch: pytest.MonkeyPatch, tmp_path_factory
) -> None:
    # Given CloudWatch Logs holding the log groups the dev stacks create, and one of another env
    groups = _stack_log_groups("dev", tmp_path_factory)
    # every function of the stacks names its group (workflows, steps, the platform lookup)
    assert len(groups) >= 10, groups
    logs = boto3.client("logs", region_name=REGION)
    for group in [*groups, "/aws/lambda/Sluice-prod-transcribe_audio"]:
        logs.create_log_group(logGroupName=group)
    asked: dict[str, Any] = {}
    row = {"@timestamp": "2026-11-23 10:00:01", "level": "INFO", "step": "notify_user"}

    def start_query(**kwargs: Any) -> dict[str, str]:
        asked.update(kwargs)
        return {"queryId": "q-1"}

    def get_query_results(queryId: str) -> dict[str, Any]:
        line = [{"field": k, "value": v} for k, v in {**row, "message": "step succeeded"}.items()]
        return {"status": "Complete", "results": [line]}

    monkeypatch.setattr(logs, "start_query", start_query)
    monkeypatch.setattr(logs, "get_query_results", get_query_results)
    real = Aws.client
    monkeypatch.setattr(
        Aws, "client", lambda self, service: logs if service == "logs" else real(self, service)
    )
    # When the operator asks for a dev job's logs too
    result = run("jobs", "show", "job-7", "--jobs-table", JOBS_TABLE, "--logs", env="dev")
    # Then the query ran over exactly the dev stacks' groups, and its lines are printed
    assert result.exit_code == 0, result.output
    assert sorted(asked["logGroupNames"]) == sorted(groups)
    assert asked["queryString"] == LOGS_QUERY.format(id="job-7")
    assert "2026-11-23 10:00:01  INFO  notify_user  step succeeded" in result.output
    assert "(1 line(s), status Complete)" in result.output


def test_workflow_functions_come_from_the_stateless_stack_outputs(
    jobs_table: Any, run, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the deployed stateless stack names the workflow's function in its output
    template = {
        "Resources": {"Q": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"WorkflowFunctionTranscribeAudio": {"Value": FUNCTION}},
    }
    boto3.client("cloudformation", region_name=REGION).create_stack(
        StackName="Sluice-test-stateless", TemplateBody=json.dumps(template)
    )
    client, stub = stubbed_lambda()
    use_lambda(monkeypatch, client, env=False)
    # When the job is shown (no record: only the execution named after the id finds it)
    with stub:
        result = run("jobs", "show", "job-7", "--jobs-table", JOBS_TABLE)
    # Then its execution was looked up by that function and shown
    assert result.exit_code == 0, result.output
    assert f"\n  {EXECUTION}\n" in result.output
    stub.assert_no_pending_responses()
