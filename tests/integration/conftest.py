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
