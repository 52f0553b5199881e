"""The transcription workflow run for real by AWS's local durable execution runner.

The real step handlers are registered as the workflow's invoke targets (`<step>:live`); each
registration counts its calls so tests can tell what ran. AWS APIs are moto's.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aws_durable_execution_sdk_python_testing.runner import (
    DurableFunctionTestResult,
    DurableFunctionTestRunner,
)

from lambdas.steps.check_transcription.handler import handler as check_transcription
from lambdas.steps.fetch_audio_metadata.handler import handler as fetch_audio_metadata
from lambdas.steps.notify_user.handler import handler as notify_user
from lambdas.steps.on_failure.handler import handler as on_failure
from lambdas.steps.parse_save_transcription.handler import handler as parse_save_transcription
from lambdas.steps.start_transcription.handler import handler as start_transcription
from lambdas.steps.start_transcription.handler import output_key
from lambdas.workflows.transcribe_audio import handler as workflow
from sluice.catalog import WORKFLOW_ALIAS
from sluice.envelope import Event
from tests.lambdas.conftest import SERMON, aws, transcribe_json  # noqa: F401

STEPS: dict[str, Callable[..., Any]] = {
    "fetch_audio_metadata": fetch_audio_metadata,
    "start_transcription": start_transcription,
    "check_transcription": check_transcription,
    "parse_save_transcription": parse_save_transcription,
    "notify_user": notify_user,
    "on_failure": on_failure,
}


@dataclass
class Harness:
    runner: DurableFunctionTestRunner
    aws: Any
    calls: Counter = field(default_factory=Counter)
    # step -> exceptions to raise on its next calls, before the real handler runs
    faults: dict[str, list[Exception]] = field(default_factory=dict)

    def event(self, key: str = "uploads/sermon.wav", event_id: str = "01JD3SERMON") -> Event:
        return Event(
            name="media/transcription.requested",
            id=event_id,
            data={"bucket": self.aws.bucket, "key": key},
        )

    def transcript_ready(self, event: Event, words=SERMON) -> None:
        """What Transcribe would write when the job completes (moto writes nothing)."""
        self.aws.s3.put_object(
            Bucket=self.aws.bucket,
            Key=output_key(event.execution_name),
            Body=json.dumps(transcribe_json(list(words))),
        )

    def start(self, event: Event) -> str:
        return self.runner.run_async(
            input=event.to_json(), execution_name=event.execution_name, execution_timeout=120
        )

    def run(self, event: Event) -> DurableFunctionTestResult:
        return self.runner.wait_for_result(self.start(event), timeout=120)


@pytest.fixture
def harness(aws) -> Iterator[Harness]:  # noqa: F811
    calls: Counter = Counter()
    faults: dict[str, list[Exception]] = {}

    def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def target(event: Any, context: Any) -> Any:
            calls[name] += 1
            if faults.get(name):
                raise faults[name].pop(0)
            return fn(event, context)

        return target

    def orchestrator(event: Any, context: Any) -> Any:
        calls["workflow invocations"] += 1
        return workflow.handler(event, context)

    with DurableFunctionTestRunner(handler=orchestrator, skip_time=True) as runner:
        for name, fn in STEPS.items():
            runner.register_function(f"{name}:{WORKFLOW_ALIAS}", counted(name, fn))
        yield Harness(runner=runner, aws=aws, calls=calls, faults=faults)


def result_payload(result: DurableFunctionTestResult) -> dict[str, Any]:
    return json.loads(result.result) if isinstance(result.result, str) else result.result  # type: ignore[return-value]
