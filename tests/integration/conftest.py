"""Integration fixtures: one private RabbitMQ node per session, isolated names per test."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest

from devtools.rabbitmq import RabbitMQMissing, RabbitNode
from sluice.scheduling.names import Names
from tests.integration.scheduling import ControlTap


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A private rabbitmq-server on loopback ports in a temp dir; a missing server fails."""
    try:
        node = RabbitNode(tmp_path_factory.mktemp("rabbitmq"), management=True).start()
    except RabbitMQMissing as exc:
        pytest.fail(str(exc))
    yield node
    node.stop()


@pytest.fixture
def names() -> Names:
    """Exchange and queue names no other test uses (tests share the session's node)."""
    return Names(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
def tap(rabbit: RabbitNode, names: Names) -> Iterator[ControlTap]:
    """Every lifecycle event of the test's scheduler, in arrival order."""
    with ControlTap(rabbit.url, names) as control:
        yield control


@pytest.fixture(scope="session")
def ledger_env() -> Iterator[dict[str, str]]:
    """moto's server on loopback with the coordination table (as the stack makes it, named as
    a local run names it): the tick ledger several scheduler processes share. The environment a
    scheduler process needs to use it."""
    yield from _ledger_env(atomic=False)


@pytest.fixture(scope="session")
def atomic_ledger_env() -> Iterator[dict[str, str]]:
    """ledger_env serving one DynamoDB request at a time, so claims of one item that race are
    decided as DynamoDB decides them (moto alone may let both pass their condition)."""
    yield from _ledger_env(atomic=True)


def _ledger_env(*, atomic: bool) -> Iterator[dict[str, str]]:
    import boto3

    from devtools.local.resources import ENV, REGION, create_coordination_table
    from devtools.moto_server import moto_server
    from sluice import naming
    from sluice.settings import SchedulerSettings

    with moto_server(atomic=atomic) as endpoint:
        table = naming.coordination_table(ENV)
        client = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
        # moto's servers in one process share their backends: the other fixture's server may
        # have made the table already.
        with contextlib.suppress(client.exceptions.ResourceInUseException):
            create_coordination_table(client, table)
        yield {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            **SchedulerSettings.render(coordination_table=table),
        }
