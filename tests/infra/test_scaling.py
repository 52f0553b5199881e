"""Scaling on the work and deploys that let it finish, in every environment's template.

The target tracking policies live in the bundle's .ebextensions/scaling.config (they name the Auto
Scaling group EB creates) and read their queues and targets from the environment's option
settings. The tests here put the two together as EB does when it builds the environment's stack,
then check what comes out: against the queues the stateful stack creates and sluice.naming names,
against the metrics AWS publishes, and against CloudFormation's own resource schemas (cfn-lint).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from cfnlint.api import ManualArgs, lint

from sluice import naming
from sluice.settings import TasksSettings
from stacks import published_metrics
from stacks.config import DRAIN_MARGIN_S
from stacks.heavy_steps import heavy_timeout_s
from stacks.worker_env import worker_bundle
from tests.infra.conftest import resources

CUSTOM = "aws:elasticbeanstalk:customoption"
COMMAND = "aws:elasticbeanstalk:command"
ROLLING = "aws:autoscaling:updatepolicy:rollingupdate"
APP_ENV = "aws:elasticbeanstalk:application:environment"
TASKS_VARS = TasksSettings.variables()
ASG = "AWSEBAutoScalingGroup"


def _options(s) -> dict[tuple[str, str], Any]:
    (env,) = resources(s.stateless, "AWS::ElasticBeanstalk::Environment").values()
    return {
        (o["Namespace"], o["OptionName"]): s.resolve(o["Value"])
        for o in env["Properties"]["OptionSettings"]
    }


def ebextensions_resources(options: dict[tuple[str, str], Any]) -> dict[str, Any]:
    """The bundle's .ebextensions Resources as EB puts them in the environment's stack: every
    Fn::GetOptionSetting replaced by the environment's option (or its DefaultValue)."""

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"Fn::GetOptionSetting"}:
                ref = node["Fn::GetOptionSetting"]
                key = (ref["Namespace"], ref["OptionName"])
                if key not in options and "DefaultValue" not in ref:
                    raise KeyError(f"no option {key} and no default")
                return options.get(key, ref.get("DefaultValue"))
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    out: dict[str, Any] = {}
    for path in sorted((worker_bundle() / ".ebextensions").glob("*.config")):
        out |= resolve(yaml.safe_load(path.read_text()).get("Resources", {}))
    return out


def target_tracking(s) -> dict[str, dict[str, Any]]:
    """The environment's target tracking policies, by logical id, as deployed."""
    found = ebextensions_resources(_options(s))
    return {
        lid: r["Properties"]
        for lid, r in found.items()
        if r["Type"] == "AWS::AutoScaling::ScalingPolicy"
        and r["Properties"]["PolicyType"] == "TargetTrackingScaling"
    }


def _metrics(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = policy["TargetTrackingConfiguration"]["CustomizedMetricSpecification"]
    return {m["Id"]: m for m in spec["Metrics"]}


def _queue_of(metric: dict[str, Any]) -> str:
    (dimension,) = metric["MetricStat"]["Metric"]["Dimensions"]
    assert dimension["Name"] == "QueueName"
    return str(dimension["Value"])


def _returned(policy: dict[str, Any]) -> dict[str, Any]:
    (returned,) = [m for m in _metrics(policy).values() if m.get("ReturnData", True)]
    return returned


def test_the_group_tracks_the_events_and_the_tasks_backlog_per_instance(synth, env):
    # Given an environment's template and the bundle's scaling policies
    s = synth(env)
    policies = target_tracking(s)
    by_queue = {
        frozenset(
            _queue_of(m)
            for m in _metrics(p).values()
            if "MetricStat" in m and m["MetricStat"]["Metric"]["Namespace"] == "AWS/SQS"
        ): p
        for p in policies.values()
    }
    events = naming.queue_name(env, "events")
    tasks = naming.queue_name(env, "tasks")
    # Then one policy follows each queue, named as the stateful stack names it
    assert set(by_queue) == {frozenset({events}), frozenset({tasks})}
    assert s.stateful_value("EventsQueue", "QueueName") == events
    assert s.stateful_value("TasksQueue", "QueueName") == tasks
    # And each divides its backlog by the group's in-service instances and holds it at the target
    worker = s.config.worker
    for queue, target, counted in (
        (events, worker.backlog_per_instance, {"ApproximateNumberOfMessagesVisible"}),
        (
            tasks,
            worker.tasks_per_instance,
            {"ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesNotVisible"},
        ),
    ):
        policy = by_queue[frozenset({queue})]
        assert policy["AutoScalingGroupName"] == {"Ref": ASG}
        assert float(policy["TargetTrackingConfiguration"]["TargetValue"]) == target
        metrics = _metrics(policy)
        on_queue = {
            m["MetricStat"]["Metric"]["MetricName"]: i
            for i, m in metrics.items()
            if "MetricStat" in m and m["MetricStat"]["Metric"]["Namespace"] == "AWS/SQS"
        }
        assert set(on_queue) == counted
        (instances,) = [
            i
            for i, m in metrics.items()
            if "MetricStat" in m and m["MetricStat"]["Metric"]["Namespace"] == "AWS/AutoScaling"
        ]
        group = metrics[instances]["MetricStat"]["Metric"]
        assert group["MetricName"] == "GroupInServiceInstances"
        assert group["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": {"Ref": ASG}}]
        expression = _returned(policy)["Expression"]
        assert expression.replace(" ", "").endswith(f"/{instances}")
        assert all(i in expression for i in on_queue.values())


def test_the_group_collects_the_instance_count_the_policies_divide_by(synth, env):
    found = ebextensions_resources(_options(synth(env)))
    collection = found[ASG]["Properties"]["MetricsCollection"]
    assert {"GroupInServiceInstances"} <= {m for c in collection for m in c["Metrics"]}


def test_every_scaling_metric_is_one_aws_publishes(synth, env):
    s = synth(env)
    engine = s.config.broker.engine_version if s.config.broker else None
    published = published_metrics.aws(engine)
    for lid, policy in target_tracking(s).items():
        for metric in _metrics(policy).values():
            if "MetricStat" not in metric:
                continue
            m = metric["MetricStat"]["Metric"]
            dims = frozenset(d["Name"] for d in m["Dimensions"])
            assert any(p.has(m["MetricName"], dims) for p in published.get(m["Namespace"], ())), (
                f"{lid}: {m['Namespace']} {m['MetricName']} by {sorted(dims)}"
            )


def test_the_scaling_resources_fit_cloudformations_schemas(synth, env):
    # Given the .ebextensions resources beside a group like the one EB creates
    s = synth(env)
    found = ebextensions_resources(_options(s))
    group = {
        "MinSize": str(s.config.worker.min_instances),
        "MaxSize": str(s.config.worker.max_instances),
        "LaunchTemplate": {"LaunchTemplateId": "lt-0123456789abcdef0", "Version": "1"},
        "VPCZoneIdentifier": ["subnet-0123456789abcdef0"],
        **found[ASG]["Properties"],
    }
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {
            **found,
            ASG: {"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": group},
        },
    }
    # When cfn-lint checks them against the resource schemas it ships
    matches = lint(json.dumps(template), config=ManualArgs(regions=[s.config.region]))
    # Then CloudFormation would accept every property
    assert [f"{m.rule.id} {m.path}: {m.message}" for m in matches if m.rule.id[0] == "E"] == []


def test_the_lint_of_scaling_resources_catches_a_misspelled_property():
    template = {
        "Resources": {
            "P": {
                "Type": "AWS::AutoScaling::ScalingPolicy",
                "Properties": {
                    "AutoScalingGroupName": "g",
                    "PolicyType": "TargetTrackingScaling",
                    "TargetTrackingConfiguration": {
                        "TargetValue": 2,
                        "CustomizedMetricSpecification": {
                            "Metrics": [{"Id": "m", "Expression": "1", "ReturnsData": True}]
                        },
                    },
                },
            }
        }
    }
    matches = lint(json.dumps(template), config=ManualArgs(regions=["eu-west-1"]))
    assert any("ReturnsData" in m.message for m in matches)


def test_deploys_keep_capacity_and_give_the_tasks_their_drain(synth, env):
    # Given an environment's template
    s = synth(env)
    o, worker = _options(s), s.config.worker
    # Then deploys and instance replacements follow the configured policy, one instance at a
    # time, and never all at once
    assert o[(COMMAND, "DeploymentPolicy")] == worker.deployment_policy
    assert o[(COMMAND, "DeploymentPolicy")] in ("RollingWithAdditionalBatch", "Immutable")
    assert (o[(COMMAND, "BatchSizeType")], o[(COMMAND, "BatchSize")]) == ("Fixed", "1")
    assert o[(ROLLING, "RollingUpdateEnabled")] == "true"
    assert o[(ROLLING, "RollingUpdateType")] == (
        "Immutable" if worker.deployment_policy == "Immutable" else "Health"
    )
    # And one instance's deploy outlasts the tasks process's drain, which it is told
    assert o[(APP_ENV, TASKS_VARS["grace_s"])] == str(worker.drain_s)
    assert int(o[(COMMAND, "Timeout")]) >= worker.drain_s + DRAIN_MARGIN_S
    # And the drain is longer than the 60 s the tasks process had before
    assert worker.drain_s > 60


@pytest.mark.parametrize(("env_name", "policy"), [("staging", "Immutable"), ("prod", "Immutable")])
def test_staging_and_prod_deploy_to_a_new_set_of_instances(synth, env_name, policy):
    assert _options(synth(env_name))[(COMMAND, "DeploymentPolicy")] == policy


def test_the_tasks_process_protects_its_instance_for_at_most_a_tasks_longest_run(synth, env):
    # Given an environment's template
    s = synth(env)
    o = _options(s)
    # Then the tasks process is told to protect its instance, for no longer than an attempt runs
    assert o[(APP_ENV, TASKS_VARS["scale_in_protection"])] == "True"
    assert o[(APP_ENV, TASKS_VARS["protection_max_s"])] == str(heavy_timeout_s(s.config))
    # And its role may protect instances only in groups tagged with this environment's name
    policies = resources(s.stateless, "AWS::IAM::ManagedPolicy")
    (policy,) = [p for lid, p in policies.items() if lid.startswith("WorkerScaleInProtection")]
    props = policy["Properties"]
    assert "WorkerTasksRole" in json.dumps(props["Roles"])
    by_sid = {st["Sid"]: st for st in props["PolicyDocument"]["Statement"]}
    protect = by_sid["ProtectOwnInstance"]
    assert protect["Action"] == "autoscaling:SetInstanceProtection"
    assert protect["Condition"] == {
        "StringEquals": {
            "autoscaling:ResourceTag/elasticbeanstalk:environment-name": f"Sluice-{env}-worker"
        }
    }
    assert ":autoScalingGroup:" in json.dumps(s.resolve(protect["Resource"]))
    assert by_sid["FindOwnGroup"]["Action"] == "autoscaling:DescribeAutoScalingInstances"
