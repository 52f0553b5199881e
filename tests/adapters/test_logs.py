"""One log schema: a Lambda's line and a worker process's line have the same fields."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime

import pytest

from adapters import logs
from lambdas.common.runtime import logger as lambda_logger
from lambdas.common.runtime import set_correlation_id

correlation: contextvars.ContextVar[str] = contextvars.ContextVar("correlation", default="")


@pytest.fixture
def worker_lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    logs.configure("sluice-tasks", {"correlation_id": correlation}, stream=buffer)
    yield buffer
    root.handlers[:] = handlers
    root.setLevel(level)


def lambda_line(message: str, **extra: str) -> dict:
    buffer = io.StringIO()
    previous = lambda_logger.registered_handler.setStream(buffer)  # type: ignore[attr-defined]
    # A fresh invocation: no keys left by a handler another test ran (job id, Lambda context)
    lambda_logger.clear_state()
    try:
        set_correlation_id("corr-1")
        lambda_logger.info(message, extra=extra)
    finally:
        lambda_logger.registered_handler.setStream(previous)  # type: ignore[attr-defined]
        lambda_logger.remove_keys(["correlation_id"])
    return json.loads(buffer.getvalue())


def test_a_lambda_line_and_a_worker_line_have_the_same_fields(worker_lines):
    # Given a line logged by a step (Powertools Logger) and one by a worker process's logger
    from_lambda = lambda_line("step succeeded", step="x")
    correlation.set("corr-1")
    logging.getLogger("worker.test").info("task succeeded", extra={"step": "x"})
    # (in one process the Lambda logger's lines reach the root logger's handler too)
    lines = [json.loads(x) for x in worker_lines.getvalue().splitlines()]
    (from_worker,) = [line for line in lines if line["message"] == "task succeeded"]
    # Then both have the same fields, the correlation id among them, and UTC RFC 3339 times
    assert (
        set(from_lambda)
        == set(from_worker)
        == {
            "level",
            "location",
            "message",
            "timestamp",
            "service",
            "correlation_id",
            "step",
        }
    )
    for line in (from_lambda, from_worker):
        assert line["correlation_id"] == "corr-1"
        assert datetime.fromisoformat(line["timestamp"]).utcoffset().total_seconds() == 0


def test_each_thread_logs_its_own_correlation_id(worker_lines):
    # Given two threads handling two messages at once (gunicorn's threads, the tasks' threads)
    def handle(cid: str) -> None:
        correlation.set(cid)
        logging.getLogger("worker.test").warning("handled", extra={"id": cid})

    threads = [threading.Thread(target=handle, args=(f"c-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then each line carries the id of its own thread's message
    lines = [json.loads(x) for x in worker_lines.getvalue().splitlines()]
    assert len(lines) == 4 and all(line["correlation_id"] == line["id"] for line in lines)


def test_a_library_logger_writes_the_schema_too(worker_lines):
    logging.getLogger("pika.connection").warning("connection lost: %s", "reset")
    line = json.loads(worker_lines.getvalue())
    assert (line["message"], line["level"], line["service"]) == (
        "connection lost: reset",
        "WARNING",
        "sluice-tasks",
    )
