"""The fan-in join of the media pipeline, run by AWS's local durable execution runner: the two
branches media/transcription.completed starts (transcode_audio, embed_transcript) end in either
order, fail, replay or run twice, and exactly one media/ready (or media/failed) reaches the events
queue, while the item's job record shows every branch."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aws_durable_execution_sdk_python.execution import InvocationStatus
from aws_durable_execution_sdk_python.lambda_service import ErrorObject
from aws_durable_execution_sdk_python_testing.runner import DurableFunctionTestRunner

from lambdas.workflows.embed_transcript.handler import WORKFLOW as EMBED_TRANSCRIPT
from lambdas.workflows.embed_transcript.handler import handler as embed_handler
from lambdas.workflows.transcode_audio.handler import WORKFLOW as TRANSCODE_AUDIO
from lambdas.workflows.transcode_audio.handler import handler as transcode_handler
from sluice.catalog import EMBED_TASK, TRANSCODE_TASK
from sluice.envelope import Event, parse_task
from sluice.settings import LambdaSettings

# The Lambdas' variables, by setting (sluice.settings.LambdaSettings).
LAMBDA_VARS = LambdaSettings.variables()

MEDIA = "media-1"
RESULTS = {
    TRANSCODE_TASK: {"master": "s3://b/hls/media-1/master.m3u8", "renditions": []},
    EMBED_TASK: {"index": "s3://b/embeddings/media-1/index.json", "chunks": 3, "model": "m"},
}
BRANCH_OF = {TRANSCODE_TASK: TRANSCODE_AUDIO, EMBED_TASK: EMBED_TRANSCRIPT}


@dataclass
class Pipeline:
    aws: Any
    tasks_url: str
    runners: dict[str, DurableFunctionTestRunner]

    def completed(self, event_id: str = "tc-1") -> Event:
        return Event(
            name="media/transcription.completed",
            id=event_id,
            data={
                "job_id": MEDIA,
                "source": {"bucket": self.aws.bucket, "key": "uploads/s.mp3"},
                "outputs": {"transcript": f"s3://{self.aws.bucket}/transcripts/{MEDIA}/t.json"},
            },
        )

    def start(self, event: Event) -> dict[str, str]:
        """Both branches, as the worker starts them: one execution each, named by the event."""
        return {
            branch: runner.run_async(
                input=event.to_json(), execution_name=event.execution_name, execution_timeout=120
            )
            for branch, runner in self.runners.items()
        }

    def tasks(self, n: int = 2) -> dict[str, str]:
        """Branch -> the callback id of its task, once `n` tasks are on the tasks queue."""
        found: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while len(found) < n and time.monotonic() < deadline:
            got = self.aws.sqs.receive_message(QueueUrl=self.tasks_url, MaxNumberOfMessages=10)
            for m in got.get("Messages", []):
                task = parse_task(m["Body"].encode())
                found[BRANCH_OF[task.name]] = task.callback_id
                self.aws.sqs.delete_message(
                    QueueUrl=self.tasks_url, ReceiptHandle=m["ReceiptHandle"]
                )
            time.sleep(0.02)
        assert len(found) == n, found
        return found

    def succeed(self, branch: str, callback_id: str) -> None:
        task = next(t for t, b in BRANCH_OF.items() if b == branch)
        self.runners[branch].send_callback_success(callback_id, json.dumps(RESULTS[task]).encode())

    def fail(self, branch: str, callback_id: str) -> None:
        self.runners[branch].send_callback_failure(
            callback_id,
            ErrorObject(
                message="corrupt_audio: not audio",
                type="BusinessError",
                data=json.dumps({"error_class": "business", "code": "corrupt_audio"}),
                stack_trace=None,
            ),
        )

    def result(self, branch: str, arn: str) -> Any:
        return self.runners[branch].wait_for_result(arn, timeout=60)

    def outcome_events(self) -> list[dict[str, Any]]:
        got = self.aws.sqs.receive_message(
            QueueUrl=self.aws.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0
        )
        return [json.loads(m["Body"]) for m in got.get("Messages", [])]


@pytest.fixture
def pipeline(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    tasks_url = aws.sqs.create_queue(QueueName="sluice-test-tasks")["QueueUrl"]
    monkeypatch.setenv(LAMBDA_VARS["tasks_queue_url"], tasks_url)
    monkeypatch.setenv(LAMBDA_VARS["heavy_max_attempts"], "1")
    runners = {
        TRANSCODE_AUDIO: DurableFunctionTestRunner(handler=transcode_handler, skip_time=True),
        EMBED_TRANSCRIPT: DurableFunctionTestRunner(handler=embed_handler, skip_time=True),
    }
    try:
        yield Pipeline(aws=aws, tasks_url=tasks_url, runners=runners)
    finally:
        for runner in runners.values():
            runner.close()


@pytest.mark.parametrize(
    "order", [(TRANSCODE_AUDIO, EMBED_TRANSCRIPT), (EMBED_TRANSCRIPT, TRANSCODE_AUDIO)]
)
def test_media_ready_is_emitted_once_when_both_branches_finish_in_either_order(pipeline, order):
    # Given both branches started by one transcription.completed event
    arns = pipeline.start(pipeline.completed())
    callbacks = pipeline.tasks()
    first, second = order
    # When the first finishes, nothing is emitted yet and the job record shows it
    pipeline.succeed(first, callbacks[first])
    assert pipeline.result(first, arns[first]).status is InvocationStatus.SUCCEEDED
    assert pipeline.outcome_events() == []
    assert pipeline.aws.job(MEDIA)[f"branch_{first}"] == "succeeded"
    # When the second finishes
    pipeline.succeed(second, callbacks[second])
    assert pipeline.result(second, arns[second]).status is InvocationStatus.SUCCEEDED
    # Then exactly one media/ready went out, with the deterministic id
    (ready,) = pipeline.outcome_events()
    assert (ready["name"], ready["id"]) == ("media/ready", f"ready-{MEDIA}")
    assert ready["data"]["branches"] == {
        TRANSCODE_AUDIO: "succeeded",
        EMBED_TRANSCRIPT: "succeeded",
    }
    # And the item's job record shows its whole state
    record = pipeline.aws.job(MEDIA)
    assert (
        record[f"branch_{TRANSCODE_AUDIO}"] == record[f"branch_{EMBED_TRANSCRIPT}"] == "succeeded"
    )
    assert (record["media_status"], record["media_event_id"]) == ("ready", f"ready-{MEDIA}")


def test_a_failed_branch_emits_media_failed_naming_it(pipeline):
    arns = pipeline.start(pipeline.completed())
    callbacks = pipeline.tasks()
    pipeline.fail(EMBED_TRANSCRIPT, callbacks[EMBED_TRANSCRIPT])
    assert (
        pipeline.result(EMBED_TRANSCRIPT, arns[EMBED_TRANSCRIPT]).status is InvocationStatus.FAILED
    )
    pipeline.succeed(TRANSCODE_AUDIO, callbacks[TRANSCODE_AUDIO])
    assert (
        pipeline.result(TRANSCODE_AUDIO, arns[TRANSCODE_AUDIO]).status is InvocationStatus.SUCCEEDED
    )
    (failed,) = pipeline.outcome_events()
    assert (failed["name"], failed["id"]) == ("media/failed", f"failed-{MEDIA}")
    assert failed["data"]["failed"] == [EMBED_TRANSCRIPT]
    record = pipeline.aws.job(MEDIA)
    assert (record["media_status"], record["failed_branches"]) == ("failed", [EMBED_TRANSCRIPT])
    assert record[f"branch_{EMBED_TRANSCRIPT}"] == "failed"


def test_a_duplicate_completion_event_and_replays_emit_nothing_more(pipeline):
    # Given the join already complete and media/ready sent
    arns = pipeline.start(pipeline.completed())
    for branch, cb in pipeline.tasks().items():
        pipeline.succeed(branch, cb)
        assert pipeline.result(branch, arns[branch]).status is InvocationStatus.SUCCEEDED
    assert len(pipeline.outcome_events()) == 1
    # When a duplicate transcription.completed (another event id) runs both branches again
    again = pipeline.start(pipeline.completed(event_id="tc-1-duplicate"))
    for branch, cb in pipeline.tasks().items():
        pipeline.succeed(branch, cb)
        result = pipeline.result(branch, again[branch])
        assert result.status is InvocationStatus.SUCCEEDED
        # (each branch replayed after its callback: the join step ran in the last invocation)
        assert result.get_step(f"join {branch}").result is not None
    # Then no second outcome event was sent
    (ready,) = pipeline.outcome_events()
    assert ready["id"] == f"ready-{MEDIA}"


def test_a_standalone_request_has_no_join(pipeline, aws):
    event = Event(
        name="media/transcode.requested",
        id="tr-1",
        data={"bucket": aws.bucket, "key": "uploads/s.mp3"},
    )
    arn = pipeline.runners[TRANSCODE_AUDIO].run_async(
        input=event.to_json(), execution_name=event.execution_name, execution_timeout=60
    )
    (cb,) = pipeline.tasks(1).values()
    pipeline.succeed(TRANSCODE_AUDIO, cb)
    result = pipeline.result(TRANSCODE_AUDIO, arn)
    assert result.status is InvocationStatus.SUCCEEDED
    assert pipeline.outcome_events() == []
    assert aws.job("tr-1") is None


def test_a_crash_after_the_send_re_sends_the_same_event_id(pipeline, monkeypatch):
    # Given the emitter's step fails once after sending, before marking the event sent
    from adapters.joins import Joins

    real, failures = Joins.mark_emitted, [RuntimeError("lost before the mark")]

    def flaky(self, media_id: str, event_id: str) -> None:
        if failures:
            raise failures.pop()
        real(self, media_id, event_id)

    monkeypatch.setattr(Joins, "mark_emitted", flaky)
    arns = pipeline.start(pipeline.completed())
    for branch, cb in pipeline.tasks().items():
        pipeline.succeed(branch, cb)
        assert pipeline.result(branch, arns[branch]).status is InvocationStatus.SUCCEEDED
    # Then the retried step sent again under the same id (the worker starts an id once)
    sent = pipeline.outcome_events()
    assert [e["id"] for e in sent] == [f"ready-{MEDIA}"] * 2
    assert pipeline.aws.job(MEDIA)["media_status"] == "ready"
