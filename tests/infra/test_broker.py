"""The optional scheduler broker: Amazon MQ for RabbitMQ, private, worker-only, with alarms."""

from __future__ import annotations

import json

import pytest

from sluice.scheduling.registry import REGISTRY
from tests.infra.conftest import resources

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
def test_scheduler_role_reads_only_the_broker_secret_sends_events_and_its_figures(synth, env):
    s = synth(env)
    policies = [
        r["Properties"]
        for r in resources(s.stateless, "AWS::IAM::ManagedPolicy").values()
        if "admin credentials" in r["Properties"].get("Description", "")
    ]
    (policy,) = policies
    by_sid = {st["Sid"]: st for st in policy["PolicyDocument"]["Statement"]}
    # A tick's event goes to the events queue, and nowhere else.
    send = by_sid["SchedulerSendsEvents"]
    assert send["Action"] == "sqs:SendMessage"
    assert "EventsQueue" in json.dumps(send["Resource"])
    assert "Dlq" not in json.dumps(send["Resource"])
    secret = by_sid["BrokerAdminSecret"]
    assert sorted(secret["Action"]) == [
        "secretsmanager:DescribeSecret",
        "secretsmanager:GetSecretValue",
    ]
    assert "*" not in json.dumps(secret["Resource"])
    figures = by_sid["BrokerFigures"]
    assert figures["Condition"]["StringEquals"]["cloudwatch:namespace"] == f"Sluice-{env}/Scheduler"
    if "BrokerAdminSecretKey" in by_sid:  # prod: the data key, only through Secrets Manager
        key = by_sid["BrokerAdminSecretKey"]
        assert key["Action"] == "kms:Decrypt"
        assert "kms:ViaService" in key["Condition"]["StringEquals"]
    assert set(by_sid) <= {
        "SchedulerSendsEvents",
        "BrokerAdminSecret",
        "BrokerFigures",
        "BrokerAdminSecretKey",
    }


@pytest.mark.parametrize("env", WITH_BROKER)
def test_broker_alarms_watch_every_node_every_task_and_dead_ticks(synth, env):
    alarms = {
        r["Properties"]["AlarmName"]: r["Properties"]
        for r in resources(synth(env).stateless, "AWS::CloudWatch::Alarm").values()
        if "Broker-" in r["Properties"]["AlarmName"]
    }
    namespace = f"Sluice-{env}/Scheduler"

    def alarm(fragment: str) -> dict:
        (found,) = [a for name, a in alarms.items() if fragment in name]
        return found

    def query(fragment: str) -> str:
        (metric,) = alarm(fragment)["Metrics"]
        return metric["Expression"]

    # memory and disk: the worst node, whatever the nodes' names (a Metrics Insights query)
    schema = f'SCHEMA("{namespace}", Node)'
    assert query("Broker-Memory") == f"SELECT MAX(MemoryUsedPct) FROM {schema}"  # noqa: S608
    assert query("Broker-Disk") == f"SELECT MIN(DiskFreeRatio) FROM {schema}"  # noqa: S608
    for task in REGISTRY.names:
        (no_consumer,) = [a for n, a in alarms.items() if f"Broker-NoConsumer-{task}" in n]
        assert no_consumer["TreatMissingData"] == "breaching"  # a silent scheduler is none
        assert f"Broker-Depth-{task}" in " ".join(alarms)
    dead = alarm("Broker-DeadTicks")
    assert (dead["Namespace"], dead["MetricName"]) == (namespace, "DeadTicks")


def test_no_broker_alarms_without_a_broker(synth):
    alarms = resources(synth("dev").stateless, "AWS::CloudWatch::Alarm").values()
    assert not [a for a in alarms if "Broker-" in a["Properties"]["AlarmName"]]
