"""Custom::BrokerUser: CloudFormation's request in, the broker user made or removed, the response
PUT to the request's ResponseURL (no CDK provider framework: one function, no extra Lambda).

Properties: ManagementUrl, AdminSecretArn, UserSecretArn, Vhost, Tags, Configure, Write, Read.
Create and Update make (or update) the user the user secret names, with its password; the
physical id is that user's name, so a renamed user makes CloudFormation delete the old one.
Delete removes the user the physical id names.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

import boto3
from botocore.config import Config

from adapters.rabbitmq_management import Management, User

log = logging.getLogger("sluice.broker_user")
log.setLevel(logging.INFO)

# The physical id of a Create that failed. CloudFormation still sends a Delete for it when it
# rolls back; that Delete removes what the Create may have made, but it must succeed even when
# the broker is what failed, or the rollback itself would fail.
CREATE_FAILED = "sluice-broker-user-create-failed"
# Bounded calls: the function must answer CloudFormation well inside its own timeout.
_SECRETS_CONFIG = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})
# CloudFormation refuses a response body over 4 KiB.
_REASON_MAX = 1500


def _secret(client: Any, arn: str) -> dict[str, str]:
    value: dict[str, str] = json.loads(client.get_secret_value(SecretId=arn)["SecretString"])
    return value


def _api(props: dict[str, Any], secrets: Any) -> Management:
    admin = _secret(secrets, props["AdminSecretArn"])
    return Management(props["ManagementUrl"], admin["username"], admin["password"])


def _undo_failed_create(props: dict[str, Any], secrets: Any) -> None:
    """Remove the user a failed Create may have made (before its permissions failed)."""
    try:
        name = _secret(secrets, props["UserSecretArn"])["username"]
        _api(props, secrets).delete_user(name)
    except Exception as exc:  # the rollback must go on whatever made the Create fail
        log.warning("rollback of a failed create removed no user: %s", exc)


def provision(event: dict[str, Any], secrets: Any) -> tuple[str, dict[str, str]]:
    """Carry out the request; returns (physical id, Data). Raises on any failure."""
    props = event["ResourceProperties"]
    if event["RequestType"] == "Delete":
        name = event["PhysicalResourceId"]
        if name == CREATE_FAILED:
            _undo_failed_create(props, secrets)
        elif not _api(props, secrets).delete_user(name):
            log.info("no user %s to delete", name)
        return name, {}
    api = _api(props, secrets)
    user = _secret(secrets, props["UserSecretArn"])
    api.put_user(
        User(
            name=user["username"],
            password=user["password"],
            tags=props["Tags"],
            vhost=props["Vhost"],
            configure=props["Configure"],
            write=props["Write"],
            read=props["Read"],
        )
    )
    log.info(
        "user %s made with tags %r on vhost %r", user["username"], props["Tags"], props["Vhost"]
    )
    return user["username"], {"Username": user["username"]}


def response(event: dict[str, Any], context: Any, secrets: Any) -> dict[str, Any]:
    """The response document CloudFormation expects for `event`, success or failure."""
    where = f"log stream {getattr(context, 'log_stream_name', '?')}"
    try:
        physical_id, data = provision(event, secrets)
        status, reason = "SUCCESS", f"{event['RequestType']} done; {where}"
    except Exception as exc:  # every failure must still reach CloudFormation
        log.exception("%s failed", event.get("RequestType"))
        detail = f"missing property {exc}" if isinstance(exc, KeyError) else str(exc)
        status = "FAILED"
        reason = f"{type(exc).__name__}: {detail}"[:_REASON_MAX] + f" ({where})"
        # Update and Delete keep theirs: a new id would make CloudFormation delete the old user.
        physical_id = event.get("PhysicalResourceId", CREATE_FAILED)
        data = {}
    return {
        "Status": status,
        "Reason": reason,
        "PhysicalResourceId": physical_id,
        "StackId": event["StackId"],
        "RequestId": event["RequestId"],
        "LogicalResourceId": event["LogicalResourceId"],
        "Data": data,
    }


def send(url: str, document: dict[str, Any]) -> None:
    """PUT the response to CloudFormation's presigned URL (signed for an empty content type).
    A failure raises, so Lambda retries the whole (idempotent) request."""
    body = json.dumps(document).encode()
    request = urllib.request.Request(  # noqa: S310 - CloudFormation's https ResponseURL
        url, data=body, method="PUT", headers={"Content-Type": "", "Content-Length": str(len(body))}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
        answer.read()


def handler(event: dict[str, Any], context: Any) -> None:
    log.info(
        "%s %s (%s)",
        event["RequestType"],
        event["LogicalResourceId"],
        event.get("PhysicalResourceId"),
    )
    secrets = boto3.client("secretsmanager", config=_SECRETS_CONFIG)
    document = response(event, context, secrets)
    send(event["ResponseURL"], document)
    log.info("answered %s", document["Status"])
