"""`sluice schedules list|reseed|dlq` against a real RabbitMQ node (Debian's rabbitmq-server)."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator

import pika
import pytest

import sluice_cli  # noqa: F401 - loads sluice_cli.schedules
from devtools.rabbitmq import RabbitMQMissing, RabbitNode
from sluice.scheduling.names import Names
from sluice.scheduling.registry import PeriodicTask, Registry, Token
from sluice.scheduling.schedule import Every
from worker.scheduler.topology import declare

# The module, not the click group `sluice_cli` exports under the same name.
cli_schedules = sys.modules["sluice_cli.schedules"]


# A private RabbitMQ node (a real server process) takes seconds to start.
pytestmark = [pytest.mark.slow, pytest.mark.integration]


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


def test_reseed_without_a_scheduler_says_to_start_one_and_publishes_nothing(
    rabbit: RabbitNode, prefix: str, run
) -> None:
    # Given no scheduler running: nothing would consume a token
    result = run("schedules", "reseed", "--broker-url", rabbit.url, "--prefix", prefix)
    # Then the CLI publishes none and says what restores them
    assert result.exit_code == 1, result.output
    assert "no scheduler is running: start the worker's scheduler process" in result.output
    assert cli_schedules.token_counts(rabbit.url, ["fast"], Names(prefix)) == {"fast": (-1, -1)}


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
    assert "a scheduler is running: its reconciler (the leader) re-seeds fast" in result.output
    counts = cli_schedules.token_counts(rabbit.url, ["fast"], Names(prefix))
    assert counts == {"fast": (-1, -1)}


def test_dlq_redrive_leaves_a_tick_whose_task_has_no_queue_yet(
    rabbit: RabbitNode, prefix: str, run
) -> None:
    # Given a dead-lettered tick of a task no scheduler has declared (a new broker, say)
    names = Names(prefix)
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    try:
        channel = connection.channel()
        declare(channel, names, [])
        channel.basic_publish(names.dead_exchange, "fast", Token("fast", 1.0).encode())
        # When an operator redrives it without being asked
        result = run(
            "schedules", "dlq", "redrive", "--yes", "--broker-url", rabbit.url, "--prefix", prefix
        )
        # (a message given back on the CLI's channel close is ready again a moment later)
        deadline = time.monotonic() + 5
        depth = 0
        while depth != 1 and time.monotonic() < deadline:
            depth = channel.queue_declare(names.dead_queue, passive=True).method.message_count
            time.sleep(0.02)
    finally:
        connection.close()
    # Then it stays where it was, and the CLI says why
    assert result.exit_code == 0, result.output
    assert "fast: no scheduler has declared its queue; left in the queue" in result.output
    assert "redriven: 0; left in the queue: 1" in result.output
    assert depth == 1
