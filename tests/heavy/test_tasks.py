"""The tasks process against moto's SQS: report-then-delete, visibility, bounded concurrency,
shutdown, and what happens to bad messages."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sluice.envelope import Task
from sluice.errors import BusinessError
from sluice.settings import SettingsError, TasksSettings
from tests.heavy.conftest import Aws
from worker.observability import configure_logging
from worker.tasks import TaskRunner, callback_error


@dataclass
class Callbacks:
    """Records callback calls; `on_report` runs inside a success/failure report."""

    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    on_report: Callable[[], None] = lambda: None
    fail_with: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, op: str, cb: str, arg: Any = None) -> dict:
        with self.lock:
            self.calls.append((op, cb, arg))
        if self.fail_with and op != "heartbeat":
            raise ClientError({"Error": {"Code": self.fail_with, "Message": "x"}}, op)
        return {}

    def send_durable_execution_callback_success(self, *, CallbackId: str, Result: bytes) -> dict:
        self.on_report()
        return self._record("success", CallbackId, json.loads(Result))

    def send_durable_execution_callback_failure(self, *, CallbackId: str, Error: dict) -> dict:
        self.on_report()
        return self._record("failure", CallbackId, Error)

    def send_durable_execution_callback_heartbeat(self, *, CallbackId: str) -> dict:
        return self._record("heartbeat", CallbackId)

    def ops(self, op: str) -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if c[0] == op]


def send(aws: Aws, name: str = "media/echo", cb: str = "cb-1", **data: Any) -> None:
    task = Task(name=name, callback_id=cb, data=data, correlation_id=f"corr-{cb}")
    aws.sqs.send_message(QueueUrl=aws.tasks_url, MessageBody=task.to_json())


def receive(aws: Aws, visibility: int = 30) -> dict[str, Any]:
    got = aws.sqs.receive_message(
        QueueUrl=aws.tasks_url, MaxNumberOfMessages=1, VisibilityTimeout=visibility
    )
    return got["Messages"][0]


def runner(aws: Aws, callbacks: Callbacks, handlers: dict, **kwargs: Any) -> TaskRunner:
    opts: dict[str, Any] = {"visibility_timeout_s": 30, "keepalive_s": 0.2, "receive_wait_s": 0}
    opts.update(kwargs)
    return TaskRunner(
        sqs=aws.sqs,
        callbacks=callbacks,
        queue_url=aws.tasks_url,
        context=aws.context,
        handlers=handlers,
        **opts,
    )


def echo(data: Any, ctx: Any) -> dict[str, Any]:
    return {"echo": dict(data)}


def test_success_is_reported_while_the_message_is_held_and_deleted_only_after(aws: Aws) -> None:
    # Given a task on the queue
    send(aws, x=1)
    seen: list[int] = []
    callbacks = Callbacks(on_report=lambda: seen.append(aws.in_flight()))
    # When the runner handles it
    outcome = runner(aws, callbacks, {"media/echo": echo}).handle(receive(aws))
    # Then the result went to the callback while the message was still held, then it was deleted
    assert callbacks.ops("success") == [("success", "cb-1", {"echo": {"x": 1}})]
    assert seen == [1]
    assert outcome.status == "succeeded" and outcome.deleted
    assert aws.visible() == 0 and aws.in_flight() == 0


def test_a_business_error_fails_the_callback_with_its_class_and_reason(aws: Aws) -> None:
    # Given a task whose step refuses its input
    send(aws)

    def refuse(data: Any, ctx: Any) -> dict[str, Any]:
        raise BusinessError("audio is 9 GB", code="oversize")

    callbacks = Callbacks()
    # When handled
    outcome = runner(aws, callbacks, {"media/echo": refuse}).handle(receive(aws))
    # Then the callback failed as a business error carrying the reason, and the message is gone
    [(_, _, error)] = callbacks.ops("failure")
    assert error["ErrorType"] == "BusinessError"
    assert json.loads(error["ErrorData"]) == {
        "error_class": "business",
        "code": "oversize",
        "message": "audio is 9 GB",
    }
    assert error["ErrorMessage"].startswith("oversize:")
    assert outcome.deleted and aws.visible() == 0


def test_an_unexpected_exception_is_reported_as_transient(aws: Aws) -> None:
    # Given a step with a bug
    send(aws)
    callbacks = Callbacks()
    # When handled, Then the workflow hears of a transient failure (it may retry)
    runner(aws, callbacks, {"media/echo": lambda d, c: 1 / 0}).handle(receive(aws))
    [(_, _, error)] = callbacks.ops("failure")
    assert error["ErrorType"] == "TransientError"
    assert json.loads(error["ErrorData"])["code"] == "unexpected"


def test_an_unknown_task_name_is_a_business_failure(aws: Aws) -> None:
    send(aws, name="media/unknown")
    callbacks = Callbacks()
    runner(aws, callbacks, {"media/echo": echo}).handle(receive(aws))
    assert json.loads(callbacks.ops("failure")[0][2]["ErrorData"])["code"] == "unknown_task"


def test_a_task_that_cannot_be_reported_stays_on_the_queue(aws: Aws) -> None:
    # Given the callback API throttling every report
    send(aws)
    callbacks = Callbacks(fail_with="TooManyRequestsException")
    # When the task is handled with a 1 s visibility timeout
    outcome = runner(aws, callbacks, {"media/echo": echo}).handle(receive(aws, visibility=1))
    # Then the message is not deleted and comes back for another try
    assert outcome.status == "unreported" and not outcome.deleted
    time.sleep(1.2)
    assert aws.visible() == 1


def test_a_report_to_a_closed_callback_drops_the_message(aws: Aws) -> None:
    # Given the workflow no longer waiting (callback timed out)
    send(aws)
    callbacks = Callbacks(fail_with="CallbackTimeoutException")
    # When the task finishes, Then nobody is waiting: the message is deleted, not retried
    outcome = runner(aws, callbacks, {"media/echo": echo}).handle(receive(aws))
    assert outcome.status == "abandoned" and outcome.deleted
    assert aws.visible() == 0 and aws.in_flight() == 0


def test_the_message_stays_invisible_while_a_task_outlives_its_visibility_timeout(aws: Aws) -> None:
    # Given a 2.5 s task, a 1 s visibility timeout and a keep-alive every 0.3 s
    send(aws)
    started, stolen = threading.Event(), []

    def slow(data: Any, ctx: Any) -> dict[str, Any]:
        started.set()
        time.sleep(2.5)
        return {}

    callbacks = Callbacks()
    r = runner(aws, callbacks, {"media/echo": slow}, visibility_timeout_s=1, keepalive_s=0.3)
    thread = r.start(receive(aws, visibility=1))
    # When another consumer polls the queue during the task
    started.wait(5)
    for _ in range(8):
        got = aws.sqs.receive_message(QueueUrl=aws.tasks_url, VisibilityTimeout=1)
        stolen += got.get("Messages", [])
        time.sleep(0.25)
    thread.join(10)
    # Then it never got the message, and the callback was heartbeated throughout
    assert stolen == []
    assert len(callbacks.ops("heartbeat")) >= 4
    assert callbacks.ops("success") and aws.visible() == 0


def test_no_more_than_the_configured_number_of_tasks_run_at_once(aws: Aws) -> None:
    # Given 6 tasks and a concurrency of 2
    for i in range(6):
        send(aws, cb=f"cb-{i}")
    running, peak, lock = [0], [0], threading.Lock()

    def work(data: Any, ctx: Any) -> dict[str, Any]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        return {}

    callbacks = Callbacks()
    r = runner(aws, callbacks, {"media/echo": work}, concurrency=2)
    # When the loop runs until the queue is empty
    loop = threading.Thread(target=r.run_forever)
    loop.start()
    deadline = time.monotonic() + 20
    while len(callbacks.ops("success")) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    r.stop()
    loop.join(10)
    # Then all six ran, never more than two at a time
    assert len(callbacks.ops("success")) == 6
    assert peak[0] == 2


def test_on_stop_a_running_task_finishes_and_no_new_task_is_taken(aws: Aws) -> None:
    # Given two tasks, concurrency 1, the first one running
    send(aws, cb="cb-a")
    send(aws, cb="cb-b")
    started = threading.Event()

    def work(data: Any, ctx: Any) -> dict[str, Any]:
        started.set()
        time.sleep(0.5)
        return {}

    callbacks = Callbacks()
    r = runner(aws, callbacks, {"media/echo": work}, concurrency=1, grace_s=5)
    loop = threading.Thread(target=r.run_forever)
    loop.start()
    started.wait(5)
    # When the process is told to stop (SIGTERM)
    r.stop()
    loop.join(10)
    # Then the running task was reported and deleted, and the other one was never taken
    assert len(callbacks.ops("success")) == 1
    assert aws.visible() == 1 and aws.in_flight() == 0


def test_a_task_still_running_after_the_grace_period_is_handed_back(aws: Aws) -> None:
    # Given a task that would run for 3 s
    send(aws)
    started, release = threading.Event(), threading.Event()

    def stuck(data: Any, ctx: Any) -> dict[str, Any]:
        started.set()
        release.wait(3)
        return {}

    callbacks = Callbacks()
    r = runner(aws, callbacks, {"media/echo": stuck}, grace_s=0.3)
    loop = threading.Thread(target=r.run_forever)
    loop.start()
    started.wait(5)
    # When stopped with a 0.3 s grace period
    r.stop()
    loop.join(10)
    # Then the message is visible again at once for another worker, and nothing was reported
    assert aws.visible() == 1
    release.set()
    time.sleep(0.3)
    assert callbacks.ops("success") == [] and callbacks.ops("failure") == []


def test_a_malformed_task_naming_a_callback_fails_that_callback(aws: Aws) -> None:
    # Given a task body with a callback id but no name
    body = {"v": 1, "kind": "task", "callback_id": "cb-9", "data": {}, "correlation_id": "c"}
    aws.sqs.send_message(QueueUrl=aws.tasks_url, MessageBody=json.dumps(body))
    callbacks = Callbacks()
    # When handled, Then its callback fails with schema_violation and the message is deleted
    outcome = runner(aws, callbacks, {}).handle(receive(aws))
    [(_, cb, error)] = callbacks.ops("failure")
    assert cb == "cb-9" and json.loads(error["ErrorData"])["code"] == "schema_violation"
    assert outcome.status == "poison" and outcome.deleted


def test_a_handed_back_task_is_not_hidden_again_by_a_keepalive_extend_in_flight(
    aws: Aws,
) -> None:
    # Given a running task whose keepalive is extending its visibility when the drain comes
    send(aws)
    visibility: list[int] = []

    class SlowExtends:
        def __getattr__(self, name: str) -> Any:
            return getattr(aws.sqs, name)

        def change_message_visibility(self, **kwargs: Any) -> dict:
            if kwargs["VisibilityTimeout"]:
                time.sleep(0.5)  # an extend still on its way to SQS
            visibility.append(kwargs["VisibilityTimeout"])
            return aws.sqs.change_message_visibility(**kwargs)

    started, finish = threading.Event(), threading.Event()

    def stuck(data: Any, ctx: Any) -> dict[str, Any]:
        started.set()
        finish.wait(5)
        return {}

    r = TaskRunner(
        sqs=SlowExtends(),
        callbacks=Callbacks(),
        queue_url=aws.tasks_url,
        context=aws.context,
        handlers={"media/echo": stuck},
        visibility_timeout_s=30,
        keepalive_s=0.2,
        receive_wait_s=0,
    )
    r.start(receive(aws))
    started.wait(5)
    time.sleep(0.35)  # the first heartbeat went out, the first extend is in flight
    # When the grace period is over and the task is handed back
    r.drain(grace_s=0)
    finish.set()
    deadline = time.monotonic() + 5
    while r.in_flight and time.monotonic() < deadline:  # the task and its keepalive ended
        time.sleep(0.05)
    # Then the hand-back is the last word: the message is visible again for another worker
    assert visibility[-1] == 0
    assert aws.visible() == 1


def test_a_message_that_is_not_a_task_is_released_toward_the_dlq(aws: Aws) -> None:
    # Given garbage on the tasks queue
    aws.sqs.send_message(QueueUrl=aws.tasks_url, MessageBody="not json")
    callbacks = Callbacks()
    # When handled, Then nothing is reported and the message is visible again at once (each
    # receive counts toward maxReceiveCount, after which SQS moves it to the DLQ)
    outcome = runner(aws, callbacks, {}).handle(receive(aws))
    assert outcome.status == "poison" and not outcome.deleted
    assert callbacks.calls == [] and aws.visible() == 1


def test_callback_errors_carry_the_error_class_as_their_type() -> None:
    err = callback_error({"error_class": "transient", "code": "s3_unavailable", "message": "503"})
    assert err["ErrorType"] == "TransientError"
    assert err["ErrorMessage"] == "s3_unavailable: 503"


def test_settings_default_to_one_task_per_vcpu_and_require_the_queue_url() -> None:
    settings = TasksSettings.read(
        {"SLUICE_TASKS_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/1/q"}
    )
    assert settings.concurrency >= 1 and settings.visibility_timeout_s == 900
    with pytest.raises(SettingsError, match="SLUICE_TASKS_QUEUE_URL: must be set"):
        TasksSettings.read({})


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The tasks process's logging (worker.observability), captured; the root logger restored."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging("sluice-tasks", stream=buffer)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    root.handlers[:] = handlers
    root.setLevel(level)


def test_every_line_of_a_task_its_keepalive_included_carries_its_correlation_id(
    aws: Aws, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    # Given a task whose heartbeats fail, so that the keepalive thread logs too
    class FailingHeartbeats(Callbacks):
        def send_durable_execution_callback_heartbeat(self, *, CallbackId: str) -> dict:
            raise ClientError({"Error": {"Code": "ServiceException", "Message": "x"}}, "Heartbeat")

    send(aws, cb="cb-log")
    # When the runner handles it
    runner(aws, FailingHeartbeats(), {"media/echo": echo}).handle(receive(aws))
    # Then every line, the keepalive thread's as well, names the task's correlation id, in the
    # one log schema
    lines = log_lines()
    assert {"heartbeat failed", "task succeeded"} <= {line["message"] for line in lines}
    assert {line["correlation_id"] for line in lines} == {"corr-cb-log"}
    assert all({"level", "location", "timestamp", "service"} <= set(line) for line in lines)
