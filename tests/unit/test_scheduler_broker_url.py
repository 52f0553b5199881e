"""The scheduler's broker URL on AWS: the endpoint with the credentials of the secret it is given."""

from __future__ import annotations

import json

import boto3
from botocore.stub import Stubber

from sluice.scheduling.names import SCHEDULER_USER
from sluice.settings import SchedulerSettings
from worker.scheduler.runner import broker_url

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:scheduler-AbCdEf"
ENDPOINT = "amqps://b-1234.mq.eu-west-1.amazonaws.com:5671"


def test_it_connects_as_the_user_its_secret_names():
    client = boto3.client("secretsmanager", region_name="eu-west-1")
    secret = json.dumps({"username": SCHEDULER_USER, "password": "Abc123"})
    with Stubber(client) as stub:  # the request checked against Secrets Manager's model
        stub.add_response(
            "get_secret_value",
            {"ARN": ARN, "Name": "scheduler", "SecretString": secret},
            {"SecretId": ARN},
        )
        url = broker_url(
            SchedulerSettings.of(broker_endpoint=ENDPOINT, broker_secret_arn=ARN), secrets=client
        )
    assert url == "amqps://sluice-scheduler:Abc123@b-1234.mq.eu-west-1.amazonaws.com:5671"


def test_no_broker_without_both_settings_and_an_explicit_url_wins():
    assert broker_url(SchedulerSettings.of(broker_endpoint=ENDPOINT)) is None
    assert (
        broker_url(SchedulerSettings.of(broker_url="amqp://u:p@127.0.0.1:5672/%2F"))
        == "amqp://u:p@127.0.0.1:5672/%2F"
    )
