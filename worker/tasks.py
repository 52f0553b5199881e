"""The worker's `tasks` process: runs heavy steps from the tasks queue and answers their callbacks.

Per message (README, "Heavy steps and the tasks process"): parse the Task envelope, run its step while a keep-alive
thread extends the message's visibility and heartbeats the durable callback, report success
(result) or failure (typed error) through Lambda's durable-execution callback API, and only then
delete the message. A crash before the report leaves the message to reappear after its
visibility timeout; the callback's heartbeat timeout lets the workflow retry meanwhile.

Failures are reported, not retried here: a business error fails the workflow's step for good, a
transient one (ErrorType TransientError) makes the workflow send a fresh task after a backoff.
While a task runs, the instance is protected from scale-in (worker/protection.py, bounded by a
task's longest run). On SIGTERM (deploy, scale-in) the loop stops receiving, lets running tasks
finish within a grace period (the configuration's drain), and hands back (visibility 0) whatever is
still running after it. Child processes
(ffmpeg) ignore that stop (systemd signals the whole unit) and die with this process
(worker.heavy.common.child); at start the process sweeps the scratch directories of dead runs.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from adapters.errors import code as error_code
from sluice.envelope import Task, parse_task
from sluice.errors import BusinessError, PoisonMessage, SluiceError, TransientError
from sluice.settings import TasksSettings
from sluice.steps import CONTRACTS, check_input, check_output
from worker.heavy.common import Limits, TaskContext, kill_children, sweep_scratch
from worker.observability import configure_logging, correlation_id, message_id
from worker.protection import ScaleInProtection, instance_id

log = logging.getLogger("sluice.tasks")

Handler = Callable[[Mapping[str, Any], TaskContext], dict[str, Any]]
# The callback is gone (finished, timed out, or its execution ended): nobody waits for a report.
CALLBACK_GONE = frozenset({"ResourceNotFoundException", "CallbackTimeoutException"})
MAX_RESULT_BYTES = 256 * 1024  # SendDurableExecutionCallbackSuccess's documented limit
# After the grace period: how long the tasks whose children were killed get to clean up.
CLEANUP_S = 10.0


def default_handlers() -> dict[str, Handler]:
    from worker.heavy import embed, transcode

    return {transcode.TASK_NAME: transcode.run, embed.TASK_NAME: embed.run}


@dataclass
class Outcome:
    """What became of one message (returned for logs and tests)."""

    status: str  # succeeded | failed | unreported | released | abandoned | poison
    task: Task | None = None
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    deleted: bool = False


@dataclass
class _Lease:
    """One message being worked on: its keep-alive thread and whether it was handed back."""

    receipt: str
    task: Task | None
    stop: threading.Event = field(default_factory=threading.Event)
    released: bool = False
    callback_gone: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    keepalive: threading.Thread | None = None


class TaskRunner:
    """Consumes the tasks queue with at most `concurrency` tasks at a time."""

    def __init__(
        self,
        *,
        sqs: Any,
        callbacks: Any,
        queue_url: str,
        context: Callable[[], TaskContext],
        handlers: Mapping[str, Handler] | None = None,
        concurrency: int = 1,
        visibility_timeout_s: int = 900,
        keepalive_s: float = 60.0,
        receive_wait_s: int = 20,
        grace_s: float = 60.0,
        protection: ScaleInProtection | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if not 0 < keepalive_s < visibility_timeout_s:
            raise ValueError("keepalive_s must be below visibility_timeout_s")
        self.sqs, self.callbacks, self.queue_url = sqs, callbacks, queue_url
        self.context = context
        self.handlers = dict(handlers) if handlers is not None else default_handlers()
        self.concurrency = concurrency
        self.visibility_timeout_s = visibility_timeout_s
        self.keepalive_s = keepalive_s
        self.receive_wait_s = receive_wait_s
        self.grace_s = grace_s
        self.protection = protection
        self.stopping = threading.Event()
        self._leases: dict[str, _Lease] = {}
        self._threads: set[threading.Thread] = set()
        self._slots = threading.Condition()

    # -- the loop ---------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Receive and run tasks until stop(); then drain or release what is in flight."""
        log.info("tasks process started", extra={"concurrency": self.concurrency})
        while not self.stopping.is_set():
            try:
                self.poll_once()
            except (ClientError, BotoCoreError) as exc:  # SQS unreachable: back off, keep going
                log.warning("receive failed", extra={"error": str(exc)})
                self.stopping.wait(5)
        self.drain()
        log.info("tasks process stopped")

    def poll_once(self, *, wait_s: int | None = None) -> int:
        """Wait for a free slot, receive up to the free slots' worth, start them. Returns count."""
        with self._slots:
            while len(self._threads) >= self.concurrency and not self.stopping.is_set():
                self._slots.wait(1.0)
            free = self.concurrency - len(self._threads)
        if self.stopping.is_set() or free <= 0:
            return 0
        resp = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=min(free, 10),
            WaitTimeSeconds=self.receive_wait_s if wait_s is None else wait_s,
            VisibilityTimeout=self.visibility_timeout_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        messages = resp.get("Messages", [])
        for msg in messages:
            if self.stopping.is_set():  # stopped while receiving: give it straight back
                self._release(msg["ReceiptHandle"])
                continue
            self.start(msg)
        return len(messages)

    def start(self, msg: Mapping[str, Any]) -> threading.Thread:
        """Handle `msg` on its own thread (counted against the concurrency)."""
        thread = threading.Thread(target=self._run, args=(msg,), daemon=True)
        with self._slots:
            self._threads.add(thread)
        thread.start()
        return thread

    def _run(self, msg: Mapping[str, Any]) -> None:
        try:
            self.handle(msg)
        except Exception:  # never let one message take the process down
            log.exception("unexpected error handling a task")
        finally:
            with self._slots:
                self._threads.discard(threading.current_thread())
                self._slots.notify_all()

    def stop(self) -> None:
        """Stop taking work (SIGTERM)."""
        self.stopping.set()
        with self._slots:
            self._slots.notify_all()

    def drain(self, grace_s: float | None = None) -> None:
        """Wait up to the grace period for running tasks, then release what is still running.

        Released tasks report nothing (another worker redoes them); their children are killed
        so that their threads end and remove their scratch directories before the exit.
        """
        deadline = time.monotonic() + (self.grace_s if grace_s is None else grace_s)
        self._wait_threads(deadline)
        unfinished = []
        for lease in list(self._leases.values()):
            with lease.lock:
                if lease.released:
                    continue
                lease.released = True
                lease.stop.set()
            unfinished.append(lease)
        if unfinished and kill_children():
            self._wait_threads(time.monotonic() + CLEANUP_S)
        for lease in unfinished:
            log.warning("releasing an unfinished task", extra={"task": _name(lease.task)})
            if lease.keepalive is not None:  # an extend still in flight would hide it again
                lease.keepalive.join(timeout=CLEANUP_S)
            self._release(lease.receipt)
        if self.protection is not None:  # nothing runs here any more, whatever is still stuck
            self.protection.clear()

    def _wait_threads(self, deadline: float) -> None:
        with self._slots:
            while self._threads and time.monotonic() < deadline:
                self._slots.wait(min(1.0, max(0.0, deadline - time.monotonic())))

    @property
    def in_flight(self) -> int:
        with self._slots:
            return len(self._threads)

    # -- one message ------------------------------------------------------------------------

    def handle(self, msg: Mapping[str, Any]) -> Outcome:
        """Run one message to its end: report, then delete (or release, or leave for retry)."""
        receipt = msg["ReceiptHandle"]
        message_id.set(str(msg.get("MessageId", "")))
        try:
            task = parse_task(str(msg.get("Body", "")).encode())
        except PoisonMessage as exc:
            return self._poison(msg, exc)
        correlation_id.set(task.correlation_id)
        if self.protection is None:
            return self._handle(task, receipt)
        # The instance is not scaled in under a running task (worker/protection.py).
        self.protection.hold(receipt)
        try:
            return self._handle(task, receipt)
        finally:
            self.protection.release(receipt)

    def _handle(self, task: Task, receipt: str) -> Outcome:
        lease = _Lease(receipt=receipt, task=task)
        self._leases[receipt] = lease
        # In this task's context: its lines carry the task's correlation id too.
        keepalive = lease.keepalive = threading.Thread(
            target=contextvars.copy_context().run, args=(self._keepalive, lease), daemon=True
        )
        keepalive.start()
        started = time.monotonic()
        try:
            result, error = self._execute(task, lease)
        finally:
            lease.stop.set()
            keepalive.join(timeout=5)
            self._leases.pop(receipt, None)
        elapsed = round(time.monotonic() - started, 3)
        with lease.lock:
            if lease.released:  # handed back during shutdown: another worker redoes it
                return Outcome("released", task)
        if lease.callback_gone:  # the workflow stopped waiting: nothing to report
            log.warning("callback gone; dropping the task", extra={"task": task.name})
            return Outcome("abandoned", task, deleted=self._delete(receipt))
        reported = self._report(task, result, error)
        if reported is None:  # could not report: leave the message to reappear
            return Outcome("unreported", task, result, error)
        if reported is False:  # the workflow stopped waiting (timed out) while we worked
            return Outcome("abandoned", task, result, error, deleted=self._delete(receipt))
        status = "failed" if error else "succeeded"
        log.info(
            "task " + status,
            extra={"task": task.name, "duration_s": elapsed, **({"error": error} if error else {})},
        )
        return Outcome(status, task, result, error, deleted=self._delete(receipt))

    def _execute(
        self, task: Task, lease: _Lease
    ) -> tuple[dict[str, Any] | None, dict[str, str] | None]:
        handler = self.handlers.get(task.name)
        if handler is None:
            err = BusinessError(f"no handler for task {task.name!r}", code="unknown_task")
            return None, err.to_dict()
        try:
            if task.name in CONTRACTS:
                check_input(task.name, task.data)
            result = handler(task.data, self.context())
            if task.name in CONTRACTS:
                check_output(task.name, result)
        except SluiceError as exc:
            return None, exc.to_dict()
        except Exception as exc:  # a bug or an unexpected failure: let the workflow retry it
            log.error("task raised", extra={"task": task.name, "trace": traceback.format_exc()})
            return None, TransientError(f"{type(exc).__name__}: {exc}", code="unexpected").to_dict()
        if len(json.dumps(result).encode()) > MAX_RESULT_BYTES:
            err = BusinessError(
                "task result exceeds 256 KB; return an S3 reference", code="result_too_large"
            )
            return None, err.to_dict()
        return result, None

    def _keepalive(self, lease: _Lease) -> None:
        """Until the task ends: keep the message invisible and the callback's heartbeat fresh.

        The first heartbeat goes out at once (the task may have waited in the queue); the
        receive itself has just set the visibility.
        """
        assert lease.task is not None
        extend = False
        while True:
            if extend:
                try:
                    self.sqs.change_message_visibility(
                        QueueUrl=self.queue_url,
                        ReceiptHandle=lease.receipt,
                        VisibilityTimeout=self.visibility_timeout_s,
                    )
                except (ClientError, BotoCoreError) as exc:
                    log.warning("could not extend visibility", extra={"error": str(exc)})
                if self.protection is not None:  # a hung task's protection ends on time
                    self.protection.refresh()
            try:
                self.callbacks.send_durable_execution_callback_heartbeat(
                    CallbackId=lease.task.callback_id
                )
            except ClientError as exc:
                if error_code(exc) in CALLBACK_GONE:
                    lease.callback_gone = True
                    log.warning("callback gone during heartbeat", extra={"code": error_code(exc)})
                    return
                log.warning("heartbeat failed", extra={"error": str(exc)})
            except BotoCoreError as exc:
                log.warning("heartbeat failed", extra={"error": str(exc)})
            extend = True
            if lease.stop.wait(self.keepalive_s):
                return

    def _report(
        self, task: Task, result: dict[str, Any] | None, error: dict[str, str] | None
    ) -> bool | None:
        """Send the callback's outcome. True: reported; False: callback gone; None: retry later."""
        try:
            if error is None:
                self.callbacks.send_durable_execution_callback_success(
                    CallbackId=task.callback_id, Result=json.dumps(result).encode()
                )
            else:
                self.callbacks.send_durable_execution_callback_failure(
                    CallbackId=task.callback_id, Error=callback_error(error)
                )
            return True
        except ClientError as exc:
            if error_code(exc) in CALLBACK_GONE:
                log.warning("callback gone at report", extra={"code": error_code(exc)})
                return False
            log.error("could not report the task", extra={"error": str(exc)})
            return None
        except BotoCoreError as exc:
            log.error("could not report the task", extra={"error": str(exc)})
            return None

    def _poison(self, msg: Mapping[str, Any], exc: PoisonMessage) -> Outcome:
        """An unparseable task. If it names a callback, fail that callback; else let it dead-letter."""
        error = exc.to_dict()
        try:
            doc = json.loads(msg.get("Body", ""))
            callback_id = doc.get("callback_id") if isinstance(doc, dict) else None
        except (json.JSONDecodeError, TypeError):
            callback_id = None
        log.error("poison task", extra={"error": error})
        if isinstance(callback_id, str) and callback_id:
            fake = Task(
                name="invalid/task", callback_id=callback_id, data={}, correlation_id="unknown"
            )
            if self._report(fake, None, error) is not None:
                return Outcome(
                    "poison", None, error=error, deleted=self._delete(msg["ReceiptHandle"])
                )
        # No one to tell: receive it again at once so it reaches the DLQ after maxReceiveCount.
        self._release(msg["ReceiptHandle"])
        return Outcome("poison", None, error=error)

    def _delete(self, receipt: str) -> bool:
        try:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt)
            return True
        except (ClientError, BotoCoreError) as exc:
            # Reported but not deleted: a second delivery finds the callback gone and is dropped.
            log.warning("could not delete a reported task", extra={"error": str(exc)})
            return False

    def _release(self, receipt: str) -> None:
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=receipt, VisibilityTimeout=0
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not release a task", extra={"error": str(exc)})


def callback_error(error: Mapping[str, str]) -> dict[str, str]:
    """A Sluice error dict as the callback API's ErrorObject (ErrorType = the error class)."""
    kind = "BusinessError" if error.get("error_class") == "business" else "TransientError"
    return {
        "ErrorType": kind,
        "ErrorMessage": f"{error.get('code', '')}: {error.get('message', '')}"[:4096],
        "ErrorData": json.dumps(dict(error), sort_keys=True),
    }


def _name(task: Task | None) -> str:
    return task.name if task else "?"


def scale_in_protection(settings: TasksSettings, autoscaling: Any) -> ScaleInProtection | None:
    """The instance's protection, cleared: a process that died holding it starts here again."""
    if not settings.scale_in_protection:
        return None
    try:
        me = instance_id()
    except OSError as exc:  # not on EC2 (a local run): nothing to protect
        log.warning("no instance metadata: no scale-in protection", extra={"error": str(exc)})
        return None
    protection = ScaleInProtection(autoscaling, me, max_s=settings.protection_max_s)
    protection.clear()
    return protection


def main() -> None:  # pragma: no cover - exercised by the subprocess tests
    import boto3
    from botocore.config import Config

    from worker.credentials import process_session

    configure_logging("sluice-tasks")
    process_session("tasks")  # boto3's clients below call AWS as the tasks process's own role
    settings = TasksSettings.read()
    swept = sweep_scratch()  # what killed runs left behind (tens of MB per transcode)
    if swept:
        log.warning("removed scratch of dead runs", extra={"paths": [str(p) for p in swept]})
    cfg = Config(retries={"mode": "standard", "max_attempts": 5})
    s3 = boto3.client("s3", config=cfg)
    limits = Limits.of(settings)
    protection = scale_in_protection(settings, boto3.client("autoscaling", config=cfg))
    runner = TaskRunner(
        sqs=boto3.client("sqs", config=cfg),
        callbacks=boto3.client("lambda", config=cfg),
        queue_url=settings.queue_url,
        context=lambda: TaskContext(
            s3=s3, limits=limits, transcode_chunk_s=settings.transcode_chunk_s
        ),
        concurrency=settings.concurrency,
        visibility_timeout_s=settings.visibility_timeout_s,
        keepalive_s=settings.keepalive_s,
        grace_s=settings.grace_s,
        receive_wait_s=settings.receive_wait_s,
        protection=protection,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: runner.stop())
    runner.run_forever()
    if runner.in_flight:
        # A task thread still inside native code (onnxruntime, a wait on ffmpeg) makes the
        # interpreter's shutdown abort (SIGABRT). Its message is already released to the queue,
        # so there is nothing left to clean up: flush the logs and leave at once.
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
