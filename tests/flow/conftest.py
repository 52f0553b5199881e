"""Flow control under test: the real dispatcher and flow control on moto's DynamoDB (the
coordination table), with a clock the test moves, a Lambda that starts each execution name once
(as Lambda durable does) and an events queue that keeps each delayed message until the clock
reaches it and hands it back as sqsd would (also again after a 503)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from moto import mock_aws

from adapters.flow import FlowStore
from sluice.envelope import Event
from sluice.settings import WebSettings
from sluice.workflows import Flow
from tests.lambdas.conftest import COORDINATION_TABLE, REGION, create_coordination_table
from worker.cancels import Canceller
from worker.dispatch import Delivery, Dispatcher, Result
from worker.flow import FlowControl
from worker.observability import Metrics

WORKFLOW = "deliver_webhook"  # webhook/requested starts it
ALIAS = f"arn:aws:lambda:{REGION}:123456789012:function:deliver-webhook:live"
EVENTS_URL = f"https://sqs.{REGION}.amazonaws.com/123456789012/Sluice-test-events"
DLQ_URL = EVENTS_URL + "-dlq"
FAILURE_HANDLER = "deliver_webhook_on_failure"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Lambda:
    """Starts one execution per name (the same name and payload again: the same execution)."""

    clock: Clock
    starts: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    invokes: int = 0
    fail: Callable[[str], Exception | None] = lambda name: None
    handled: list[dict[str, Any]] = field(default_factory=list)  # failure handlers' payloads

    def invoke(self, **request: Any) -> dict[str, Any]:
        if request.get("InvocationType") == "RequestResponse":  # a failure handler, run once
            self.handled.append(json.loads(request["Payload"]))
            return {"StatusCode": 200}
        self.invokes += 1
        name = request["DurableExecutionName"]
        problem = self.fail(name)
        if problem is not None:
            raise problem
        if name not in {n for _, n, _ in self.starts}:
            self.starts.append((self.clock.now, name, json.loads(request["Payload"])))
        return {"DurableExecutionArn": f"{request['FunctionName']}/durable-execution/{name}/x"}

    def started(self) -> list[str]:
        return [name for _, name, _ in self.starts]


@dataclass
class Queue:
    """The events queue and its DLQ as the worker sends to them; delayed messages wait."""

    clock: Clock
    pending: list[tuple[float, int, str]] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    sent: int = 0

    def send_message(self, *, QueueUrl: str, MessageBody: str, **rest: Any) -> dict[str, str]:
        if QueueUrl == DLQ_URL:
            self.dead.append(MessageBody)
        else:
            self.sent += 1
            delay = int(rest.get("DelaySeconds", 0))
            assert 0 <= delay <= 900  # SQS's limit
            self.pending.append((self.clock.now + delay, self.sent, MessageBody))
        return {"MessageId": str(self.sent)}

    def due(self) -> list[str]:
        ready = sorted(m for m in self.pending if m[0] <= self.clock.now)
        self.pending = [m for m in self.pending if m[0] > self.clock.now]
        return [body for _, _, body in ready]


@dataclass
class Pipeline:
    clock: Clock
    lam: Lambda
    queue: Queue
    ddb: Any
    store: FlowStore
    flows: dict[str, Flow]
    log: io.StringIO
    results: list[Result] = field(default_factory=list)
    wrap_store: Callable[[FlowStore], Any] = lambda store: store

    def canceller(self) -> Canceller:
        """The worker's declared cancellation (the catalog's `cancel_on`), on the same table."""
        return Canceller(
            lambda_client=self.lam,
            dynamodb_client=self.ddb,
            table=COORDINATION_TABLE,
            failure_handlers={WORKFLOW: FAILURE_HANDLER},
            clock=self.clock,
        )

    def dispatcher(self) -> Dispatcher:
        """A fresh worker process: nothing in memory, the same table and queues."""
        metrics = Metrics("Sluice/Worker", {"Environment": "test"}, stream=self.log)
        canceller = self.canceller()
        control = FlowControl(
            self.wrap_store(self.store),
            sqs=self.queue,
            queue_url=EVENTS_URL,
            clock=self.clock,
            canceller=canceller,
        )
        return Dispatcher(
            settings=WebSettings.of(
                env="test", workflow_aliases={WORKFLOW: ALIAS}, events_dlq_url=DLQ_URL
            ),
            lambda_client=self.lam,
            sqs_client=self.queue,
            metrics=metrics,
            flow_control=control,
            canceller=canceller,
        )

    def deliver(self, body: str, *, attempts: int = 10) -> Result:
        """sqsd: POST until the worker answers 200 (each POST by a fresh worker process)."""
        for attempt in range(1, attempts + 1):
            result = self.dispatcher().handle(body.encode(), Delivery(receive_count=attempt))
            self.results.append(result)
            if result.status == 200:
                return result
        raise AssertionError(f"not accepted after {attempts} attempts: {result}")

    def send(self, event: Event) -> Result:
        self.clock.now += 0.001  # arrivals are distinct in time
        return self.deliver(event.to_json())

    def run_until(self, until: float, *, step: float = 1.0) -> None:
        """Let time pass, handing sqsd's delayed wake-ups to the worker when they are due."""
        while self.clock.now < until:
            for body in self.queue.due():
                self.deliver(body)
            self.clock.now = min(until, self.clock.now + step)
        for body in self.queue.due():
            self.deliver(body)

    def count(self, name: str) -> int:
        return sum(r.counts.get(name, 0) for r in self.results)

    def log_lines(self, message: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log.getvalue().splitlines() if line]
        return [line for line in lines if line.get("message") == message]


def webhook(n: int | str, customer: str = "c1", **data: Any) -> Event:
    return Event(
        name="webhook/requested",
        data={"customer_id": customer, "url": "https://example.com/hook", **data},
        id=f"evt-{n}",
        ts="2026-12-02T08:00:00Z",
    )


@pytest.fixture
def pipeline(monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    from worker.observability import configure_logging

    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        create_coordination_table(ddb)
        clock = Clock()
        flows: dict[str, Flow] = {}
        monkeypatch.setattr("worker.dispatch.FLOWS", flows)
        log = io.StringIO()
        configure_logging("sluice-worker-test", stream=log)
        yield Pipeline(
            clock=clock,
            lam=Lambda(clock),
            queue=Queue(clock),
            ddb=ddb,
            store=FlowStore(ddb, COORDINATION_TABLE, clock=clock),
            flows=flows,
            log=log,
        )


class Killed(Exception):
    """The worker process dies here (sqsd sees no 200 and sends the message again)."""


@dataclass
class Fault:
    """Kill the worker at the `nth` call of `method` (counted over every worker process), just
    before the call or just after it took effect."""

    method: str
    nth: int
    after: bool
    calls: int = 0
    fired: int = 0

    def wrap(self, target: Any) -> Any:
        fault = self

        class Faulty:
            def __getattr__(self, name: str) -> Any:
                real = getattr(target, name)
                if name != fault.method:
                    return real

                def call(*args: Any, **kwargs: Any) -> Any:
                    fault.calls += 1
                    if fault.calls != fault.nth:
                        return real(*args, **kwargs)
                    fault.fired += 1
                    if fault.after:
                        real(*args, **kwargs)
                    raise Killed(f"killed {'after' if fault.after else 'before'} {name}")

                return call

        return Faulty()
