"""The environment variables that tell the worker where its broker is (set by the worker construct)."""

from __future__ import annotations

import os
from collections.abc import Mapping

# A full AMQP(S) URL with credentials (tests, local runs).
BROKER_URL = "SLUICE_BROKER_URL"
# On AWS: the broker's amqps://host:5671 endpoint and the ARN of the scheduler user's secret
# ({"username": …, "password": …}; topology.SCHEDULER_USER, made at deploy time).
BROKER_ENDPOINT = "SLUICE_BROKER_ENDPOINT"
BROKER_SECRET_ARN = "SLUICE_BROKER_SECRET_ARN"  # noqa: S105 - a variable name
# Where event tasks send their events (the events queue).
EVENTS_QUEUE_URL = "SLUICE_EVENTS_QUEUE_URL"
# Where the broker figures go (Sluice-<env>/Scheduler); unset: they are not published.
METRICS_NAMESPACE = "SLUICE_SCHEDULER_METRICS_NAMESPACE"
# RabbitMQ's management API; default: https on the broker's AMQPS host (Amazon MQ serves it there).
BROKER_MANAGEMENT_URL = "SLUICE_BROKER_MANAGEMENT_URL"


def broker_configured(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get(BROKER_URL) or (env.get(BROKER_ENDPOINT) and env.get(BROKER_SECRET_ARN)))
