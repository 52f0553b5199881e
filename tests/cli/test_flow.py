"""`sluice flow waiting`: what a throttle holds back, as the worker recorded it."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import boto3

from adapters.flow import FlowStore
from sluice import naming
from sluice.envelope import Event
from sluice.workflows import Debounce, Flow, Priority, Throttle
from tests.cli.conftest import ENV, REGION
from tests.lambdas.conftest import create_coordination_table
from worker.flow import FlowControl

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


class Nowhere:
    def send_message(self, **_: object) -> None:
        pass


def hold(clock: list[float]) -> None:
    ddb = boto3.client("dynamodb", region_name=REGION)
    create_coordination_table(ddb, naming.coordination_table(ENV))
    control = FlowControl(
        FlowStore(ddb, naming.coordination_table(ENV), clock=lambda: clock[0]),
        sqs=Nowhere(),
        queue_url="events",
        clock=lambda: clock[0],
    )
    flow = Flow(
        throttle=Throttle(limit=1, period_s=60, key="data.customer_id"),
        priority=Priority(key="data.priority"),
    )
    for n, (customer, priority) in enumerate([("c1", 0), ("c1", 0), ("c1", 7), ("c2", 0)]):
        clock[0] = NOW + n
        event = Event(
            name="webhook/requested",
            data={"customer_id": customer, "priority": priority},
            id=f"evt-{n}",
        )
        control.admit("deliver_webhook", flow, event, lambda e: None)
    debounce = Flow(debounce=Debounce(quiet_s=60, key="data.user_id"))
    for n in (1, 2):  # a debounce shows its latest event, since the first of its quiet period
        clock[0] = NOW + 10 * n
        event = Event(name="webhook/requested", data={"user_id": "u1"}, id=f"evt-d{n}")
        control.admit("notify", debounce, event, lambda e: None)


def test_waiting_shows_each_held_event_its_key_priority_and_since_when(aws, run, monkeypatch):
    clock = [NOW]
    hold(clock)
    module = sys.modules["sluice_cli.flow"]  # (the package's `flow` is the command group)
    monkeypatch.setattr(module, "time", SimpleNamespace(time=lambda: NOW + 90))
    result = run("flow", "waiting")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["WORKFLOW", "CONTROL", "KEY", "EVENT", "PRIO", "SINCE", "WAITED"]
    assert [line.split() for line in lines[1:-1]] == [
        ["deliver_webhook", "throttle", "c1", "evt-1", "0", "2027-01-15T08:00:01.000Z", "89", "s"],
        ["deliver_webhook", "throttle", "c1", "evt-2", "7", "2027-01-15T08:00:02.000Z", "88", "s"],
        ["notify", "debounce", "u1", "evt-d2", "0", "2027-01-15T08:00:10.000Z", "80", "s"],
    ]
    assert lines[-1] == "3 waiting"
    as_json = run("flow", "waiting", "--workflow", "deliver_webhook", "--json")
    assert [json.loads(line) for line in as_json.output.splitlines()] == [
        {
            "workflow": "deliver_webhook",
            "control": "throttle",
            "key": "c1",
            "event_id": f"evt-{n}",
            "priority": priority,
            "since": f"2027-01-15T08:00:0{n}.000Z",
            "waited_s": 90.0 - n,
        }
        for n, priority in ((1, 0), (2, 7))
    ]
    assert run("flow", "waiting", "--workflow", "transcribe_audio").output == (
        f"nothing waits in {naming.coordination_table(ENV)} for transcribe_audio\n"
    )
