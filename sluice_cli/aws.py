"""Where the CLI's AWS calls go (profile, region, endpoint), resource names, and clear errors.

Every failure an operator can fix is turned into one `click.ClickException` that says what to
fix (credentials, region, endpoint, a queue or stack that does not exist); a traceback is kept
for bugs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

import boto3
import click
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    TokenRetrievalError,
)

from sluice import catalog, naming

# The queues an operator names on the command line (`--queue events|tasks`); their AWS names are
# sluice.naming's, as the stacks name them.
QUEUES = naming.QUEUES
# CloudFormation outputs the CLI reads when no explicit name is given (the stacks write them).
JOBS_TABLE_OUTPUT = catalog.JOBS_TABLE_OUTPUT
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}

T = TypeVar("T")


prefix = naming.prefix


workflow_output_key = catalog.workflow_output


@dataclass
class Aws:
    """The target of every command: an AWS account (profile/region) or local endpoints (moto)."""

    env: str
    profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    _session: Any = None
    _clients: dict[str, Any] = field(default_factory=dict)
    _outputs: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        return bool(self.endpoint_url) and urlparse(self.endpoint_url).hostname in LOCAL_HOSTS

    @property
    def where(self) -> str:
        """How error messages name the target."""
        if self.endpoint_url:
            return f"endpoint {self.endpoint_url}"
        region = self.region or (self._session.region_name if self._session else None)
        return f"region {region or '?'}" + (f", profile {self.profile}" if self.profile else "")

    def session(self) -> Any:
        if self._session is None:
            try:
                self._session = boto3.Session(profile_name=self.profile, region_name=self.region)
            except ProfileNotFound:
                raise click.ClickException(
                    f"AWS profile {self.profile!r} not found: check --profile / AWS_PROFILE "
                    "against ~/.aws/config"
                ) from None
        return self._session

    def client(self, service: str) -> Any:
        client = self._clients.get(service)
        if client is None:
            session = self.session()
            kwargs: dict[str, Any] = {
                "config": Config(retries={"mode": "standard", "max_attempts": 3})
            }
            if self.endpoint_url:
                # A service-specific endpoint (AWS_ENDPOINT_URL_LAMBDA, …) wins, as in the AWS
                # CLI: the local pipeline serves Lambda's durable APIs apart from moto.
                if not os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}"):
                    kwargs["endpoint_url"] = self.endpoint_url
                # moto accepts any credentials: spare a local user from inventing some.
                if self.local and session.get_credentials() is None:
                    kwargs.update(aws_access_key_id="local", aws_secret_access_key="local")  # noqa: S106
                if session.region_name is None:
                    kwargs["region_name"] = "us-east-1"
            client = self._clients[service] = session.client(service, **kwargs)
        return client

    # -- resources ------------------------------------------------------------------------------

    def queue_url(self, queue: str, *, dlq: bool = False) -> str:
        try:
            name = naming.queue_name(self.env, queue, dlq=dlq)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        try:
            return str(self.client("sqs").get_queue_url(QueueName=name)["QueueUrl"])
        except ClientError as exc:
            if _code(exc) in {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}:
                raise click.ClickException(
                    f"queue {name} does not exist at {self.where}: check --env (now {self.env!r}), "
                    "--region/--profile or --endpoint-url, or deploy the environment first"
                ) from None
            raise

    def queue_arn(self, url: str) -> str:
        attrs = self.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return str(attrs["Attributes"]["QueueArn"])

    def stack_outputs(self, stack: str) -> dict[str, str]:
        """The outputs of `Sluice-<env>-<stack>` (empty when the stack does not exist)."""
        if stack not in self._outputs:
            name = f"{prefix(self.env)}-{stack}"
            try:
                found = self.client("cloudformation").describe_stacks(StackName=name)["Stacks"]
            except ClientError as exc:
                if _code(exc) != "ValidationError":
                    raise
                found = []
            self._outputs[stack] = {
                o["OutputKey"]: o["OutputValue"] for s in found for o in s.get("Outputs", [])
            }
        return self._outputs[stack]


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def friendly_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn the AWS failures an operator can fix into one clear line (exit status 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        aws = click.get_current_context().find_object(Aws)
        where = aws.where if aws else "AWS"
        try:
            return fn(*args, **kwargs)
        except (NoCredentialsError, PartialCredentialsError, TokenRetrievalError) as exc:
            raise click.ClickException(
                f"no usable AWS credentials ({exc}): pass --profile, set AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, run `aws sso login`, or use "
                "--endpoint-url for the local pipeline"
            ) from None
        except NoRegionError:
            raise click.ClickException(
                "no AWS region: pass --region or set AWS_REGION (or a region in your profile)"
            ) from None
        except EndpointConnectionError as exc:
            hint = " (is `make local-up` running?)" if aws and aws.local else ""
            raise click.ClickException(
                f"cannot reach {exc.kwargs.get('endpoint_url')}{hint}"
            ) from None
        except ClientError as exc:
            code = _code(exc)
            message = exc.response.get("Error", {}).get("Message", "")
            if code in {
                "InvalidClientTokenId",
                "UnrecognizedClientException",
                "ExpiredToken",
                "ExpiredTokenException",
                "SignatureDoesNotMatch",
            }:
                raise click.ClickException(
                    f"AWS rejected the credentials ({code}: {message}): refresh them "
                    "(`aws sso login`, new keys) or pick another --profile"
                ) from None
            if code in {"AccessDenied", "AccessDeniedException"}:
                raise click.ClickException(
                    f"access denied at {where} for {exc.operation_name}: {message}"
                ) from None
            raise click.ClickException(
                f"{exc.operation_name} failed at {where}: {code}: {message}"
            ) from None

    return wrapper


def default_endpoint() -> str | None:
    return os.environ.get("SLUICE_ENDPOINT_URL") or None
