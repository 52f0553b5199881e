"""The AWS resources of a local run, created in moto as the stacks create them in AWS.

Names come from `sluice.naming` (environment `local`), settings from the stacks' configuration
(`stacks.config`: dev's values, with the overrides below); nothing here invents its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from devtools.durable_lambda import ACCOUNT
from devtools.moto_server import moto_server
from sluice import catalog, naming
from sluice.settings import LambdaSettings
from sluice.workflows import Throttle
from stacks import config as stack_config

_DEV = stack_config.load("dev")
# dev's configuration under the name `local`, except what would make a local run slow: sqsd
# retries a failed message after 2 s (not 30) with 4 connections (a 2-core machine, not 10).
CONFIG = stack_config.replace(
    _DEV,
    name="local",
    worker={**_DEV.worker.model_dump(), "error_visibility_timeout_s": 2, "http_connections": 4},
)
# Throttles a local run applies in place of the declared ones (the worker's SLUICE_THROTTLES):
# deliver_webhook's 60 a minute per customer would hold an event only after 60 of one customer,
# for up to a minute. Locally it holds a customer's fourth delivery within 5 s and starts it in
# the next window; the key stays the declared one (tests/e2e/test_local_cli.py imports this).
THROTTLES: dict[str, Throttle] = {}
_webhooks = catalog.FLOWS["deliver_webhook"].throttle
if _webhooks is not None:
    THROTTLES["deliver_webhook"] = _webhooks.model_copy(update={"limit": 3, "period_s": 5})
# A concurrency slot's holder is asked whether it still runs once it is this old (the stacks
# keep LambdaSettings' 60 s): a run stopped while it held a slot gives it up 5 s later locally.
SLOT_CHECK_AFTER_S = 5
ENV = CONFIG.name
REGION = CONFIG.region
BUCKET = naming.media_bucket(ENV, ACCOUNT, REGION)
TABLE = naming.jobs_table(ENV)
TOPIC = naming.notifications_topic(ENV)


@contextmanager
def local_aws() -> Iterator[str]:
    """moto's server as a local run serves AWS: its URL while the block runs. One DynamoDB
    request at a time, as DynamoDB applies each atomically: the runs racing for concurrency
    slots and the worker's flow control decide by conditional writes and transactions, which
    moto otherwise interleaves (a slot given back during another run's transaction came back to
    its finished holder, and a local burst stalled for good: tests/e2e/test_local_resources.py)."""
    with moto_server(atomic=True) as url:
        yield url


@dataclass
class Resources:
    """What the stacks would create, created in moto, named as the stacks name them."""

    endpoint: str
    bucket: str
    table: str
    topic_arn: str
    urls: dict[str, str]

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=REGION, endpoint_url=self.endpoint)

    def lambda_env(self) -> dict[str, str]:
        """The environment of the workflows and step handlers (stacks/workflows.py sets it)."""
        return {
            **LambdaSettings.render(
                media_bucket=self.bucket,
                jobs_table=self.table,
                coordination_table=naming.coordination_table(ENV),
                notifications_topic=self.topic_arn,
                events_queue_url=self.urls["events"],
                tasks_queue_url=self.urls["tasks"],
                max_audio_seconds=CONFIG.workflows.max_audio_seconds,
                transcribe_language="en-US",
                slot_check_after_s=SLOT_CHECK_AFTER_S,
            ),
            "POWERTOOLS_METRICS_NAMESPACE": "SluiceLocal",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }


def create_queues(sqs: Any) -> dict[str, str]:
    """The events and tasks queues with their DLQs and redrive policies: queue (or
    `<queue>-dlq`) -> URL."""
    urls: dict[str, str] = {}
    for queue, settings in (("events", CONFIG.events_queue), ("tasks", CONFIG.tasks_queue)):
        dlq = sqs.create_queue(
            QueueName=naming.queue_name(ENV, queue, dlq=True),
            Attributes={"MessageRetentionPeriod": str(settings.dlq_retention_s)},
        )["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        urls[f"{queue}-dlq"] = dlq
        urls[queue] = sqs.create_queue(
            QueueName=naming.queue_name(ENV, queue),
            Attributes={
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": arn, "maxReceiveCount": settings.max_receive_count}
                ),
                "VisibilityTimeout": str(settings.visibility_timeout_s),
                "MessageRetentionPeriod": str(settings.retention_s),
            },
        )["QueueUrl"]
    return urls


def create_resources(endpoint: str) -> Resources:
    import boto3

    def client(service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=endpoint)

    sqs, s3, ddb, sns = client("sqs"), client("s3"), client("dynamodb"), client("sns")
    urls = create_queues(sqs)
    location = {} if REGION == "us-east-1" else {"LocationConstraint": REGION}
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration=location)
    events_arn = sqs.get_queue_attributes(QueueUrl=urls["events"], AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    # As in AWS: an upload under uploads/ notifies the events queue, and that starts the job.
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": events_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {
                        "Key": {
                            "FilterRules": [{"Name": "prefix", "Value": catalog.UPLOADS_PREFIX}]
                        }
                    },
                }
            ]
        },
    )
    ddb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    create_coordination_table(ddb, naming.coordination_table(ENV))
    topic = sns.create_topic(Name=TOPIC)["TopicArn"]
    return Resources(endpoint, BUCKET, TABLE, topic, urls)


def create_coordination_table(ddb: Any, name: str) -> None:
    """The coordination table (concurrency slots, fan-in joins) as stacks/coordination.py makes
    it: string partition and sort keys."""
    ddb.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
