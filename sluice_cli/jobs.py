"""`sluice jobs show ID`: the job record, its durable executions and steps, and its logs query."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import click
from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from sluice import naming
from sluice.catalog import (
    FAILURE_HANDLER_OUTPUT_PREFIX,
    WORKFLOW_OUTPUT_PREFIX,
    workflows_in_outputs,
)
from sluice.envelope import execution_name
from sluice_cli.aws import JOBS_TABLE_OUTPUT, Aws, friendly_errors, prefix

JOBS_TABLE_ENV = "SLUICE_JOBS_TABLE"
# JSON object workflow name -> function name or ARN (what the stack outputs say, for local runs).
WORKFLOW_FUNCTIONS_ENV = "SLUICE_WORKFLOW_FUNCTIONS"
# The same for each workflow's failure handler function (`sluice runs cancel` runs it).
FAILURE_HANDLERS_ENV = "SLUICE_FAILURE_HANDLERS"
# docs/runbook.md, "Follow one job": keep the two in step.
LOGS_QUERY = """fields @timestamp, @log, level, message, step, outcome
| filter correlation_id = "{id}"
| sort @timestamp asc"""


def log_group_prefixes(env: str) -> list[str]:
    """Where a job's lines are: the environment's Lambda log groups and the worker's."""
    return [naming.lambda_log_groups(env), naming.worker_log_groups(env)]


class Unavailable(Exception):
    """The endpoint has no such API (e.g. moto has no durable executions)."""


def _unavailable(exc: Exception) -> bool:
    if isinstance(exc, NotImplementedError):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status in (404, 501) and "ResourceNotFound" not in str(error.get("Code"))
    return False


# -- resources ------------------------------------------------------------------------------------


def jobs_table_name(aws: Aws, explicit: str | None) -> str:
    name = (
        explicit
        or os.environ.get(JOBS_TABLE_ENV)
        or aws.stack_outputs("stateful").get(JOBS_TABLE_OUTPUT)
    )
    if not name:
        raise click.ClickException(
            f"cannot find the jobs table: pass --jobs-table or set {JOBS_TABLE_ENV}, or deploy "
            f"{prefix(aws.env)}-stateful (its output {JOBS_TABLE_OUTPUT} names it) at {aws.where}"
        )
    return name


def _functions(aws: Aws, variable: str, prefix: str) -> dict[str, str]:
    raw = os.environ.get(variable)
    if raw:
        try:
            found = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{variable} is not JSON: {exc.msg}") from None
        if not isinstance(found, dict):
            raise click.ClickException(f"{variable} must map workflow -> function")
        return {str(k): str(v) for k, v in found.items()}
    return workflows_in_outputs(aws.stack_outputs("stateless"), prefix=prefix)


def workflow_functions(aws: Aws) -> dict[str, str]:
    """Workflow name -> function, from SLUICE_WORKFLOW_FUNCTIONS or the stateless stack outputs
    (every WorkflowFunction<Name>: the deployed workflows)."""
    return _functions(aws, WORKFLOW_FUNCTIONS_ENV, WORKFLOW_OUTPUT_PREFIX)


def failure_handler_functions(aws: Aws) -> dict[str, str]:
    """Workflow name -> the function of its declared failure handler, from
    SLUICE_FAILURE_HANDLERS or the stateless stack outputs (FailureHandler<Name>)."""
    return _functions(aws, FAILURE_HANDLERS_ENV, FAILURE_HANDLER_OUTPUT_PREFIX)


# -- reading --------------------------------------------------------------------------------------


def job_record(aws: Aws, table: str, job_id: str) -> dict[str, Any] | None:
    """The job's item (by the table's own partition key), tried as given and as execution name."""
    ddb = aws.client("dynamodb")
    try:
        schema = ddb.describe_table(TableName=table)["Table"]["KeySchema"]
    except ClientError as exc:
        if "ResourceNotFound" in str(exc.response.get("Error", {}).get("Code")):
            raise click.ClickException(
                f"jobs table {table} does not exist at {aws.where}: check --env/--jobs-table"
            ) from None
        raise
    key = next(k["AttributeName"] for k in schema if k["KeyType"] == "HASH")
    plain = TypeDeserializer()
    for candidate in dict.fromkeys([job_id, execution_name(job_id)]):
        got = ddb.query(
            TableName=table,
            KeyConditionExpression="#k = :v",
            ExpressionAttributeNames={"#k": key},
            ExpressionAttributeValues={":v": {"S": candidate}},
            ConsistentRead=True,
        ).get("Items", [])
        if got:
            return {k: _jsonable(plain.deserialize(v)) for k, v in got[0].items()}
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def execution_arns(aws: Aws, job_id: str, record: dict[str, Any] | None) -> list[str]:
    """Durable executions of the job: the record's own, and any named after the id per workflow."""
    arns: list[str] = []
    if record and isinstance(record.get("execution_arn"), str):
        arns.append(record["execution_arn"])
    lam = aws.client("lambda")
    for function in workflow_functions(aws).values():
        try:
            found = lam.list_durable_executions_by_function(
                FunctionName=function, DurableExecutionName=execution_name(job_id)
            ).get("DurableExecutions", [])
        except Exception as exc:
            if _unavailable(exc):
                raise Unavailable(str(exc)) from exc
            raise
        arns.extend(e["DurableExecutionArn"] for e in found)
    return list(dict.fromkeys(arns))


def history(lam: Any, arn: str) -> Iterator[dict[str, Any]]:
    pages = lam.get_paginator("get_durable_execution_history").paginate(
        DurableExecutionArn=arn, IncludeExecutionData=False
    )
    for page in pages:
        yield from page.get("Events", [])


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value or "")


def _event_error(event: dict[str, Any]) -> str:
    for key, details in event.items():
        if key.endswith("Details") and isinstance(details, dict) and "Error" in details:
            payload = details["Error"].get("Payload", {})
            return f"{payload.get('ErrorType', '')}: {payload.get('ErrorMessage', '')}".strip(": ")
    return ""


def _event_attempt(event: dict[str, Any]) -> str:
    for key, details in event.items():
        if key.endswith("Details") and isinstance(details, dict) and "RetryDetails" in details:
            return f"attempt {details['RetryDetails'].get('CurrentAttempt', '?')}"
    return ""


# -- command --------------------------------------------------------------------------------------


@click.group()
def jobs() -> None:
    """Follow jobs (one job = one event id)."""


@jobs.command()
@click.argument("job_id")
@click.option("--jobs-table", help=f"Jobs table name (else {JOBS_TABLE_ENV} or the stack output).")
@click.option("--logs", "run_logs", is_flag=True, help="Also run the Logs Insights query.")
@click.option("--since", default=24, show_default=True, help="Logs query window, in hours.")
@click.pass_obj
@friendly_errors
def show(aws: Aws, job_id: str, jobs_table: str | None, run_logs: bool, since: int) -> None:
    """The job record, its durable executions with their steps, and its logs query."""
    table = jobs_table_name(aws, jobs_table)
    record = job_record(aws, table, job_id)
    click.secho(f"job {job_id}", bold=True)
    if record is None:
        click.echo(f"  no record in {table} (not started yet, or expired)")
    else:
        for key in sorted(record):
            value = record[key]
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            click.echo(f"  {key:<16} {text}")

    click.echo("")
    click.secho("durable executions", bold=True)
    try:
        arns = execution_arns(aws, job_id, record)
        if not arns:
            click.echo(f"  none named {execution_name(job_id)}")
        lam = aws.client("lambda")
        for arn in arns:
            _show_execution(lam, arn)
    except Unavailable as exc:
        click.echo(f"  not available at {aws.where}: {exc}")
    except ClientError as exc:
        if not _unavailable(exc):
            raise
        click.echo(f"  not available at {aws.where}: {exc}")

    click.echo("")
    click.secho("logs (CloudWatch Logs Insights, log groups starting with):", bold=True)
    for group in log_group_prefixes(aws.env):
        click.echo(f"  {group}")
    query = LOGS_QUERY.format(id=job_id)
    click.echo("")
    click.echo("\n".join(f"  {line}" for line in query.splitlines()))
    if run_logs:
        click.echo("")
        _run_logs(aws, query, since)


def _show_execution(lam: Any, arn: str) -> None:
    try:
        execution = lam.get_durable_execution(DurableExecutionArn=arn, IncludeExecutionData=False)
    except Exception as exc:
        if _unavailable(exc):
            raise Unavailable(str(exc)) from exc
        raise
    click.echo(f"  {arn}")
    status = execution.get("Status", "?")
    color = {"SUCCEEDED": "green", "FAILED": "red", "TIMED_OUT": "red", "STOPPED": "yellow"}
    click.echo("    status  " + click.style(status, fg=color.get(status)))
    click.echo(f"    started {_when(execution.get('StartTimestamp'))}")
    if execution.get("EndTimestamp"):
        click.echo(f"    ended   {_when(execution.get('EndTimestamp'))}")
    error = execution.get("Error") or {}
    if error:
        click.echo(f"    error   {error.get('ErrorType', '')}: {error.get('ErrorMessage', '')}")
    click.echo("    steps:")
    for event in history(lam, arn):
        extra = "  ".join(x for x in (_event_attempt(event), _event_error(event)) if x)
        click.echo(
            f"      {_when(event.get('EventTimestamp'))}  {event.get('EventType', ''):<22} "
            f"{event.get('Name') or ''}{('  ' + extra) if extra else ''}".rstrip()
        )


def _run_logs(aws: Aws, query: str, since_hours: int) -> None:
    logs = aws.client("logs")
    groups: list[str] = []
    for group_prefix in log_group_prefixes(aws.env):
        pages = logs.get_paginator("describe_log_groups").paginate(logGroupNamePrefix=group_prefix)
        groups.extend(g["logGroupName"] for page in pages for g in page.get("logGroups", []))
    if not groups:
        click.echo(f"no log groups of {prefix(aws.env)} at {aws.where}")
        return
    end = int(time.time())
    query_id = logs.start_query(
        logGroupNames=groups[:50],  # Logs Insights reads at most 50 groups per query
        startTime=end - since_hours * 3600,
        endTime=end,
        queryString=query,
    )["queryId"]
    while True:
        result = logs.get_query_results(queryId=query_id)
        if result.get("status") not in ("Scheduled", "Running"):
            break
        time.sleep(1)
    for row in result.get("results", []):
        fields = {f["field"]: f["value"] for f in row}
        shown = ("@timestamp", "level", "step", "outcome", "message")
        click.echo("  " + "  ".join(fields[k] for k in shown if fields.get(k)))
    click.echo(f"  ({len(result.get('results', []))} line(s), status {result.get('status')})")
