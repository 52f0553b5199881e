"""The durable side of concurrency limits: what a run must hold, and Lambda's word on a holder."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from adapters.slots import scope
from lambdas.common.concurrency import execution_is_running, plan, poll_delay_s
from sluice.workflows import MISSING_KEY, key_value

ARN = "arn:aws:lambda:eu-west-1:123456789012:function:wf:1/durable-execution/run-1/abc"
EVENT = {"id": "e1", "name": "media/x", "data": {"customer_id": 42, "empty": ""}}


def test_a_key_is_read_at_its_dotted_path_and_a_missing_one_is_one_shared_key():
    assert key_value(EVENT, "data.customer_id") == "42"
    assert key_value(EVENT, "data.nope") == MISSING_KEY
    assert key_value(EVENT, "data.empty") == MISSING_KEY
    assert key_value(EVENT, "data.customer_id.deeper") == MISSING_KEY


def test_the_key_slot_is_taken_before_the_workflow_slot():
    assert plan("wf", EVENT, limit=5, key="data.customer_id", key_limit=1) == [
        (scope("wf", "42"), 1),
        (scope("wf"), 5),
    ]
    assert plan("wf", EVENT, limit=5) == [(scope("wf"), 5)]
    assert plan("wf", EVENT) == []


def test_polls_back_off_from_2_to_30_seconds():
    assert [poll_delay_s(n) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize(
    ("status", "running"),
    [
        ("RUNNING", True),
        ("PAUSED", True),
        ("SUCCEEDED", False),
        ("FAILED", False),
        ("TIMED_OUT", False),
        ("STOPPED", False),
    ],
)
def test_a_holder_runs_while_lambda_says_its_execution_runs(status, running):
    client = boto3.client("lambda", region_name="eu-west-1")
    with Stubber(client) as stub:  # checked against botocore's model of GetDurableExecution
        stub.add_response(
            "get_durable_execution",
            {
                "DurableExecutionArn": ARN,
                "DurableExecutionName": "run-1",
                "FunctionArn": "arn:aws:lambda:eu-west-1:123456789012:function:wf:1",
                "Status": status,
                "StartTimestamp": "2026-12-01T00:00:00Z",
            },
            {"DurableExecutionArn": ARN},
        )
        assert execution_is_running(client)(ARN) is running


@pytest.mark.parametrize(
    ("code", "running"),
    [
        ("ResourceNotFoundException", False),
        ("TooManyRequestsException", True),
        ("AccessDeniedException", True),
    ],
)
def test_an_execution_lambda_does_not_know_is_gone_and_an_unsure_answer_keeps_the_slot(
    code, running
):
    client = boto3.client("lambda", region_name="eu-west-1")
    with Stubber(client) as stub:
        stub.add_client_error("get_durable_execution", service_error_code=code)
        assert execution_is_running(client)(ARN) is running
