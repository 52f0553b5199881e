"""The broker figures the alarms need, measured and published by the scheduler itself.

Amazon MQ publishes no per-queue metrics for RabbitMQ 4 brokers, and the memory and disk figures
it publishes per broker are sums over a cluster's nodes, so one node near its limit hides behind
two idle ones. The scheduler therefore measures, once a minute:
- per task, its processor queue: tokens ready (`TokensReady`) and consumers (`Consumers`), by a
  passive queue declaration over AMQP; and dead-lettered ticks (`DeadTicks`);
- per node, from RabbitMQ's management API (`GET /api/nodes`, which Amazon MQ serves on the
  broker's HTTPS endpoint): memory used as % of the node's limit (`MemoryUsedPct`) and free disk
  as a multiple of its limit (`DiskFreeRatio`);
- per task, the lifecycle events this process emitted since the last publication (`Lifecycle`:
  `TicksStarted`, `TicksFailed`, `TicksMissed`, … and the worst lateness, `TickLatenessMs`);
and publishes them to the environment's scheduler namespace. Every scheduler process publishes
the same broker figures, so the alarms read their Maximum (or Minimum); the lifecycle counts are
each process's own, so the alarms read their Sum.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pika

from adapters.rabbitmq_management import Management
from sluice.metrics import (
    CONSUMERS,
    DEAD_TICKS,
    DISK_FREE_RATIO,
    MEMORY_USED_PCT,
    TICK_EVENTS,
    TICK_LATENESS,
    TICKS_MISSED,
    TOKENS_READY,
)
from sluice.scheduling.names import Names
from sluice.scheduling.registry import Registry

log = logging.getLogger("sluice.scheduler")


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    dimensions: tuple[tuple[str, str], ...] = ()

    def datum(self) -> dict[str, Any]:
        return {
            "MetricName": self.name,
            "Value": self.value,
            "Unit": _UNITS.get(self.name, "Count"),
            "Dimensions": [{"Name": k, "Value": v} for k, v in self.dimensions],
        }


_UNITS = {MEMORY_USED_PCT: "Percent", DISK_FREE_RATIO: "None", TICK_LATENESS: "Milliseconds"}


class Lifecycle:
    """Counts this process's lifecycle events per task (thread-safe; the runners record, the
    publisher drains once a minute)."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lateness_ms: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, task: str, event: str, fields: Mapping[str, Any]) -> None:
        metric = TICK_EVENTS.get(event)
        with self._lock:
            if event == "missed":
                self._counts[task, TICKS_MISSED] += int(fields.get("missed", 1))
            elif metric is not None:
                self._counts[task, metric] += 1
            if event == "scheduled" and fields.get("missed"):  # slots a long run overran
                self._counts[task, TICKS_MISSED] += int(fields["missed"])
            if event == "started" and "lateness_s" in fields:
                late = max(float(fields["lateness_s"]) * 1000, 0.0)
                self._lateness_ms[task] = max(self._lateness_ms.get(task, 0.0), late)

    def drain(self) -> list[Figure]:
        """The counts since the last drain (and zeroes them)."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
            lateness, self._lateness_ms = self._lateness_ms, {}
        figures = [Figure(m, n, (("Task", t),)) for (t, m), n in sorted(counts.items())]
        figures += [Figure(TICK_LATENESS, round(v, 1), (("Task", t),)) for t, v in lateness.items()]
        return figures


def management_url(amqp_url: str) -> str:
    """The management API of the broker at `amqp_url`: Amazon MQ serves it over HTTPS on the
    same host as AMQPS (amqps://b-….mq.<region>.amazonaws.com:5671 -> https://b-….amazonaws.com)."""
    host = urlsplit(amqp_url).hostname or ""
    return f"https://{host}"


class BrokerFigures:
    """Measures the figures above on the broker at `url` (credentials in the URL)."""

    def __init__(
        self,
        url: str,
        registry: Registry,
        names: Names,
        *,
        management: str | None,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.url, self.registry, self.names = url, registry, names
        self.lifecycle = lifecycle
        parts = urlsplit(url)
        # The scheduler's own user (tagged `monitoring`: it may read the nodes' figures).
        self._api = (
            Management(management, unquote(parts.username or ""), unquote(parts.password or ""))
            if management
            else None
        )
        self._blind_logged = False

    def queues(self) -> list[Figure]:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            channel = connection.channel()
            figures = []
            for task in self.registry:
                ok = channel.queue_declare(self.names.processor(task.name), passive=True)
                dims = (("Task", task.name),)
                figures.append(Figure(TOKENS_READY, ok.method.message_count, dims))
                figures.append(Figure(CONSUMERS, ok.method.consumer_count, dims))
            dead = channel.queue_declare(self.names.dead_queue, passive=True)
            figures.append(Figure(DEAD_TICKS, dead.method.message_count))
            return figures
        finally:
            with contextlib.suppress(Exception):
                connection.close()

    def nodes(self) -> list[Figure]:
        if self._api is None:
            return []
        figures, blind = [], []
        for node in self._api.get("/api/nodes"):
            if not node.get("running"):
                continue
            dims = (("Node", str(node["name"])),)
            if "mem_limit" not in node:
                blind.append(str(node["name"]))
                continue
            if node["mem_limit"]:
                used = 100.0 * node["mem_used"] / node["mem_limit"]
                figures.append(Figure(MEMORY_USED_PCT, round(used, 2), dims))
            if node.get("disk_free_limit"):
                ratio = node["disk_free"] / node["disk_free_limit"]
                figures.append(Figure(DISK_FREE_RATIO, round(ratio, 3), dims))
        if blind:
            figures += self._alarmed(self._api, blind)
        return figures

    def _alarmed(self, api: Management, nodes: list[str]) -> list[Figure]:
        """The figures of nodes whose levels the API does not give (their management agent
        collects no metrics: `management_agent.disable_metrics_collector`, or RabbitMQ 4's
        deprecated `management_metrics_collection` once not permitted), from the resource alarms
        in effect (GET /api/health/checks/alarms, which needs no statistics): a node in a memory
        alarm is at 100 % of its limit, one in a disk alarm at 1x its free-disk limit. Below the
        alarm the level is unknown, so nothing is published and a warning says so."""
        if not self._blind_logged:
            self._blind_logged = True
            log.warning(
                "broker figures: the broker collects no node statistics (management metrics "
                "collection is off on %s): memory and disk are seen only once a resource alarm "
                "is in effect, not as they approach it",
                ", ".join(nodes),
            )
        figures = []
        # 200 when no alarm is in effect, 503 with the alarms when one is.
        alarms = api.get("/api/health/checks/alarms", answers=(503,))
        for alarm in alarms.get("alarms", []):
            name = str(alarm.get("node"))
            if name not in nodes:
                continue
            dims = (("Node", name),)
            if alarm.get("resource") == "memory":
                figures.append(Figure(MEMORY_USED_PCT, 100.0, dims))
            elif alarm.get("resource") == "disk space":
                figures.append(Figure(DISK_FREE_RATIO, 1.0, dims))
        return figures

    def measure(self) -> list[Figure]:
        """Every figure; a part that cannot be measured now is left out (and logged)."""
        figures: list[Figure] = []
        for part in (self.queues, self.nodes):
            try:
                figures += part()
            except Exception as exc:  # the broker may be restarting: measure again next time
                log.warning("broker figures: %s failed: %s", part.__name__, exc)
        if self.lifecycle is not None:
            figures += self.lifecycle.drain()
        return figures


def publish(
    cloudwatch: Any, namespace: str, figures: Iterable[Figure], dimensions: dict[str, str]
) -> int:
    """One PutMetricData call per 1,000 figures (its limit); returns how many were sent."""
    common = [{"Name": k, "Value": v} for k, v in dimensions.items()]
    data = []
    for figure in figures:
        datum = figure.datum()
        datum["Dimensions"] = common + datum["Dimensions"]
        data.append(datum)
    for i in range(0, len(data), 1000):
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=data[i : i + 1000])
    return len(data)


def publish_every(
    interval_s: float,
    figures: BrokerFigures,
    cloudwatch: Any,
    namespace: str,
    dimensions: dict[str, str],
    stop: threading.Event,
) -> threading.Thread:
    """Measure and publish every `interval_s` seconds on a daemon thread until `stop`."""

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                publish(cloudwatch, namespace, figures.measure(), dimensions)
            except Exception:  # metrics must never take the scheduler down
                log.exception("could not publish the broker figures")

    thread = threading.Thread(target=loop, name="broker-figures", daemon=True)
    thread.start()
    return thread
