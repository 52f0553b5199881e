"""The adapters against moto: a jobs table, a bucket, a topic with a queue subscribed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

REGION = "eu-west-1"


@dataclass
class Aws:
    s3: Any
    ddb: Any
    sns: Any
    sqs: Any
    bucket: str
    table: str
    topic_arn: str
    inbox_url: str


@pytest.fixture
def aws() -> Iterator[Aws]:
    with mock_aws():
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
        topic_arn = sns.create_topic(Name="sluice-test-notifications")["TopicArn"]
        inbox_url = sqs.create_queue(QueueName="sluice-test-inbox")["QueueUrl"]
        inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=inbox_arn)
        yield Aws(s3, ddb, sns, sqs, bucket, table, topic_arn, inbox_url)
