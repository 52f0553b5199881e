"""Scale-in protection of the tasks process's instance (worker/protection.py): held while a task
runs, given up when the last one ends or outlives its longest run, cleared at start; a failed call
never fails a task. Against moto's Auto Scaling, and a botocore Stubber (which checks every call
against the Auto Scaling service model) for the failures."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from tests.heavy.conftest import REGION, Aws
from tests.heavy.test_tasks import Callbacks, echo, receive, runner, send
from worker.protection import ScaleInProtection, instance_id

GROUP = "awseb-e-test-stack-AWSEBAutoScalingGroup-TEST"


@dataclass
class Group:
    autoscaling: Any
    instance: str

    def protected(self) -> bool:
        found = self.autoscaling.describe_auto_scaling_instances(InstanceIds=[self.instance])
        return bool(found["AutoScalingInstances"][0]["ProtectedFromScaleIn"])


@pytest.fixture
def group(aws: Aws) -> Group:
    """An Auto Scaling group of one instance in moto (inside the `aws` fixture's mock)."""
    ec2 = boto3.client("ec2", region_name=REGION)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.create_launch_template(
        LaunchTemplateName="worker",
        LaunchTemplateData={"ImageId": image, "InstanceType": "t3.medium"},
    )
    autoscaling = boto3.client("autoscaling", region_name=REGION)
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=GROUP,
        LaunchTemplate={"LaunchTemplateName": "worker", "Version": "$Latest"},
        MinSize=1,
        MaxSize=2,
        DesiredCapacity=1,
        AvailabilityZones=[f"{REGION}a"],
    )
    (instance,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])[
        "AutoScalingGroups"
    ][0]["Instances"]
    return Group(autoscaling, instance["InstanceId"])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_running_task_protects_its_instance_until_it_ends(aws: Aws, group: Group) -> None:
    # Given the tasks process on an instance of the group, and a task on the queue
    protection = ScaleInProtection(group.autoscaling, group.instance, max_s=3600)
    seen: list[bool] = []

    def step(data: Any, ctx: Any) -> dict[str, Any]:
        seen.append(group.protected())
        return echo(data, ctx)

    send(aws, x=1)
    callbacks = Callbacks()
    # When the task runs
    outcome = runner(aws, callbacks, {"media/echo": step}, protection=protection).handle(
        receive(aws)
    )
    # Then the instance was protected from scale-in while it ran, and is not any more
    assert seen == [True]
    assert outcome.status == "succeeded"
    assert not group.protected()


def test_protection_lasts_while_any_task_runs(group: Group) -> None:
    protection = ScaleInProtection(group.autoscaling, group.instance, max_s=3600)
    protection.hold("a")
    protection.hold("b")
    protection.release("a")
    assert group.protected()
    protection.release("b")
    assert not group.protected()


def test_a_task_that_outlives_its_longest_run_stops_protecting_the_instance(group: Group) -> None:
    # Given a task that holds protection and then hangs
    clock = Clock()
    protection = ScaleInProtection(group.autoscaling, group.instance, max_s=600, clock=clock)
    protection.hold("hung")
    clock.now += 599
    protection.refresh()
    assert group.protected()
    # When its longest run has passed, at the keep-alive's next refresh
    clock.now += 1
    protection.refresh()
    # Then the instance may be scaled in again
    assert not group.protected() and not protection.wanted


def test_a_process_that_died_protected_clears_it_when_it_starts_again(group: Group) -> None:
    # Given an instance left protected by a tasks process that was killed mid-task
    ScaleInProtection(group.autoscaling, group.instance, max_s=3600).hold("killed")
    assert group.protected()
    # When the next process starts
    ScaleInProtection(group.autoscaling, group.instance, max_s=3600).clear()
    # Then the instance is no longer protected
    assert not group.protected()


def test_a_failed_protection_call_does_not_fail_the_task_and_is_retried(aws: Aws) -> None:
    # Given Auto Scaling refusing the first protection call (every call checked against the
    # service model by the Stubber)
    autoscaling = boto3.client("autoscaling", region_name=REGION)
    stub = Stubber(autoscaling)
    me = "i-0123456789abcdef0"
    found = {
        "AutoScalingInstances": [
            {
                "InstanceId": me,
                "AutoScalingGroupName": GROUP,
                "AvailabilityZone": f"{REGION}a",
                "LifecycleState": "InService",
                "HealthStatus": "HEALTHY",
                "ProtectedFromScaleIn": False,
            }
        ]
    }
    asked = {"InstanceIds": [me]}
    protect = {"InstanceIds": [me], "AutoScalingGroupName": GROUP}
    stub.add_response("describe_auto_scaling_instances", found, asked)
    stub.add_client_error(
        "set_instance_protection",
        "Throttling",
        http_status_code=400,
        expected_params={**protect, "ProtectedFromScaleIn": True},
    )
    # the task's end: not protected is what it wants, and AWS's state is unknown, so it asks
    stub.add_response("describe_auto_scaling_instances", found, asked)
    stub.add_response("set_instance_protection", {}, {**protect, "ProtectedFromScaleIn": False})
    protection = ScaleInProtection(autoscaling, me, max_s=3600)
    send(aws)
    # When a task runs (ending before the keep-alive's first refresh)
    with stub:
        outcome = runner(
            aws,
            Callbacks(),
            {"media/echo": echo},
            protection=protection,
            visibility_timeout_s=120,
            keepalive_s=60,
        ).handle(receive(aws))
        # Then the task succeeded and was deleted all the same, and every expected call was made
        assert outcome.status == "succeeded" and outcome.deleted
        stub.assert_no_pending_responses()


def test_a_refused_protection_is_asked_again_at_the_next_refresh() -> None:
    # Given Auto Scaling refusing the protection a task asks for
    autoscaling = boto3.client("autoscaling", region_name=REGION)
    stub = Stubber(autoscaling)
    me = "i-0123456789abcdef0"
    found = {
        "AutoScalingInstances": [
            {
                "InstanceId": me,
                "AutoScalingGroupName": GROUP,
                "AvailabilityZone": f"{REGION}a",
                "LifecycleState": "InService",
                "HealthStatus": "HEALTHY",
                "ProtectedFromScaleIn": False,
            }
        ]
    }
    protect = {"InstanceIds": [me], "AutoScalingGroupName": GROUP, "ProtectedFromScaleIn": True}
    stub.add_response("describe_auto_scaling_instances", found, {"InstanceIds": [me]})
    stub.add_client_error("set_instance_protection", "Throttling", expected_params=protect)
    stub.add_response("describe_auto_scaling_instances", found, {"InstanceIds": [me]})
    stub.add_response("set_instance_protection", {}, protect)
    protection = ScaleInProtection(autoscaling, me, max_s=3600)
    with stub:
        protection.hold("t")
        # When the keep-alive refreshes it
        protection.refresh()
        # Then it asked again; a further refresh asks nothing (the stub has nothing left)
        protection.refresh()
        stub.assert_no_pending_responses()


def test_an_instance_outside_any_group_is_left_alone(aws: Aws) -> None:
    autoscaling = boto3.client("autoscaling", region_name=REGION)
    stub = Stubber(autoscaling)
    stub.add_response("describe_auto_scaling_instances", {"AutoScalingInstances": []})
    with stub:
        ScaleInProtection(autoscaling, "i-0123456789abcdef0", max_s=60).hold("t")
        stub.assert_no_pending_responses()


# -- the instance's id, from the metadata service (IMDSv2) ------------------------------------


@pytest.fixture
def metadata() -> Iterator[str]:
    """A metadata service on loopback that answers only with a session token, as IMDSv2 does
    when v1 is disabled (the environment's DisableIMDSv1)."""

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            ok = self.path == "/latest/api/token" and self.headers.get(
                "X-aws-ec2-metadata-token-ttl-seconds"
            )
            self._answer(200 if ok else 400, b"token-1")

        def do_GET(self) -> None:
            if self.headers.get("X-aws-ec2-metadata-token") != "token-1":
                self._answer(401, b"")
            elif self.path == "/latest/meta-data/instance-id":
                self._answer(200, b"i-0123456789abcdef0")
            else:
                self._answer(404, b"")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/latest"
    finally:
        server.shutdown()
        server.server_close()


def test_the_instance_id_comes_from_imdsv2(metadata: str) -> None:
    assert instance_id(metadata) == "i-0123456789abcdef0"
