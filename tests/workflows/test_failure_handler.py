"""Every declared workflow runs its failure handler exactly once, whatever ends a run badly: a
step's final failure, an error raised outside steps, the declared timeout.

Each workflow runs in AWS's local durable execution runner (every invoke and wait is a replay
of the handler, so "exactly once" holds across replays); its failure handler is the real
`on_failure` step (moto's DynamoDB and SNS), counted; the other steps are stand-ins.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aws_durable_execution_sdk_python.execution import InvocationStatus
from aws_durable_execution_sdk_python_testing.runner import DurableFunctionTestRunner

from lambdas.common import workflow as workflow_module
from lambdas.steps.on_failure.handler import handler as on_failure
from lambdas.workflows.deliver_webhook import handler as deliver_webhook
from lambdas.workflows.embed_transcript import handler as embed
from lambdas.workflows.transcode_audio import handler as transcode
from lambdas.workflows.transcribe_audio import handler as transcribe
from sluice.catalog import WORKFLOW_ALIAS
from sluice.envelope import Event
from sluice.errors import BusinessError
from sluice.run_control import RunRecords
from sluice.settings import LambdaSettings
from tests.lambdas.conftest import aws  # noqa: F401

# The Lambdas' variables, by setting (sluice.settings.LambdaSettings).
LAMBDA_VARS = LambdaSettings.variables()

WORKFLOWS = {
    "transcribe_audio": transcribe,
    "transcode_audio": transcode,
    "embed_transcript": embed,
    "deliver_webhook": deliver_webhook,
}


@dataclass
class Run:
    status: InvocationStatus
    error: Any
    calls: Counter
    failures: list[dict[str, Any]] = field(default_factory=list)


def good_event(name: str, bucket: str) -> Event:
    source = {"bucket": bucket, "key": "uploads/sermon.wav"}
    if name == "deliver_webhook":
        return Event(
            name="webhook/requested",
            id=f"{name}-1",
            data={"url": "https://hooks.example/x", "customer_id": "c-1", "payload": {"a": 1}},
        )
    if name == "transcribe_audio":
        return Event(name="media/transcription.requested", id=f"{name}-1", data=source)
    return Event(
        name="media/transcription.completed",
        id=f"{name}-1",
        data={
            "job_id": "job-1",
            "source": source,
            "outputs": {"transcript": f"s3://{bucket}/transcripts/job-1/transcript.json"},
        },
    )


def bad_event(name: str) -> Event:
    """An event the workflow accepts by name whose data it cannot use (an error outside steps)."""
    event_name = {
        "transcribe_audio": "media/transcription.requested",
        "deliver_webhook": "webhook/requested",
    }.get(name, "media/transcription.completed")
    return Event(name=event_name, id=f"{name}-bad", data={"note": "names no object"})


def fake_steps(fail: str | None) -> dict[str, Callable[[Any, Any], Any]]:
    """Stand-ins for the steps; `fail` raises a business error."""

    def answer(name: str, result: dict[str, Any]) -> Callable[[Any, Any], Any]:
        def step(event: Any, context: Any) -> Any:
            if name == fail:
                raise BusinessError(f"{name}: not audio", code="not_audio")
            return result

        return step

    return {
        "fetch_audio_metadata": answer(
            "fetch_audio_metadata", {"format": "wav", "duration_s": 2.0, "sample_rate": 16000}
        ),
        "start_transcription": answer("start_transcription", {"transcription_job": "sluice-x"}),
        "check_transcription": answer(
            "check_transcription",
            {"done": True, "transcript_bucket": "b", "transcript_key": "k", "language": "en-US"},
        ),
        "parse_save_transcription": answer(
            "parse_save_transcription", {"outputs": {"transcript": "s3://b/k"}, "word_count": 1}
        ),
        "notify_user": answer("notify_user", {"event_id": "e"}),
        "post_webhook": answer("post_webhook", {"status_code": 204}),
    }


def run(
    name: str,
    event: Event,
    *,
    fail: str | None = None,
    overrides: dict[str, Callable[[Any, Any], Any]] | None = None,
) -> Run:
    module = WORKFLOWS[name]
    calls: Counter = Counter()
    failures: list[dict[str, Any]] = []

    def counted(step: str, fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def target(payload: Any, context: Any) -> Any:
            calls[step] += 1
            if step == "on_failure":
                failures.append(json.loads(payload) if isinstance(payload, str) else payload)
            return fn(payload, context)

        return target

    steps = {**fake_steps(fail), **(overrides or {}), "on_failure": on_failure}
    with DurableFunctionTestRunner(handler=module.handler, skip_time=True) as runner:
        for step in module.DECLARATION.lambdas:
            runner.register_function(f"{step}:{WORKFLOW_ALIAS}", counted(step, steps[step]))
        arn = runner.run_async(
            input=event.to_json(), execution_name=event.execution_name, execution_timeout=120
        )
        result = runner.wait_for_result(arn, timeout=120)
    return Run(result.status, result.error, calls, failures)


@pytest.fixture
def media(aws, monkeypatch):  # noqa: F811
    """moto's AWS; the heavy workflows' tasks queue does not exist (sending a task fails)."""
    monkeypatch.setenv(
        LAMBDA_VARS["tasks_queue_url"], aws.queue_url.replace("events", "no-such-tasks")
    )
    monkeypatch.setenv(LAMBDA_VARS["heavy_backoff_s"], "1")
    return aws


def assert_failed_once(outcome: Run, aws: Any, event: Event, reason: str, workflow: str) -> None:  # noqa: F811
    assert outcome.status is InvocationStatus.FAILED
    assert outcome.calls["on_failure"] == 1, outcome.calls
    (failure,) = outcome.failures
    assert failure["reason"] == reason
    assert failure["workflow"] == workflow
    assert failure["job_id"] == event.execution_name
    assert failure["event_name"] == event.name
    # The default handler recorded it on the job and notified
    assert aws.job(event.execution_name)["status"] == "FAILED"
    notes = aws.notifications()
    assert len(notes) == 1 and notes[0]["job_id"] == event.execution_name
    # and the run is recorded with its event and reason, to outlive the durable history
    (record,) = RunRecords(aws.ddb, aws.coordination).list(workflow)
    assert (record.name, record.status) == (event.execution_name, "FAILED")
    assert record.reason == {k: failure[k] for k in record.reason}
    assert record.reason["reason"] == reason
    assert record.event == event.to_dict()


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
def test_a_steps_final_failure_runs_the_failure_handler_once(workflow, media):
    # Given a step that fails for good (transcribe, deliver_webhook: a business error from their
    # first step; the heavy workflows: their task cannot be sent, past every retry)
    event = good_event(workflow, media.bucket)
    # When the workflow runs
    first = "post_webhook" if workflow == "deliver_webhook" else "fetch_audio_metadata"
    outcome = run(workflow, event, fail=first)
    # Then the failure handler ran once, told which step failed
    assert_failed_once(outcome, media, event, "step_failed", workflow)
    expected = {
        "transcribe_audio": "fetch_audio_metadata",
        "transcode_audio": "transcode",
        "embed_transcript": "embed",
        "deliver_webhook": "post_webhook",
    }[workflow]
    assert outcome.failures[0]["step"] == expected
    assert expected in (outcome.error.message or "")


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
def test_an_error_outside_steps_runs_the_failure_handler_once(workflow, media):
    # Given an event whose data the workflow cannot use (raised by the workflow's own code)
    event = bad_event(workflow)
    # When the workflow runs
    outcome = run(workflow, event)
    # Then no step ran, the failure handler ran once with the error, the execution failed
    assert {k for k, v in outcome.calls.items() if v} == {"on_failure"}
    assert_failed_once(outcome, media, event, "error", workflow)
    assert outcome.failures[0]["error_type"] == "BusinessError"


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
def test_the_declared_timeout_runs_the_failure_handler_once(workflow, media, monkeypatch):
    # Given a clock past the declared timeout once the run has started
    timeout_s = WORKFLOWS[workflow].DECLARATION.timeout_s
    monkeypatch.setattr(workflow_module, "clock", lambda: time.time() + timeout_s + 60)
    event = good_event(workflow, media.bucket)
    # When the workflow runs
    outcome = run(workflow, event)
    # Then it stopped before its next step or task, ran the failure handler once, and failed
    assert_failed_once(outcome, media, event, "timeout", workflow)
    assert outcome.failures[0]["error_type"] == "WorkflowTimedOut"
    assert "timeout" in (outcome.error.message or "")
    assert sum(v for k, v in outcome.calls.items() if k != "on_failure") == 0


def test_a_timeout_in_the_middle_of_a_run_stops_it_there(media, monkeypatch):
    # Given transcribe_audio's clock passes the timeout once its first step has run
    calls: Counter = Counter()
    real = fake_steps(None)["fetch_audio_metadata"]

    def fetch(event: Any, context: Any) -> Any:
        calls["fetch"] += 1
        return real(event, context)

    timeout_s = transcribe.DECLARATION.timeout_s
    monkeypatch.setattr(
        workflow_module, "clock", lambda: time.time() + (timeout_s + 60 if calls["fetch"] else 0)
    )
    event = good_event("transcribe_audio", media.bucket)
    # When it runs
    outcome = run("transcribe_audio", event, overrides={"fetch_audio_metadata": fetch})
    # Then the first step ran once, the second never, and the failure handler once
    assert calls["fetch"] == 1
    assert outcome.calls["start_transcription"] == 0
    assert_failed_once(outcome, media, event, "timeout", "transcribe_audio")
    assert outcome.failures[0]["step"] == "start_transcription"
