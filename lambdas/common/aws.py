"""This function's adapters: the shared AWS adapters (adapters/) over its clients and the names
the stack put in its environment. Step logic receives these (or fakes of them in tests)."""

from __future__ import annotations

import os

from adapters.jobs import DEFAULT_TTL_DAYS, JobsTable
from adapters.notifications import Notifications
from adapters.s3 import Storage
from adapters.transcribe import Transcribe
from lambdas.common.runtime import clients, env


def storage() -> Storage:
    return Storage(clients("s3"))


def jobs() -> JobsTable:
    ttl_days = int(os.environ.get("JOB_TTL_DAYS", DEFAULT_TTL_DAYS))
    return JobsTable(clients("dynamodb"), env("JOBS_TABLE"), ttl_days=ttl_days)


def notifications() -> Notifications:
    return Notifications(clients("sns"), env("NOTIFICATIONS_TOPIC"))


def transcribe() -> Transcribe:
    return Transcribe(clients("transcribe"))
