"""This function's adapters: the shared AWS adapters (adapters/) over its clients and the names
the stack put in its environment. Step logic receives these (or fakes of them in tests)."""

from __future__ import annotations

from adapters.jobs import JobsTable
from adapters.notifications import Notifications
from adapters.s3 import Storage
from adapters.transcribe import Transcribe
from lambdas.common.runtime import clients, env, settings


def storage() -> Storage:
    return Storage(clients("s3"))


def jobs() -> JobsTable:
    return JobsTable(clients("dynamodb"), env("jobs_table"), ttl_days=settings().job_ttl_days)


def notifications() -> Notifications:
    return Notifications(clients("sns"), env("notifications_topic"))


def transcribe() -> Transcribe:
    return Transcribe(clients("transcribe"))
