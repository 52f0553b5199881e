"""Step handlers run against moto: the media bucket, jobs table, topics and events queue."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devtools.local.resources import create_coordination_table as create_table
from lambdas.common.runtime import clients
from sluice.settings import LambdaSettings

# The Lambdas' variables, by setting (sluice.settings.LambdaSettings).
LAMBDA_VARS = LambdaSettings.variables()

REGION = "eu-west-1"
COORDINATION_TABLE = "sluice-test-coordination"


def create_coordination_table(ddb: Any, name: str = COORDINATION_TABLE) -> None:
    """The coordination table as stacks/coordination.py makes it (and `make local` does)."""
    create_table(ddb, name)


class Atomic:
    """A client whose requests run one at a time. DynamoDB applies each request (a transaction
    too) atomically; moto, in process, does not under threads (a failed transaction even restores
    the table from a copy taken when it began), so tests that race threads call it through this."""

    _lock = threading.Lock()

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            with Atomic._lock:
                return method(*args, **kwargs)

        return call


@dataclass
class Aws:
    """The resources a workflow's steps touch, as the stack names them in their environment."""

    s3: Any
    ddb: Any
    sns: Any
    sqs: Any
    transcribe: Any
    bucket: str
    table: str
    topic_arn: str
    queue_url: str
    inbox_url: str  # an SQS queue subscribed to the notifications topic, to read what was sent
    coordination: str = COORDINATION_TABLE  # concurrency slots and fan-in joins (pk, sk)

    def put_audio(self, key: str, body: bytes, content_type: str = "audio/wav") -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)

    def notifications(self) -> list[dict[str, Any]]:
        import json

        out = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.inbox_url, MaxNumberOfMessages=10)
            msgs = got.get("Messages", [])
            if not msgs:
                return out
            for m in msgs:
                out.append(json.loads(json.loads(m["Body"])["Message"]))
                self.sqs.delete_message(QueueUrl=self.inbox_url, ReceiptHandle=m["ReceiptHandle"])

    def events(self) -> list[dict[str, Any]]:
        import json

        got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
        return [json.loads(m["Body"]) for m in got.get("Messages", [])]

    def job(self, job_id: str) -> dict[str, Any] | None:
        from lambdas.common.aws import jobs

        return jobs().get(job_id)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    with mock_aws():
        clients.reset()
        s3 = boto3.client("s3", region_name=REGION)
        ddb = boto3.client("dynamodb", region_name=REGION)
        sns = boto3.client("sns", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        bucket, table = "sluice-test-media", "sluice-test-jobs"
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        ddb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        create_coordination_table(ddb)
        topic_arn = sns.create_topic(Name="sluice-test-notifications")["TopicArn"]
        queue_url = sqs.create_queue(QueueName="sluice-test-events")["QueueUrl"]
        inbox_url = sqs.create_queue(QueueName="sluice-test-inbox")["QueueUrl"]
        inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=inbox_arn)
        for name, value in {
            LAMBDA_VARS["media_bucket"]: bucket,
            LAMBDA_VARS["jobs_table"]: table,
            "SLUICE_COORDINATION_TABLE": COORDINATION_TABLE,
            LAMBDA_VARS["notifications_topic"]: topic_arn,
            LAMBDA_VARS["events_queue_url"]: queue_url,
            LAMBDA_VARS["max_audio_seconds"]: "600",
            LAMBDA_VARS["transcribe_language"]: "en-US",
            "POWERTOOLS_METRICS_NAMESPACE": "SluiceTest",
        }.items():
            monkeypatch.setenv(name, value)
        yield Aws(
            s3=s3,
            ddb=ddb,
            sns=sns,
            sqs=sqs,
            transcribe=boto3.client("transcribe", region_name=REGION),
            bucket=bucket,
            table=table,
            topic_arn=topic_arn,
            queue_url=queue_url,
            inbox_url=inbox_url,
        )
        clients.reset()


def transcribe_json(words: list[tuple[str, float, float]], *, job: str = "sluice-job") -> dict:
    """A transcript as Amazon Transcribe writes it (punctuation items have no times)."""
    items = []
    for text, start, end in words:
        if text in {".", ",", "?", "!"}:
            items.append(
                {"type": "punctuation", "alternatives": [{"confidence": "0.0", "content": text}]}
            )
        else:
            items.append(
                {
                    "type": "pronunciation",
                    "start_time": f"{start:.3f}",
                    "end_time": f"{end:.3f}",
                    "alternatives": [{"confidence": "0.99", "content": text}],
                }
            )
    transcript = " ".join(w for w, _, _ in words)
    return {
        "jobName": job,
        "accountId": "123456789012",
        "status": "COMPLETED",
        "results": {"transcripts": [{"transcript": transcript}], "items": items},
    }


SERMON = [
    ("Grace", 0.0, 0.4),
    ("and", 0.45, 0.6),
    ("peace", 0.65, 1.0),
    ("to", 1.05, 1.2),
    ("you", 1.25, 1.5),
    (".", 0, 0),
    ("Today", 4.0, 4.4),
    ("we", 4.45, 4.6),
    ("read", 4.65, 4.9),
    ("from", 4.95, 5.1),
    ("Psalm", 5.15, 5.5),
    ("twenty", 5.55, 5.9),
    ("three", 5.95, 6.3),
    (".", 0, 0),
]


@dataclass
class FakeLambdaContext:
    function_name: str = "sluice-test-step"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = (
        "arn:aws:lambda:eu-west-1:123456789012:function:sluice-test-step:live"
    )
    aws_request_id: str = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()
