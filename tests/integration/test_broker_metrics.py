"""The broker figures the scheduler publishes, measured on a real RabbitMQ node (management API
included), and the PutMetricData request checked against botocore's CloudWatch model."""

from __future__ import annotations

import logging
import time

import boto3
import pika
from botocore.stub import Stubber

from devtools.rabbitmq import RabbitNode
from sluice.metrics import (
    CONSUMERS,
    DEAD_TICKS,
    DISK_FREE_RATIO,
    MEMORY_USED_PCT,
    TOKENS_READY,
)
from sluice.scheduling.names import SCHEDULER_USER
from sluice.scheduling.registry import PeriodicTask, Registry
from sluice.scheduling.schedule import Every
from tests.integration.broker_users import admin, amqp_url, scheduler_user
from worker.scheduler.broker_metrics import BrokerFigures, Figure, management_url, publish
from worker.scheduler.topology import declare


def _registry() -> Registry:
    return Registry([PeriodicTask("heartbeat", Every(60), action=lambda tick: None)])


def test_queue_and_node_figures_come_from_the_broker(rabbit, names):
    # Given the scheduler's topology with two tokens ready and one dead-lettered tick
    registry = _registry()
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    channel = connection.channel()
    declare(channel, names, list(registry))
    for _ in range(2):
        channel.basic_publish("", names.processor("heartbeat"), b'{"v":1}')
    channel.basic_publish("", names.dead_queue, b'{"v":1}')
    connection.close()
    # When the scheduler measures (the management agent has node statistics after its first
    # collection, a few seconds after the node starts)
    measure = BrokerFigures(rabbit.url, registry, names, management=rabbit.management_url).measure
    deadline = time.monotonic() + 30
    found = measure()
    while not any(f.name == MEMORY_USED_PCT for f in found):
        assert time.monotonic() < deadline, "no node statistics from the management API"
        time.sleep(0.5)
        found = measure()
    figures = {(f.name, f.dimensions): f.value for f in found}
    # Then the queue figures are the broker's, and each node has its memory and disk ratios
    task = (("Task", "heartbeat"),)
    assert figures[(TOKENS_READY, task)] == 2
    assert figures[(CONSUMERS, task)] == 0
    assert figures[(DEAD_TICKS, ())] == 1
    (node,) = {dims for name, dims in figures if name == MEMORY_USED_PCT}
    assert node[0][0] == "Node" and node[0][1] == rabbit.nodename
    assert 0 < figures[(MEMORY_USED_PCT, node)] < 100
    assert figures[(DISK_FREE_RATIO, node)] > 1


def test_an_unreachable_management_api_leaves_the_queue_figures(rabbit, names):
    registry = _registry()
    connection = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    declare(connection.channel(), names, list(registry))
    connection.close()
    figures = BrokerFigures(rabbit.url, registry, names, management="http://127.0.0.1:9").measure()
    assert {f.name for f in figures} == {TOKENS_READY, CONSUMERS, DEAD_TICKS}


def test_the_published_request_is_one_cloudwatch_accepts():
    # botocore's Stubber validates the request against CloudWatch's service model
    cloudwatch = boto3.client("cloudwatch", region_name="eu-west-1")
    stub = Stubber(cloudwatch)
    stub.add_response("put_metric_data", {})
    figures = [
        Figure(TOKENS_READY, 1, (("Task", "heartbeat"),)),
        Figure(MEMORY_USED_PCT, 41.5, (("Node", "rabbit@ip-10-0-0-1"),)),
        Figure(DISK_FREE_RATIO, 12.0, (("Node", "rabbit@ip-10-0-0-1"),)),
    ]
    with stub:
        assert publish(cloudwatch, "Sluice-test/Scheduler", figures, {}) == 3
    stub.assert_no_pending_responses()


def test_amazon_mqs_management_api_is_on_the_amqps_host():
    amqps = "amqps://user:pw@b-1234-abcd.mq.eu-west-1.amazonaws.com:5671"
    assert management_url(amqps) == "https://b-1234-abcd.mq.eu-west-1.amazonaws.com"


def test_a_broker_that_collects_no_node_statistics_still_shows_its_memory_and_disk_alarms(
    tmp_path, names, caplog
):
    # Given a node whose management agent collects no metrics: RabbitMQ 4 deprecates the
    # collection (its log: "will not be permitted by default in a future minor version"), and
    # then GET /api/nodes answers only each node's name, type and running (seen on 3.10 and 4.0)
    node = RabbitNode(
        tmp_path / "nostats",
        "sluice-nostats",
        management=True,
        config="management_agent.disable_metrics_collector = true\n",
    ).start()
    try:
        # (measured as the scheduler's own user, made as the deploy makes it: tag `monitoring`)
        admin(node).put_user(scheduler_user("sched-password"))
        url = amqp_url(node, SCHEDULER_USER, "sched-password")
        figures = BrokerFigures(url, _registry(), names, management=node.management_url)
        # When nothing is wrong, no level can be read: no node figure, and a warning says why
        caplog.set_level(logging.WARNING, logger="sluice.scheduler")
        assert figures.nodes() == []
        assert "collects no node statistics" in caplog.text
        # When the node's memory and disk alarms go off (limits far beyond what it has)
        node.ctl("set_vm_memory_high_watermark", "0.0001")
        node.ctl("set_disk_free_limit", "1000000GB")
        deadline, found = time.monotonic() + 30, []
        while len(found) < 2:
            assert time.monotonic() < deadline, f"alarms not seen: {found}"
            time.sleep(0.5)
            found = figures.nodes()
        # Then each shows at its limit on that node: memory at 100 %, free disk at 1x its limit,
        # which the Broker-Memory and Broker-Disk alarms' thresholds both catch
        dims = (("Node", node.nodename),)
        assert sorted(found, key=lambda f: f.name) == sorted(
            [Figure(MEMORY_USED_PCT, 100.0, dims), Figure(DISK_FREE_RATIO, 1.0, dims)],
            key=lambda f: f.name,
        )
    finally:
        node.stop()
