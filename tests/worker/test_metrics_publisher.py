"""The worker's counts reach CloudWatch (moto) aggregated, in the namespace the alarms read."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from sluice.settings import SettingsError, WebSettings
from worker.observability import Metrics, MetricsPublisher

WORKER_METRICS = "Sluice-metrics-test/Worker"
PUBLISH_METRICS_S = WebSettings.variables()["publish_metrics_s"]

DIMS = {"Environment": "metrics-test"}


def _sum(cw, name: str) -> float:
    now = datetime.now(UTC)
    points = cw.get_metric_statistics(
        Namespace=WORKER_METRICS,
        MetricName=name,
        Dimensions=[{"Name": "Environment", "Value": "metrics-test"}],
        StartTime=now - timedelta(minutes=10),
        EndTime=now + timedelta(minutes=10),
        Period=300,
        Statistics=["Sum"],
    )["Datapoints"]
    return sum(p["Sum"] for p in points)


def test_counts_of_many_messages_arrive_in_one_flush(moto_endpoint):
    # Given the EMF metrics of three messages, one of which failed transiently (CloudWatch is
    # this folder's moto server: an in-process mock_aws would reset the server's queues too)
    cw = boto3.client("cloudwatch", region_name="eu-west-1", endpoint_url=moto_endpoint)
    publisher = MetricsPublisher(cw, WORKER_METRICS, DIMS)
    metrics = Metrics(WORKER_METRICS, DIMS, stream=io.StringIO(), publisher=publisher)
    metrics.emit({"Received": 1, "Started": 1}, 2.0)
    metrics.emit({"Received": 1, "Started": 1}, 4.0)
    metrics.emit({"Received": 1, "TransientFailures": 1}, 9.0)
    # When the publisher flushes
    publisher.flush()
    # Then CloudWatch has the sums the alarms read
    assert _sum(cw, "Received") == 3
    assert _sum(cw, "Started") == 2
    assert _sum(cw, "TransientFailures") == 1
    assert _sum(cw, "HandlingLatency") == 15.0
    # And a second flush with nothing new sends nothing more
    publisher.flush()
    assert _sum(cw, "Received") == 3


def test_a_failing_put_never_breaks_the_worker():
    class Down:
        def put_metric_data(self, **_: object) -> None:
            raise ConnectionError("no route")

    publisher = MetricsPublisher(Down(), WORKER_METRICS, DIMS)
    publisher.add({"Received": 1}, 1.0)
    publisher.flush()  # logs, does not raise


@pytest.mark.parametrize("value", ["5", "301", "-1"])
def test_publish_interval_out_of_range_names_the_variable(value):
    env = {"SLUICE_ENV": "dev", "SLUICE_EVENTS_DLQ_URL": "https://sqs/x", PUBLISH_METRICS_S: value}
    with pytest.raises(SettingsError, match=PUBLISH_METRICS_S):
        WebSettings.read(env)


def test_publishing_is_off_unless_asked():
    env = {"SLUICE_ENV": "dev", "SLUICE_EVENTS_DLQ_URL": "https://sqs/x"}
    assert WebSettings.read(env).publish_metrics_s == 0
