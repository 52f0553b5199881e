"""The optional scheduler broker: Amazon MQ for RabbitMQ, private, worker-only, with alarms."""

from __future__ import annotations

import json

import pytest

from tests.infra.conftest import resources
from worker.scheduler import REGISTRY
from worker.scheduler.topology import Names

WITH_BROKER = ("staging", "prod")


def broker(synth, env) -> dict:
    (props,) = [
        r["Properties"] for r in resources(synth(env).stateful, "AWS::AmazonMQ::Broker").values()
    ]
    return props


def test_dev_has_no_broker(synth):
    assert resources(synth("dev").stateful, "AWS::AmazonMQ::Broker") == {}


@pytest.mark.parametrize(
    ("env", "mode", "subnets"), [("staging", "SINGLE_INSTANCE", 1), ("prod", "CLUSTER_MULTI_AZ", 2)]
)
def test_broker_is_rabbitmq_sized_from_config(synth, env, mode, subnets):
    props = broker(synth, env)
    cfg = synth(env).config.broker
    assert props["EngineType"] == "RABBITMQ"
    assert props["EngineVersion"] == cfg.engine_version
    assert props["HostInstanceType"] == cfg.instance_type
    assert props["DeploymentMode"] == mode
    assert len(props["SubnetIds"]) == subnets


@pytest.mark.parametrize("env", WITH_BROKER)
def test_broker_is_private_in_private_subnets(synth, env):
    props = broker(synth, env)
    template = synth(env).stateful.to_json()["Resources"]
    assert props["PubliclyAccessible"] is False
    for ref in props["SubnetIds"]:
        subnet = template[ref["Ref"]]
        tags = {t["Key"]: t["Value"] for t in subnet["Properties"]["Tags"]}
        assert tags["aws-cdk:subnet-type"] == "Private"


@pytest.mark.parametrize("env", WITH_BROKER)
def test_broker_keeps_logs_a_maintenance_window_and_minor_upgrades(synth, env):
    props = broker(synth, env)
    cfg = synth(env).config.broker
    assert props["Logs"] == {"General": True}
    assert props["AutoMinorVersionUpgrade"] is True
    assert props["MaintenanceWindowStartTime"] == {
        "DayOfWeek": cfg.maintenance_day,
        "TimeOfDay": cfg.maintenance_time_utc,
        "TimeZone": "UTC",
    }


@pytest.mark.parametrize("env", WITH_BROKER)
def test_admin_password_is_generated_and_never_in_the_template(synth, env):
    props = broker(synth, env)
    (user,) = props["Users"]
    secrets = resources(synth(env).stateful, "AWS::SecretsManager::Secret")
    (secret_id,) = secrets
    gen = secrets[secret_id]["Properties"]["GenerateSecretString"]
    # A dynamic reference to the generated secret, resolved by CloudFormation at deploy time
    assert "resolve:secretsmanager" in json.dumps(user["Password"])
    assert secret_id in json.dumps(user["Password"])
    assert gen["GenerateStringKey"] == "password"
    assert gen["PasswordLength"] >= 12
    assert gen["ExcludePunctuation"] is True  # no ',', ':' or '=' (Amazon MQ refuses them)


@pytest.mark.parametrize("env", WITH_BROKER)
def test_only_the_worker_reaches_the_broker_on_5671(synth, env):
    s = synth(env)
    stateful = s.stateful.to_json()["Resources"]
    (sg_ref,) = broker(synth, env)["SecurityGroups"]
    sg = stateful[sg_ref["Fn::GetAtt"][0]]["Properties"]
    assert "SecurityGroupIngress" not in sg
    # Egress: nothing (the broker opens no connections): CDK's disallow-all placeholder rule
    assert [r["CidrIp"] for r in sg["SecurityGroupEgress"]] == ["255.255.255.255/32"]
    ingress = [
        r["Properties"]
        for r in resources(s.stateless, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["FromPort"] == 5671
    ]
    (rule,) = ingress
    assert rule["ToPort"] == 5671 and rule["IpProtocol"] == "tcp"
    worker_sg = [
        lid for lid in resources(s.stateless, "AWS::EC2::SecurityGroup") if "WorkerInstances" in lid
    ]
    assert rule["SourceSecurityGroupId"] == {"Fn::GetAtt": [worker_sg[0], "GroupId"]}


@pytest.mark.parametrize("env", WITH_BROKER)
def test_worker_role_reads_only_the_broker_secret_and_sends_only_events(synth, env):
    s = synth(env)
    policies = [
        r["Properties"]
        for r in resources(s.stateless, "AWS::IAM::ManagedPolicy").values()
        if "admin credentials" in r["Properties"].get("Description", "")
    ]
    (policy,) = policies
    (send, stmt, *rest) = policy["PolicyDocument"]["Statement"]
    # A tick's event goes to the events queue, and nowhere else.
    assert send["Action"] == "sqs:SendMessage"
    assert "EventsQueue" in json.dumps(send["Resource"])
    assert "Dlq" not in json.dumps(send["Resource"])
    assert sorted(stmt["Action"]) == [
        "secretsmanager:DescribeSecret",
        "secretsmanager:GetSecretValue",
    ]
    assert "*" not in json.dumps(stmt["Resource"])
    for extra in rest:  # prod: the data key, only through Secrets Manager
        assert extra["Action"] == "kms:Decrypt"
        assert "kms:ViaService" in extra["Condition"]["StringEquals"]


@pytest.mark.parametrize("env", WITH_BROKER)
def test_broker_alarms_cover_memory_disk_consumers_dead_ticks_and_depth(synth, env):
    alarms = [
        r["Properties"] for r in resources(synth(env).stateless, "AWS::CloudWatch::Alarm").values()
    ]
    names = " ".join(a["AlarmName"] for a in alarms)
    for fragment in ("Broker-Memory", "Broker-Disk", "Broker-DeadTicks"):
        assert fragment in names
    for task in REGISTRY.names:
        assert f"Broker-NoConsumer-{task}" in names
        assert f"Broker-Depth-{task}" in names
    text = json.dumps(alarms)
    assert Names().processor(REGISTRY.names[0]) in text
    assert Names().dead_queue in text


def test_no_broker_alarms_without_a_broker(synth):
    alarms = resources(synth("dev").stateless, "AWS::CloudWatch::Alarm").values()
    assert not [a for a in alarms if "Broker-" in a["Properties"]["AlarmName"]]
