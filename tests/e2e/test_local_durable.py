"""The local Lambda durable API (devtools/durable_lambda.py): what the worker, tasks process and CLI call."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.session
import pytest
from aws_durable_execution_sdk_python import DurableContext, durable_execution
from botocore.exceptions import ClientError

from devtools.durable_lambda import DurableService, alias_arn, serve

REGION = "us-east-1"


@durable_execution
def greet(event: Any, ctx: DurableContext) -> dict[str, Any]:
    shout = ctx.step(lambda _: event["name"].upper(), name="shout")
    return {"hello": shout}


@pytest.fixture(scope="module")
def lam() -> Iterator[Any]:
    service = DurableService({"greet": greet}, {})
    server = serve(service)
    client = boto3.client(
        "lambda",
        region_name=REGION,
        endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
    )
    yield client
    server.shutdown()
    service.close()


def start(lam: Any, name: str, payload: dict[str, Any], function: str = "greet") -> Any:
    return lam.invoke(
        FunctionName=alias_arn(REGION, function),
        InvocationType="Event",
        DurableExecutionName=name,
        Payload=json.dumps(payload).encode(),
    )


def wait_done(lam: Any, arn: str) -> dict[str, Any]:
    for _ in range(100):
        got = lam.get_durable_execution(DurableExecutionArn=arn)
        if got["Status"] != "RUNNING":
            return got
        time.sleep(0.05)
    raise TimeoutError(arn)


def test_invoke_starts_an_execution_that_runs_the_real_handler(lam) -> None:
    answer = start(lam, "e-1", {"name": "ada"})
    assert answer["StatusCode"] == 202
    arn = answer["ResponseMetadata"]["HTTPHeaders"]["x-amz-durable-execution-arn"]
    done = wait_done(lam, arn)
    assert done["Status"] == "SUCCEEDED"
    assert json.loads(
        lam.get_durable_execution(DurableExecutionArn=arn, IncludeExecutionData=True)["Result"]
    ) == {"hello": "ADA"}


def test_the_same_name_and_payload_returns_the_same_execution(lam) -> None:
    first = start(lam, "e-2", {"name": "bo"})["ResponseMetadata"]["HTTPHeaders"]
    again = start(lam, "e-2", {"name": "bo"})["ResponseMetadata"]["HTTPHeaders"]
    assert first["x-amz-durable-execution-arn"] == again["x-amz-durable-execution-arn"]
    listed = lam.list_durable_executions_by_function(
        FunctionName="greet", DurableExecutionName="e-2"
    )
    assert len(listed["DurableExecutions"]) == 1


def test_the_same_name_with_another_payload_is_a_conflict(lam) -> None:
    start(lam, "e-3", {"name": "cy"})
    with pytest.raises(ClientError) as caught:
        start(lam, "e-3", {"name": "other"})
    assert caught.value.response["Error"]["Code"] == "DurableExecutionAlreadyStartedException"


def test_an_unknown_function_is_not_found(lam) -> None:
    with pytest.raises(ClientError) as caught:
        start(lam, "e-4", {"name": "x"}, function="nosuch")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_history_lists_the_steps(lam) -> None:
    arn = start(lam, "e-5", {"name": "di"})["ResponseMetadata"]["HTTPHeaders"][
        "x-amz-durable-execution-arn"
    ]
    wait_done(lam, arn)
    events = lam.get_durable_execution_history(DurableExecutionArn=arn)["Events"]
    assert ("StepSucceeded", "shout") in [(e["EventType"], e.get("Name")) for e in events]


def test_errors_carry_the_type_botocores_model_names(lam) -> None:
    # botocore's Lambda model lists ResourceNotFoundException among GetDurableExecution's errors;
    # the runner named it only in its body, so botocore raised a bare "404" error instead.

    model = botocore.session.get_session().get_service_model("lambda")
    declared = {e.name for e in model.operation_model("GetDurableExecution").error_shapes}
    assert "ResourceNotFoundException" in declared
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_durable_execution(
            DurableExecutionArn=f"{alias_arn(REGION, 'greet')}/durable-execution/none/x"
        )
