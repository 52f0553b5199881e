"""Integration fixtures: one private RabbitMQ node per session, isolated names per test."""

from __future__ import annotations

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
    import boto3

    from devtools.local.resources import ENV, REGION, create_coordination_table
    from devtools.moto_server import moto_server
    from sluice import naming
    from sluice.settings import SchedulerSettings

    # Served one request at a time: racing claims of one item are decided as DynamoDB decides
    # them (moto alone may let both pass their condition).
    with moto_server(atomic=True) as endpoint:
        table = naming.coordination_table(ENV)
        create_coordination_table(
            boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint), table
        )
        yield {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            **SchedulerSettings.render(coordination_table=table),
        }
