"""The Custom::BrokerUser handler end to end: CloudFormation's request event in, the secrets from
Secrets Manager (moto), the user made on a real RabbitMQ node, and the response document PUT to
the event's ResponseURL (a loopback server standing in for CloudFormation's presigned S3 URL)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pika
import pika.exceptions
import pytest
from moto import mock_aws

from adapters.rabbitmq_management import Management
from devtools.rabbitmq import RabbitNode
from lambdas.provisioning.broker_user import handler as cr
from sluice.scheduling.names import SCHEDULER_PERMISSIONS, SCHEDULER_TAGS, SCHEDULER_VHOST

STACK_ID = "arn:aws:cloudformation:eu-west-1:123456789012:stack/Sluice-staging-stateless/1f2e"
RESPONSE_KEYS = {
    "Status",
    "Reason",
    "PhysicalResourceId",
    "StackId",
    "RequestId",
    "LogicalResourceId",
    "Data",
}


@dataclass
class Responses:
    """What CloudFormation's ResponseURL received: (path, headers, body) per PUT."""

    url: str
    received: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)

    def only(self) -> tuple[dict[str, str], dict[str, Any]]:
        (found,) = self.received
        self.received.clear()
        return found[1], found[2]


@pytest.fixture
def responses() -> Iterator[Responses]:
    got = Responses("")

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.received.append((self.path, dict(self.headers), json.loads(body)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # Shaped like CloudFormation's presigned S3 URL: the query string must reach the server.
    got.url = f"http://127.0.0.1:{server.server_port}/cfn-response?X-Amz-Signature=abc"
    yield got
    server.shutdown()
    server.server_close()


@dataclass
class Secrets:
    client: Any
    admin_arn: str
    user_arn: str
    user: str

    def set_user_password(self, password: str) -> None:
        value = json.dumps({"username": self.user, "password": password})
        self.client.put_secret_value(SecretId=self.user_arn, SecretString=value)

    def set_admin_password(self, password: str) -> None:
        value = json.dumps({"username": "guest", "password": password})
        self.client.put_secret_value(SecretId=self.admin_arn, SecretString=value)


@pytest.fixture
def secrets(rabbit: RabbitNode) -> Iterator[Secrets]:
    """The admin secret (the node's guest) and the scheduler user's secret, in moto."""
    user = f"sluice-scheduler-{uuid.uuid4().hex[:8]}"
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="eu-west-1")
        admin = client.create_secret(
            Name="admin", SecretString=json.dumps({"username": "guest", "password": "guest"})
        )
        scheduler = client.create_secret(
            Name="scheduler", SecretString=json.dumps({"username": user, "password": "first"})
        )
        yield Secrets(client, admin["ARN"], scheduler["ARN"], user)
    Management(rabbit.management_url, "guest", "guest").delete_user(user)


def event(
    kind: str, rabbit: RabbitNode, secrets: Secrets, responses: Responses, **extra: Any
) -> dict[str, Any]:
    """A CloudFormation request as the stack's custom resource sends it (properties as strings)."""
    return {
        "RequestType": kind,
        "ServiceToken": "arn:aws:lambda:eu-west-1:123456789012:function:provisioner",
        "ResponseURL": responses.url,
        "StackId": STACK_ID,
        "RequestId": f"req-{uuid.uuid4()}",
        "LogicalResourceId": "BrokerUserSchedulerUser1A2B3C4D",
        "ResourceType": "Custom::BrokerUser",
        "ResourceProperties": {
            "ServiceToken": "arn:aws:lambda:eu-west-1:123456789012:function:provisioner",
            "ManagementUrl": rabbit.management_url,
            "AdminSecretArn": secrets.admin_arn,
            "UserSecretArn": secrets.user_arn,
            "Vhost": SCHEDULER_VHOST,
            "Tags": SCHEDULER_TAGS,
            "Configure": SCHEDULER_PERMISSIONS.configure,
            "Write": SCHEDULER_PERMISSIONS.write,
            "Read": SCHEDULER_PERMISSIONS.read,
        },
        **extra,
    }


class Context:
    log_stream_name = "2026/01/01/[$LATEST]0123abcd"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


def can_log_in(rabbit: RabbitNode, user: str, password: str) -> bool:
    url = f"amqp://{user}:{password}@127.0.0.1:{rabbit.port}/%2F"
    try:
        pika.BlockingConnection(pika.URLParameters(url)).close()
    except pika.exceptions.ProbableAuthenticationError:
        return False
    return True


def assert_response(body: dict, request: dict, status: str, physical_id: str) -> None:
    assert set(body) == RESPONSE_KEYS
    assert body["Status"] == status
    assert body["PhysicalResourceId"] == physical_id
    assert (body["StackId"], body["RequestId"], body["LogicalResourceId"]) == (
        request["StackId"],
        request["RequestId"],
        request["LogicalResourceId"],
    )
    assert isinstance(body["Reason"], str) and body["Reason"]


def test_create_update_delete(rabbit, secrets, responses):
    # Create: the user exists with the secret's password; the response names it
    create = event("Create", rabbit, secrets, responses)
    cr.handler(create, Context())
    headers, body = responses.only()
    assert_response(body, create, "SUCCESS", secrets.user)
    assert body["Data"] == {"Username": secrets.user}
    # CloudFormation's presigned URL is signed for an empty content type
    assert headers.get("Content-Type", headers.get("Content-type")) == ""
    assert "first" not in json.dumps(body)
    assert can_log_in(rabbit, secrets.user, "first")

    # Update (the password rotated in the secret): same user, same physical id, new password
    secrets.set_user_password("second")
    update = event(
        "Update",
        rabbit,
        secrets,
        responses,
        PhysicalResourceId=secrets.user,
        OldResourceProperties=create["ResourceProperties"],
    )
    cr.handler(update, Context())
    _, body = responses.only()
    assert_response(body, update, "SUCCESS", secrets.user)
    assert not can_log_in(rabbit, secrets.user, "first")
    assert can_log_in(rabbit, secrets.user, "second")

    # Delete: the user is gone; deleting again (a retried Delete) still succeeds
    for _ in range(2):
        delete = event("Delete", rabbit, secrets, responses, PhysicalResourceId=secrets.user)
        cr.handler(delete, Context())
        _, body = responses.only()
        assert_response(body, delete, "SUCCESS", secrets.user)
        assert not can_log_in(rabbit, secrets.user, "second")


def test_a_failed_create_says_why_and_its_rollback_still_succeeds(rabbit, secrets, responses):
    # Given an admin secret that no longer matches the broker
    secrets.set_admin_password("wrong-admin-password")
    create = event("Create", rabbit, secrets, responses)
    cr.handler(create, Context())
    _, body = responses.only()
    # Then CloudFormation learns it failed, and why, without any password
    assert_response(body, create, "FAILED", cr.CREATE_FAILED)
    assert "401" in body["Reason"] and "/api/users/" in body["Reason"]
    assert Context.log_stream_name in body["Reason"]
    assert "wrong-admin-password" not in json.dumps(body) and "first" not in json.dumps(body)
    assert not can_log_in(rabbit, secrets.user, "first")
    # And the rollback's Delete succeeds although the broker still refuses the admin
    delete = event("Delete", rabbit, secrets, responses, PhysicalResourceId=cr.CREATE_FAILED)
    cr.handler(delete, Context())
    _, body = responses.only()
    assert_response(body, delete, "SUCCESS", cr.CREATE_FAILED)


def test_the_rollback_of_a_half_made_user_removes_it(rabbit, secrets, responses):
    # Given a Create whose user is made but whose permissions fail (no such vhost)
    create = event("Create", rabbit, secrets, responses)
    create["ResourceProperties"]["Vhost"] = "no-such-vhost"
    cr.handler(create, Context())
    _, body = responses.only()
    assert_response(body, create, "FAILED", cr.CREATE_FAILED)
    assert "/api/permissions/no-such-vhost/" in body["Reason"]
    admin = Management(rabbit.management_url, "guest", "guest")
    # When CloudFormation rolls back, the user is gone
    delete = event("Delete", rabbit, secrets, responses, PhysicalResourceId=cr.CREATE_FAILED)
    cr.handler(delete, Context())
    _, body = responses.only()
    assert_response(body, delete, "SUCCESS", cr.CREATE_FAILED)
    assert admin.delete_user(secrets.user) is False  # nothing left to delete


def test_a_failed_update_keeps_the_physical_id(rabbit, secrets, responses):
    create = event("Create", rabbit, secrets, responses)
    cr.handler(create, Context())
    responses.only()
    update = event("Update", rabbit, secrets, responses, PhysicalResourceId=secrets.user)
    update["ResourceProperties"]["ManagementUrl"] = "http://127.0.0.1:9"  # nothing listens
    cr.handler(update, Context())
    _, body = responses.only()
    # a new physical id would make CloudFormation delete the user that still works
    assert_response(body, update, "FAILED", secrets.user)
    assert "cannot reach" in body["Reason"]
    assert can_log_in(rabbit, secrets.user, "first")


def test_a_missing_property_fails_clearly(rabbit, secrets, responses):
    create = event("Create", rabbit, secrets, responses)
    del create["ResourceProperties"]["Vhost"]
    cr.handler(create, Context())
    _, body = responses.only()
    assert_response(body, create, "FAILED", cr.CREATE_FAILED)
    assert "Vhost" in body["Reason"]


def test_the_response_is_sent_even_when_the_secret_cannot_be_read(rabbit, secrets, responses):
    create = event("Create", rabbit, secrets, responses)
    create["ResourceProperties"]["AdminSecretArn"] = secrets.admin_arn.replace("admin", "gone")
    cr.handler(create, Context())
    _, body = responses.only()
    assert_response(body, create, "FAILED", cr.CREATE_FAILED)
    assert "ResourceNotFoundException" in body["Reason"]
