"""`sluice schedules list|reseed` against a real RabbitMQ node (Debian's rabbitmq-server)."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterator

import pika
import pytest

import sluice.cli  # noqa: F401 - loads sluice.cli.schedules
from devtools.rabbitmq import RabbitMQMissing, RabbitNode
from worker.scheduler.registry import PeriodicTask, Registry
from worker.scheduler.schedule import Every
from worker.scheduler.topology import Names

# The module, not the click group `sluice.cli` exports under the same name.
cli_schedules = sys.modules["sluice.cli.schedules"]


pytestmark = pytest.mark.slow  # a private RabbitMQ node takes seconds to start


def _tick(_: object) -> None:
    return None


# A fast task: its token counts as lost after a quarter period without one.
FAST = Registry([PeriodicTask("fast", Every(2), action=_tick)])


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    try:
        node = RabbitNode(tmp_path_factory.mktemp("rabbitmq"), name="sluice-cli").start()
    except RabbitMQMissing as exc:
        pytest.fail(str(exc))
    yield node
    node.stop()


@pytest.fixture
def prefix(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(cli_schedules, "_registry", lambda: FAST)
    return f"t{uuid.uuid4().hex[:10]}"


def test_list_says_when_the_scheduler_never_started(rabbit: RabbitNode, prefix: str, run) -> None:
    result = run("schedules", "list", "--broker-url", rabbit.url, "--prefix", prefix)
    assert result.exit_code == 0, result.output
    assert "not declared (scheduler not started)" in result.output


def test_reseed_restores_exactly_one_token_and_a_second_reseed_adds_none(
    rabbit: RabbitNode, prefix: str, run
) -> None:
    # Given no scheduler running and no token (never seeded, or lost with the broker's messages)
    # When an operator re-seeds
    first = run("schedules", "reseed", "--broker-url", rabbit.url, "--prefix", prefix)
    # Then the task holds one token, and list shows it
    assert first.exit_code == 0, first.output
    assert "fast: tokens 0 -> 1" in first.output
    listed = run("schedules", "list", "--broker-url", rabbit.url, "--prefix", prefix)
    # one token, waiting in the hatchery or (its TTL already run out) in the processor queue
    (waiting, ready) = map(int, re.search(r" (\d+)/(\d+) ok", listed.output).groups())
    assert waiting + ready == 1, listed.output
    # When they re-seed again, nothing is added
    second = run("schedules", "reseed", "fast", "--broker-url", rabbit.url, "--prefix", prefix)
    assert second.exit_code == 0, second.output
    assert "fast: tokens 1 -> 1" in second.output


def test_reseed_leaves_it_to_a_running_scheduler(rabbit: RabbitNode, prefix: str, run) -> None:
    # Given a scheduler's reconciler holding the leader lock (its exclusive queue)
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    try:
        connection.channel().queue_declare(
            Names(prefix).leader_queue, exclusive=True, auto_delete=True
        )
        # When an operator re-seeds
        result = run("schedules", "reseed", "--broker-url", rabbit.url, "--prefix", prefix)
    finally:
        connection.close()
    # Then the CLI publishes nothing and says who will
    assert result.exit_code == 0, result.output
    assert "a scheduler is running" in result.output
    counts = cli_schedules.token_counts(rabbit.url, ["fast"], Names(prefix))
    assert counts == {"fast": (-1, -1)}
