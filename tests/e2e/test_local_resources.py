"""`make local`'s AWS resources are the stacks': named by sluice.naming, set from stacks.config."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import boto3
import requests
from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend

from adapters.slots import COUNTER, Slots, scope
from devtools.local import resources
from devtools.local.resources import CONFIG, ENV, REGION, create_queues, create_resources, local_aws
from lambdas.workflows.deliver_webhook.handler import WORKFLOW
from sluice import naming
from stacks import config


def test_the_local_environment_is_devs_configuration_under_its_own_name():
    dev = config.load("dev")
    assert ("local", dev.region) == (ENV, REGION)
    assert CONFIG.events_queue == dev.events_queue and CONFIG.tasks_queue == dev.tasks_queue
    assert CONFIG.workflows == dev.workflows
    assert naming.media_bucket("local", "123456789012", dev.region) == resources.BUCKET


def test_the_queues_have_the_stacks_names_redrive_and_visibility():
    with mock_aws():
        sqs = boto3.client("sqs", region_name=REGION)
        urls = create_queues(sqs)
        for queue, settings in (("events", CONFIG.events_queue), ("tasks", CONFIG.tasks_queue)):
            assert urls[queue].endswith("/" + naming.queue_name("local", queue))
            assert urls[f"{queue}-dlq"].endswith("/" + naming.queue_name("local", queue, dlq=True))
            attrs = sqs.get_queue_attributes(QueueUrl=urls[queue], AttributeNames=["All"])[
                "Attributes"
            ]
            assert json.loads(attrs["RedrivePolicy"])["maxReceiveCount"] == (
                settings.max_receive_count
            )
            assert int(attrs["VisibilityTimeout"]) == settings.visibility_timeout_s


def fresh(url: str) -> str:
    """`url`, its moto emptied: moto's backends are per Python process, not per server."""
    requests.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
    return url


def test_a_slot_given_back_while_a_racing_acquire_is_decided_stays_given_back(monkeypatch):
    """The local webhook burst that stalled at 45 of 50 deliveries: a slot released while
    another run's acquiring transaction was being decided came back to its finished holder
    (moto applies concurrent requests without DynamoDB's per-request atomicity, and a failed
    transaction restores the table from a copy taken when it began). Locally nothing can say
    that holder is gone, so its customer's queue waited for good. DynamoDB decides each request
    on its own (botocore's DynamoDB model, TransactWriteItems: "The actions are completed
    atomically so that either all of them succeed, or all of them fail"), and so must the
    local endpoint."""
    # Given a local run's AWS, a customer's slot (limit 2) held by one run and a second queued
    with local_aws() as url:
        create_resources(fresh(url))
        ddb = boto3.client("dynamodb", region_name=REGION, endpoint_url=url)
        slots = Slots(ddb, naming.coordination_table(ENV))
        key = scope(WORKFLOW, "c0")
        held: dict[str, Any] = dict(arn="arn:holder", arrival_ms=1, limit=2, lease_s=3600)
        slots.enqueue(key, "holder", arn="arn:holder", arrival_ms=1)
        assert slots.try_acquire(key, "holder", is_running=lambda _: True, **held)
        slots.enqueue(key, "next", arn="arn:next", arrival_ms=2)
        # When the holder gives its slot back while the second run's transaction is decided
        deciding, released, once = threading.Event(), threading.Event(), threading.Lock()
        in_transaction = threading.local()
        transact, get_item = DynamoDBBackend.transact_write_items, DynamoDBBackend.get_item

        def transaction(self: Any, items: Any) -> Any:
            in_transaction.on = True
            try:
                return transact(self, items)
            finally:
                in_transaction.on = False

        def read(self: Any, table: str, item_key: Any, *args: Any, **kwargs: Any) -> Any:
            counter = item_key.get("sk") == {"S": COUNTER}
            # The first transaction's read of the counter: let the release in meanwhile.
            if getattr(in_transaction, "on", False) and counter and once.acquire(blocking=False):
                deciding.set()
                released.wait(2)
            return get_item(self, table, item_key, *args, **kwargs)

        monkeypatch.setattr(DynamoDBBackend, "transact_write_items", transaction)
        monkeypatch.setattr(DynamoDBBackend, "get_item", read)
        took: list[bool] = []
        acquire = threading.Thread(
            target=lambda: took.append(
                slots.try_acquire(
                    key,
                    "next",
                    **{**held, "arn": "arn:next", "arrival_ms": 2},
                    is_running=lambda _: True,
                )
            )
        )
        acquire.start()
        assert deciding.wait(10)
        release = threading.Thread(
            target=lambda: (slots.release(key, "holder", arrival_ms=1), released.set())
        )
        release.start()
        acquire.join(30)
        release.join(30)
        # Then the second run holds the slot, and the finished one holds none
        assert took == [True]
        assert set(slots.holders(key)[0]) == {"next"}


def test_an_sqs_long_poll_holds_up_no_other_request():
    """sqsd, the tasks process and the scheduler long-poll their queues; served one request at a
    time, each poll held every DynamoDB call behind it for its whole wait (a local burst then
    crawled: 23 of 50 deliveries in a minute)."""
    # Given a local run's AWS and a long poll of an empty queue under way
    with local_aws() as url:
        urls = create_resources(fresh(url)).urls
        sqs = boto3.client("sqs", region_name=REGION, endpoint_url=url)
        ddb = boto3.client("dynamodb", region_name=REGION, endpoint_url=url)
        poll = threading.Thread(
            target=lambda: sqs.receive_message(QueueUrl=urls["tasks"], WaitTimeSeconds=3)
        )
        poll.start()
        time.sleep(0.5)
        # When a run reads the coordination table meanwhile
        began = time.monotonic()
        ddb.describe_table(TableName=naming.coordination_table(ENV))
        took = time.monotonic() - began
        poll.join(10)
    # Then it is answered at once, not after the poll's wait
    assert took < 1.5
