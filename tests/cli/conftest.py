"""The `sluice` CLI under test: click's CliRunner against moto (in-process) with Sluice's queues."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from click.testing import CliRunner, Result
from moto import mock_aws

from sluice_cli import cli

ENV = "test"
REGION = "eu-west-1"
JOBS_TABLE = "Sluice-test-jobs"


@dataclass
class Sqs:
    client: Any
    urls: dict[str, str]

    def send(self, queue: str, body: str, **attributes: str) -> None:
        self.client.send_message(
            QueueUrl=self.urls[queue],
            MessageBody=body,
            MessageAttributes={
                k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()
            },
        )

    def drain(self, queue: str) -> list[dict[str, Any]]:
        """Every message now visible on `queue`, received and deleted."""
        out: list[dict[str, Any]] = []
        while True:
            got = self.client.receive_message(
                QueueUrl=self.urls[queue],
                MaxNumberOfMessages=10,
                MessageAttributeNames=["All"],
                AttributeNames=["All"],
                VisibilityTimeout=60,
            ).get("Messages", [])
            if not got:
                return out
            for m in got:
                self.client.delete_message(
                    QueueUrl=self.urls[queue], ReceiptHandle=m["ReceiptHandle"]
                )
            out.extend(got)

    def count(self, queue: str) -> int:
        """Messages on `queue`, visible or not."""
        attrs = self.client.get_queue_attributes(
            QueueUrl=self.urls[queue],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )

    def visible(self, queue: str) -> int:
        attrs = self.client.get_queue_attributes(
            QueueUrl=self.urls[queue], AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"])


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def sqs(aws: None) -> Sqs:
    """Sluice-test-{events,tasks} and their DLQs, wired by redrive policies as the stack does."""
    client = boto3.client("sqs", region_name=REGION)
    urls: dict[str, str] = {}
    for queue in ("events", "tasks"):
        dlq = client.create_queue(QueueName=f"Sluice-{ENV}-{queue}-dlq")["QueueUrl"]
        dlq_arn = client.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        urls[f"{queue}-dlq"] = dlq
        urls[queue] = client.create_queue(
            QueueName=f"Sluice-{ENV}-{queue}",
            Attributes={
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5})
            },
        )["QueueUrl"]
    return Sqs(client, urls)


@pytest.fixture
def jobs_table(aws: None) -> Any:
    ddb = boto3.client("dynamodb", region_name=REGION)
    ddb.create_table(
        TableName=JOBS_TABLE,
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return ddb


@pytest.fixture
def run() -> Any:
    """Run `sluice --env test --region eu-west-1 ARGS…`; returns click's Result."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: str = ENV) -> Result:
        return runner.invoke(
            cli, ["--env", env, "--region", REGION, *args], input=input, catch_exceptions=False
        )

    return invoke
