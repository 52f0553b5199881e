"""The callback loop end to end: a durable workflow (in the local durable runner) sends its task
to the tasks queue (moto SQS), the tasks process logic runs it and reports through the callback
API, and the workflow completes, fails, or retries."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aws_durable_execution_sdk_python.execution import InvocationStatus
from aws_durable_execution_sdk_python_testing.runner import DurableFunctionTestRunner

from lambdas.workflows.embed_transcript.handler import handler as embed_handler
from lambdas.workflows.transcode_audio.handler import handler as transcode_handler
from sluice.envelope import Event, parse_task
from sluice.settings import LambdaSettings
from tests.heavy import sermon
from tests.heavy.conftest import Aws, RunnerCallbacks, make_audio
from worker.heavy import embed
from worker.tasks import TaskRunner

# The Lambdas' variables, by setting (sluice.settings.LambdaSettings).
LAMBDA_VARS = LambdaSettings.variables()


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workflow waits sized for tests: a 3 s heartbeat timeout, one retry, 1 s backoff."""
    monkeypatch.setenv(LAMBDA_VARS["heavy_heartbeat_timeout_s"], "3")
    monkeypatch.setenv(LAMBDA_VARS["heavy_max_attempts"], "2")
    monkeypatch.setenv(LAMBDA_VARS["heavy_backoff_s"], "1")


@contextmanager
def durable(handler: Callable) -> Iterator[tuple[DurableFunctionTestRunner, RunnerCallbacks]]:
    runner = DurableFunctionTestRunner(handler=handler, skip_time=True, poll_interval=0.05)
    try:
        yield runner, RunnerCallbacks(runner)
    finally:
        runner.close()


def tasks_runner(aws: Aws, callbacks: RunnerCallbacks, **kwargs: Any) -> TaskRunner:
    opts: dict[str, Any] = {"visibility_timeout_s": 30, "keepalive_s": 0.25, "receive_wait_s": 1}
    opts.update(kwargs)
    return TaskRunner(
        sqs=aws.sqs,
        callbacks=callbacks,
        queue_url=aws.tasks_url,
        context=aws.context,
        concurrency=1,
        **opts,
    )


def receive_one(aws: Aws, *, visibility: int = 30, timeout_s: float = 30) -> dict[str, Any]:
    """Wait until the workflow's submitter has put a task on the queue; receive it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = aws.sqs.receive_message(
            QueueUrl=aws.tasks_url,
            MaxNumberOfMessages=1,
            VisibilityTimeout=visibility,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        if got.get("Messages"):
            return got["Messages"][0]
        time.sleep(0.05)
    raise TimeoutError("no task arrived on the tasks queue")


def start(runner: DurableFunctionTestRunner, event: Event) -> str:
    return runner.run_async(
        input=event.to_json(), execution_name=event.execution_name, execution_timeout=120
    )


def transcription_completed(aws: Aws, *, key: str = "uploads/s.mp3", job: str = "job-7") -> Event:
    return Event(
        name="media/transcription.completed",
        id=f"{job}-transcribed",
        data={
            "job_id": job,
            "source": {"bucket": aws.bucket, "key": key},
            "outputs": {"transcript": f"s3://{aws.bucket}/transcripts/{job}/transcript.json"},
        },
    )


def test_transcode_workflow_completes_when_the_worker_reports_success(
    aws: Aws, tmp_path: Path, fast: None
) -> None:
    # Given an upload and the transcription.completed event that follows it
    aws.s3.upload_file(str(make_audio(tmp_path / "s.mp3", 8)), aws.bucket, "uploads/s.mp3")
    event = transcription_completed(aws)
    with durable(transcode_handler) as (runner, callbacks):
        arn = start(runner, event)
        # When the tasks process picks the task from the queue and runs it
        msg = receive_one(aws)
        task = parse_task(msg["Body"].encode())
        outcome = tasks_runner(aws, callbacks).handle(msg)
        result = runner.wait_for_result(arn, timeout=60)
    # Then the task carried the workflow's callback and correlation id, the worker reported
    # success before deleting, and the workflow completed with the master playlist
    assert task.name == "media/transcode" and task.correlation_id == event.correlation_id
    assert outcome.status == "succeeded" and outcome.deleted
    assert callbacks.calls[-1] == ("success", task.callback_id)
    assert result.status is InvocationStatus.SUCCEEDED
    out = json.loads(result.result)
    assert out["master"] == f"s3://{aws.bucket}/hls/job-7/master.m3u8"
    assert out["renditions"] == ["aac_64k", "aac_128k"]
    assert "hls/job-7/master.m3u8" in aws.keys("hls/job-7/")
    assert aws.visible() == 0 and aws.in_flight() == 0


def test_embed_workflow_completes_and_its_index_answers_a_query(
    aws: Aws, model, fast: None
) -> None:
    # Given a saved transcript and the transcription.completed event
    aws.s3.put_object(
        Bucket=aws.bucket,
        Key="transcripts/job-7/transcript.json",
        Body=json.dumps(sermon.document("job-7")).encode(),
    )
    with durable(embed_handler) as (runner, callbacks):
        arn = start(runner, transcription_completed(aws))
        # When the tasks process runs the embed task
        tasks_runner(aws, callbacks).handle(receive_one(aws))
        result = runner.wait_for_result(arn, timeout=60)
    # Then the workflow completed and the index it names serves retrieval
    assert result.status is InvocationStatus.SUCCEEDED
    out = json.loads(result.result)
    assert out["index"] == f"s3://{aws.bucket}/embeddings/job-7/"
    hits = embed.search(
        "where is the picnic",
        1,
        s3=aws.s3,
        bucket=aws.bucket,
        prefix="embeddings/job-7/",
        model=model,
    )
    assert "Riverside Park" in hits[0]["text"]


def test_a_failing_task_ends_the_workflow_in_its_failure_path_with_the_reason(
    aws: Aws, fast: None
) -> None:
    # Given an upload that is not audio
    aws.s3.put_object(Bucket=aws.bucket, Key="uploads/s.mp3", Body=b"not audio at all" * 100)
    with durable(transcode_handler) as (runner, callbacks):
        arn = start(runner, transcription_completed(aws))
        # When the worker runs the task
        outcome = tasks_runner(aws, callbacks).handle(receive_one(aws))
        result = runner.wait_for_result(arn, timeout=60)
    # Then the worker reported a business failure (and deleted the message), and the workflow
    # failed without retrying, its error naming the reason
    assert outcome.status == "failed" and outcome.deleted
    assert outcome.error is not None and outcome.error["code"] == "corrupt_audio"
    assert callbacks.count("failure") == 1
    assert result.status is InvocationStatus.FAILED
    assert result.error is not None
    assert "corrupt_audio" in (result.error.message or "")
    assert "1 attempts" in (result.error.message or "")
    assert aws.visible() == 0


def test_a_missing_transcript_fails_the_embed_workflow_with_the_reason(
    aws: Aws, fast: None
) -> None:
    # Given no transcript object where the event says it is
    with durable(embed_handler) as (runner, callbacks):
        arn = start(runner, transcription_completed(aws))
        tasks_runner(aws, callbacks).handle(receive_one(aws))
        result = runner.wait_for_result(arn, timeout=60)
    # Then the workflow fails with reason missing_transcript
    assert result.status is InvocationStatus.FAILED
    assert "missing_transcript" in (result.error.message or "")


def test_a_worker_that_dies_mid_task_leaves_the_message_for_another_worker(
    aws: Aws, tmp_path: Path, fast: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a transcode workflow waiting on its task (heartbeat timeout longer than the
    # message's visibility timeout, as in the stack: redelivery comes first)
    monkeypatch.setenv(LAMBDA_VARS["heavy_heartbeat_timeout_s"], "20")
    aws.s3.upload_file(str(make_audio(tmp_path / "s.mp3", 3)), aws.bucket, "uploads/s.mp3")
    with durable(transcode_handler) as (runner, callbacks):
        arn = start(runner, transcription_completed(aws))
        # When a worker receives the task and dies (no report, no delete, no heartbeat)
        first = receive_one(aws, visibility=1)
        assert aws.visible() == 0
        # Then the message reappears after its visibility timeout, with the same callback
        again = receive_one(aws, visibility=30, timeout_s=10)
        assert again["Body"] == first["Body"]
        assert int(again["Attributes"]["ApproximateReceiveCount"]) == 2
        # When a healthy worker runs it
        outcome = tasks_runner(aws, callbacks).handle(again)
        result = runner.wait_for_result(arn, timeout=60)
    # Then the workflow completes on its first attempt and the queue is empty
    assert outcome.status == "succeeded" and outcome.deleted
    assert result.status is InvocationStatus.SUCCEEDED
    assert len(callbacks.calls) >= 1 and callbacks.count("success") == 1
    assert aws.visible() == 0 and aws.in_flight() == 0


def test_a_lost_task_trips_the_heartbeat_timeout_and_the_workflow_sends_it_again(
    aws: Aws, tmp_path: Path, fast: None
) -> None:
    # Given a transcode workflow whose task was received and then lost for good
    aws.s3.upload_file(str(make_audio(tmp_path / "s.mp3", 3)), aws.bucket, "uploads/s.mp3")
    with durable(transcode_handler) as (runner, callbacks):
        arn = start(runner, transcription_completed(aws))
        lost = receive_one(aws, visibility=60)
        # When the heartbeat timeout (3 s) passes, Then a second task arrives with a new callback
        retry = receive_one(aws, visibility=30, timeout_s=15)
        assert (
            parse_task(retry["Body"].encode()).callback_id
            != parse_task(lost["Body"].encode()).callback_id
        )
        # When a healthy worker runs the second task
        outcome = tasks_runner(aws, callbacks).handle(retry)
        result = runner.wait_for_result(arn, timeout=60)
    # Then the workflow completes on its second attempt
    assert outcome.status == "succeeded"
    assert result.status is InvocationStatus.SUCCEEDED


@pytest.mark.slow
def test_heartbeats_keep_a_task_longer_than_the_heartbeat_timeout_alive(
    aws: Aws, fast: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a task that takes 3 s while the workflow's heartbeat timeout is 1 s
    monkeypatch.setenv(LAMBDA_VARS["heavy_heartbeat_timeout_s"], "1")

    def slow(data: Any, ctx: Any) -> dict[str, Any]:
        time.sleep(3)
        return {"master": "s3://b/k", "renditions": []}

    with durable(transcode_handler) as (runner, callbacks):
        arn = start(runner, transcription_completed(aws))
        # When the worker heartbeats every 0.25 s while it works
        worker = tasks_runner(aws, callbacks, handlers={"media/transcode": slow}, keepalive_s=0.25)
        outcome = worker.handle(receive_one(aws))
        result = runner.wait_for_result(arn, timeout=60)
    # Then the first attempt's callback stayed open and the workflow completed with its result
    assert outcome.status == "succeeded"
    assert callbacks.count("heartbeat") >= 6
    assert result.status is InvocationStatus.SUCCEEDED
    assert aws.visible() == 0


def test_without_heartbeats_a_long_task_times_out_the_callback(
    aws: Aws, monkeypatch: pytest.MonkeyPatch, fast: None
) -> None:
    # Given a workflow allowed one attempt, and a worker that heartbeats too rarely
    monkeypatch.setenv(LAMBDA_VARS["heavy_max_attempts"], "1")
    monkeypatch.setenv(LAMBDA_VARS["heavy_heartbeat_timeout_s"], "1")
    done = threading.Event()

    def slow(data: Any, ctx: Any) -> dict[str, Any]:
        done.wait(2.5)
        return {"master": "s3://b/k", "renditions": []}

    with durable(transcode_handler) as (runner, callbacks):
        arn = start(runner, transcription_completed(aws))
        worker = tasks_runner(aws, callbacks, handlers={"media/transcode": slow}, keepalive_s=10)
        # When the task outlives the heartbeat timeout
        outcome = worker.handle(receive_one(aws))
        result = runner.wait_for_result(arn, timeout=60)
    # Then the workflow gave up on the silent worker (callback timeout, a transient failure),
    # and the worker, finding the callback gone, dropped its late result
    assert result.status is InvocationStatus.FAILED
    assert "callback_timeout" in (result.error.message or "")
    assert outcome.status == "abandoned" and outcome.deleted
