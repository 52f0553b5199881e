"""`make local`'s AWS resources are the stacks': named by sluice.naming, set from stacks.config."""

from __future__ import annotations

import json

import boto3
from moto import mock_aws

from devtools.local import resources
from devtools.local.resources import CONFIG, ENV, REGION, create_queues
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
