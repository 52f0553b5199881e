"""Each worker process calls AWS as its own role, assumed from the instance's (worker/credentials.py).

moto's STS plays AWS (the session's moto server: an in-process mock would reset the state the
other worker tests share): AssumeRole hands out the role's credentials and GetCallerIdentity says
whose they are, so the tests see which identity each client would sign with.
"""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from worker.credentials import process_session, role_variable
from worker.invoke import LambdaInvoker

ACCOUNT = "123456789012"


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    yield
    boto3.DEFAULT_SESSION = None  # the next test starts from the plain default chain


def _role(name: str) -> str:
    trust = '{"Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}'
    iam = boto3.client("iam", region_name="eu-west-1")
    try:
        return iam.get_role(RoleName=name)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        return iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]


def test_a_process_named_a_role_calls_aws_as_that_role(aws) -> None:
    # Given the stack names the tasks process's role
    arn = _role("Sluice-test-worker-tasks")
    # When the tasks process sets up its session
    process_session("tasks", {role_variable("tasks"): arn})
    # Then boto3's clients call as an assumed session of exactly that role
    identity = boto3.client("sts", region_name="eu-west-1").get_caller_identity()
    assert identity["Arn"].startswith(
        f"arn:aws:sts::{ACCOUNT}:assumed-role/Sluice-test-worker-tasks/sluice-tasks-"
    )


def test_the_lean_invoke_client_signs_with_the_process_role(aws) -> None:
    arn = _role("Sluice-test-worker-web")
    session = process_session("web", {role_variable("web"): arn})
    invoker = LambdaInvoker.from_environment(session=session)
    signing = invoker.credentials.get_frozen_credentials()
    via_boto3 = boto3.client("sts", region_name="eu-west-1")
    assert signing.access_key != "testing"  # not the source (instance) credentials
    assert (
        signing.access_key
        == via_boto3._request_signer._credentials.get_frozen_credentials().access_key
    )


def test_without_a_role_a_process_keeps_the_default_chain(aws) -> None:
    process_session("scheduler", {})
    identity = boto3.client("sts", region_name="eu-west-1").get_caller_identity()
    assert ":assumed-role/" not in identity["Arn"]


def test_only_the_three_worker_processes_have_roles() -> None:
    assert role_variable("web") == "SLUICE_ROLE_ARN_WEB"
    with pytest.raises(ValueError, match="unknown worker process"):
        role_variable("cron")
