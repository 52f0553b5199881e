"""The optional scheduler broker: Amazon MQ for RabbitMQ, private, worker-only, with alarms."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys

import pytest

from sluice import catalog, naming
from sluice.scheduling.names import (
    SCHEDULER_PERMISSIONS,
    SCHEDULER_TAGS,
    SCHEDULER_USER,
    SCHEDULER_VHOST,
)
from sluice.scheduling.registry import REGISTRY
from sluice.settings import SchedulerSettings
from stacks import broker_user
from stacks.workflows import function_bundle
from tests.infra.conftest import resources
from worker.scheduler.broker_metrics import management_url

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
    admin = synth(env).config.broker.admin_username
    (secret_id,) = [
        lid
        for lid, r in resources(synth(env).stateful, "AWS::SecretsManager::Secret").items()
        if json.loads(r["Properties"]["GenerateSecretString"]["SecretStringTemplate"])["username"]
        == admin
    ]
    gen = resources(synth(env).stateful, "AWS::SecretsManager::Secret")[secret_id]["Properties"][
        "GenerateSecretString"
    ]
    assert user["Username"] == admin
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
def test_scheduler_role_reads_only_its_own_secret_sends_events_and_its_figures(synth, env):
    s = synth(env)
    policies = [
        r["Properties"]
        for r in resources(s.stateless, "AWS::IAM::ManagedPolicy").values()
        if "scheduler user's credentials" in r["Properties"].get("Description", "")
    ]
    (policy,) = policies
    by_sid = {st["Sid"]: st for st in policy["PolicyDocument"]["Statement"]}
    # A tick's event goes to the events queue, and nowhere else.
    send = by_sid["SchedulerSendsEvents"]
    assert send["Action"] == "sqs:SendMessage"
    assert s.resolve(send["Resource"]) == s.stateful_value("EventsQueue", "Arn")
    # broker_url() reads the secret's value, and that is all it calls
    secret = by_sid["SchedulerSecret"]
    assert secret["Action"] == "secretsmanager:GetSecretValue"
    assert s.resolve(secret["Resource"]) == s.stateful_value("BrokerSchedulerSecret")
    assert s.stateful_value("BrokerAdminSecret") not in json.dumps(s.resolve(policy))
    figures = by_sid["BrokerFigures"]
    assert figures["Condition"]["StringEquals"]["cloudwatch:namespace"] == f"Sluice-{env}/Scheduler"
    if "SchedulerSecretKey" in by_sid:  # the data key, only through Secrets Manager
        key = by_sid["SchedulerSecretKey"]
        assert key["Action"] == "kms:Decrypt"
        assert "kms:ViaService" in key["Condition"]["StringEquals"]
    # The tick ledger: get and conditional update on the coordination table, nothing else of
    # DynamoDB, and the data key the table is encrypted with (when it has one)
    ledger = by_sid["SchedulerTickLedger"]
    assert sorted(ledger["Action"]) == ["dynamodb:GetItem", "dynamodb:UpdateItem"]
    assert json.dumps(s.resolve(ledger["Resource"])).endswith(
        f'table/{naming.coordination_table(env)}"'
    )
    if "SchedulerTickLedgerKey" in by_sid:
        assert sorted(by_sid["SchedulerTickLedgerKey"]["Action"]) == [
            "kms:Decrypt",
            "kms:GenerateDataKey",
        ]
    # No overlap (worker/scheduler/overlap.py): it lists a tick's runs, by name, of any workflow
    # through its live alias (the unqualified function too), and may do nothing else in Lambda
    runs = by_sid["TickRuns"]
    assert runs["Action"] == "lambda:ListDurableExecutionsByFunction"
    listed = set(s.resolve(runs["Resource"]))
    aliases = {_worker_setting(s.rendered, naming.alias_variable(w)) for w in catalog.WORKFLOWS}
    assert listed == aliases | {a.removesuffix(f":{catalog.WORKFLOW_ALIAS}") for a in aliases}
    assert set(by_sid) <= {
        "SchedulerSendsEvents",
        "SchedulerSecret",
        "BrokerFigures",
        "SchedulerSecretKey",
        "SchedulerTickLedger",
        "SchedulerTickLedgerKey",
        "TickRuns",
    }


# -- the scheduler's own broker user, made at deploy time ----------------------------------------

PROVISIONER = "lambdas.provisioning.broker_user.handler.handler"


def _secrets_by_user(rendered) -> dict[str, str]:
    """The broker user each secret holds -> the secret's ARN (as a deployment resolves it)."""
    found = {}
    for stack, lid, props in rendered.resources("AWS::SecretsManager::Secret"):
        template = json.loads(props["GenerateSecretString"]["SecretStringTemplate"])
        found[template["username"]] = stack.ref(lid)
    return found


def _role_name(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _reads(statement: dict, arn: str) -> bool:
    actions = statement["Action"]
    targets = statement["Resource"]
    return (
        statement["Effect"] == "Allow"
        and any(
            fnmatch.fnmatch("secretsmanager:getsecretvalue", a.lower())
            for a in (actions if isinstance(actions, list) else [actions])
        )
        and any(
            fnmatch.fnmatch(arn, t) for t in (targets if isinstance(targets, list) else [targets])
        )
    )


def _readers(rendered, arn: str) -> set[str]:
    """The roles any identity policy of the environment (inline ones too) lets read `arn`."""
    readers = set()
    for kind in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
        for _, _, props in rendered.resources(kind):
            if any(_reads(st, arn) for st in props["PolicyDocument"]["Statement"]):
                readers |= set(props.get("Roles", []))
    for stack, lid, props in rendered.resources("AWS::IAM::Role"):
        for policy in props.get("Policies", []):
            if any(_reads(st, arn) for st in policy["PolicyDocument"]["Statement"]):
                readers.add(stack.ref(lid))
    return readers


def _provisioner(s) -> tuple[str, dict]:
    (found,) = [
        (lid, r["Properties"])
        for lid, r in resources(s.stateless, "AWS::Lambda::Function").items()
        if r["Properties"].get("Handler") == PROVISIONER
    ]
    return found


def _worker_setting(rendered, name: str) -> str:
    (env,) = [props for _, _, props in rendered.resources("AWS::ElasticBeanstalk::Environment")]
    (value,) = [
        o["Value"]
        for o in env["OptionSettings"]
        if o["Namespace"] == "aws:elasticbeanstalk:application:environment"
        and o["OptionName"] == name
    ]
    return value


def test_dev_provisions_no_broker_user(synth):
    s = synth("dev")
    assert resources(s.stateless, "Custom::BrokerUser") == {}
    assert PROVISIONER not in json.dumps(s.stateless.to_json())


@pytest.mark.parametrize("env", WITH_BROKER)
def test_the_scheduler_user_is_made_at_deploy_with_the_scheduler_permissions(synth, env):
    s = synth(env)
    rendered = s.rendered
    (user,) = [props for _, _, props in rendered.resources("Custom::BrokerUser")]
    secrets = _secrets_by_user(rendered)
    (broker_lid,) = resources(s.stateful, "AWS::AmazonMQ::Broker")
    (amqps,) = [
        st.get_att(broker_lid, "AmqpEndpoints")
        for st in rendered.stacks
        if broker_lid in st.resources
    ]
    # On the broker's management API (the host of its AMQPS endpoint, as the scheduler finds it)
    assert user["ManagementUrl"] == management_url(amqps[0])
    assert user["AdminSecretArn"] == secrets[s.config.broker.admin_username]
    assert user["UserSecretArn"] == secrets[SCHEDULER_USER]
    assert (user["Vhost"], user["Tags"]) == (SCHEDULER_VHOST, SCHEDULER_TAGS)
    assert (user["Configure"], user["Write"], user["Read"]) == (
        SCHEDULER_PERMISSIONS.configure,
        SCHEDULER_PERMISSIONS.write,
        SCHEDULER_PERMISSIONS.read,
    )
    assert user["PasswordRevision"] == str(s.config.broker.scheduler_password_revision)
    # answered by the provisioning function, and given up on if it never answers
    fn_lid, _ = _provisioner(s)
    (raw,) = resources(s.stateless, "Custom::BrokerUser").values()
    assert raw["Properties"]["ServiceToken"] == {"Fn::GetAtt": [fn_lid, "Arn"]}
    assert 0 < int(raw["Properties"]["ServiceTimeout"]) <= 900
    # and the worker starts only once its user exists
    (worker_lid,) = resources(s.stateless, "AWS::ElasticBeanstalk::Environment")
    user_lid = next(iter(resources(s.stateless, "Custom::BrokerUser")))
    assert user_lid in s.stateless.to_json()["Resources"][worker_lid]["DependsOn"]


@pytest.mark.parametrize("env", WITH_BROKER)
def test_the_scheduler_secret_is_generated_like_the_admin_secret(synth, env):
    secrets = resources(synth(env).stateful, "AWS::SecretsManager::Secret").values()
    by_user = {
        json.loads(r["Properties"]["GenerateSecretString"]["SecretStringTemplate"])["username"]: r[
            "Properties"
        ]
        for r in secrets
    }
    assert set(by_user) == {synth(env).config.broker.admin_username, SCHEDULER_USER}
    for props in by_user.values():
        gen = props["GenerateSecretString"]
        assert gen["GenerateStringKey"] == "password"
        assert gen["PasswordLength"] >= 12
        assert gen["ExcludePunctuation"] is True  # letters and digits: safe in the AMQP URL
        assert "KmsKeyId" in props  # the data key (staging and prod)


@pytest.mark.parametrize("env", WITH_BROKER)
def test_only_the_provisioner_reads_the_admin_secret_and_the_scheduler_reads_its_own(synth, env):
    s = synth(env)
    rendered = s.rendered
    secrets = _secrets_by_user(rendered)
    _, fn = _provisioner(s)
    provisioner = _role_name(rendered.stacks[1].render(fn["Role"]))
    scheduler = _role_name(_worker_setting(rendered, "SLUICE_ROLE_ARN_SCHEDULER"))
    assert _readers(rendered, secrets[s.config.broker.admin_username]) == {provisioner}
    assert _readers(rendered, secrets[SCHEDULER_USER]) == {provisioner, scheduler}
    assert not rendered.resources("AWS::SecretsManager::ResourcePolicy")
    # the scheduler process connects with the scheduler user's secret
    assert (
        _worker_setting(rendered, SchedulerSettings.variables()["broker_secret_arn"])
        == secrets[SCHEDULER_USER]
    )
    # and keeps its tick ledger in the coordination table (the policy above grants it)
    assert _worker_setting(
        rendered, SchedulerSettings.variables()["coordination_table"]
    ) == naming.coordination_table(env)


@pytest.mark.parametrize("env", WITH_BROKER)
def test_the_provisioner_is_a_python_lambda_in_the_private_subnets_with_one_policy(synth, env):
    s = synth(env)
    rendered = s.rendered
    fn_lid, fn = _provisioner(s)
    sizing = s.config.broker.provisioner
    assert (fn["Runtime"], fn["Architectures"]) == ("python3.14", ["arm64"])
    assert fn["TracingConfig"] == {"Mode": "Active"}
    assert (fn["MemorySize"], fn["Timeout"]) == (sizing.memory_mb, sizing.timeout_s)
    assert fn["ReservedConcurrentExecutions"] == sizing.reserved_concurrency
    stateless = next(st for st in rendered.stacks if fn_lid in st.resources)
    groups = {st.ref(lid): props for st, lid, props in rendered.resources("AWS::Logs::LogGroup")}
    log_group = stateless.render(fn["LoggingConfig"]["LogGroup"])
    assert log_group == naming.lambda_log_group(env, "broker_user")
    assert groups[log_group]["RetentionInDays"] == s.config.log_retention_days
    # in the private subnets
    subnets = {st.ref(lid): props for st, lid, props in rendered.resources("AWS::EC2::Subnet")}
    vpc_config = stateless.render(fn["VpcConfig"])
    assert len(vpc_config["SubnetIds"]) == s.config.network.max_azs
    for subnet in vpc_config["SubnetIds"]:
        tags = {t["Key"]: t["Value"] for t in subnets[subnet]["Tags"]}
        assert tags["aws-cdk:subnet-type"] == "Private"
    # one role, one customer-managed policy, no inline policy
    role_lid = fn["Role"]["Fn::GetAtt"][0]
    role = s.stateless.to_json()["Resources"][role_lid]["Properties"]
    assert "Policies" not in role and "ManagedPolicyArns" not in role
    attached = [
        lid
        for lid, r in resources(s.stateless, "AWS::IAM::ManagedPolicy").items()
        if {"Ref": role_lid} in r["Properties"].get("Roles", [])
    ]
    assert len(attached) == 1
    assert not [
        r
        for r in resources(s.stateless, "AWS::IAM::Policy").values()
        if {"Ref": role_lid} in r["Properties"].get("Roles", [])
    ]


@pytest.mark.parametrize("env", WITH_BROKER)
def test_the_provisioner_reaches_the_broker_on_443_only(synth, env):
    s = synth(env)
    template = s.stateless.to_json()["Resources"]
    _, fn = _provisioner(s)
    (sg_ref,) = fn["VpcConfig"]["SecurityGroupIds"]
    sg_lid = sg_ref["Fn::GetAtt"][0]
    sg = template[sg_lid]["Properties"]
    assert "SecurityGroupIngress" not in sg  # nothing connects to it
    egress = list(sg.get("SecurityGroupEgress", [])) + [
        r["Properties"]
        for r in resources(s.stateless, "AWS::EC2::SecurityGroupEgress").values()
        if r["Properties"]["GroupId"] == {"Fn::GetAtt": [sg_lid, "GroupId"]}
    ]
    # out on 443 only: the broker's management API, Secrets Manager and CloudFormation's
    # response URL (the last two through the NAT gateway)
    assert egress
    assert {(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in egress} == {("tcp", 443, 443)}
    # the broker admits it on 443, never on AMQPS
    into_broker = [
        r["Properties"]
        for r in resources(s.stateless, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["SourceSecurityGroupId"] == {"Fn::GetAtt": [sg_lid, "GroupId"]}
    ]
    (rule,) = into_broker
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 443, 443)
    assert s.resolve(rule["GroupId"]) == s.stateful_value("BrokerSecurityGroup", "GroupId")
    # and keeps that rule until the user is deleted (the Delete needs the broker)
    user_lid = next(iter(resources(s.stateless, "Custom::BrokerUser")))
    depends = template[user_lid].get("DependsOn", [])
    rule_lid = next(
        lid
        for lid, r in resources(s.stateless, "AWS::EC2::SecurityGroupIngress").items()
        if r["Properties"] == rule
    )
    assert rule_lid in depends and sg_lid in depends


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


def test_the_provisioner_bundle_needs_nothing_but_the_runtime_and_boto3():
    # It ships without the deps layer: any other import would fail only once deployed. The
    # bundle's own packages (lambdas, and the adapters' management API client) ship with it.
    bundle = function_bundle("provisioning", broker_user.NAME)
    shipped = sorted(p.name for p in bundle.iterdir() if (p / "__init__.py").exists())
    assert "adapters" in shipped and "lambdas" in shipped, shipped
    probe = f"""
import sys
import boto3, botocore.config
before = set(sys.modules)
sys.path.insert(0, {str(bundle)!r})
import lambdas.provisioning.broker_user.handler
added = {{m.split(".")[0] for m in set(sys.modules) - before}}
print(sorted(added - set(sys.stdlib_module_names) - set({shipped!r})))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=bundle
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("hold", [0.0, 30.0])
def test_the_scheduler_keeps_tokens_as_long_as_the_environment_says(hold):
    # Given a broker configured with `broker.hold_tokens_s` = hold
    from types import SimpleNamespace

    from stacks.broker import NamedBroker
    from stacks.config import BrokerConfig

    named = SimpleNamespace(
        config=BrokerConfig(hold_tokens_s=hold),
        amqps_endpoint="amqps://b-1.mq.eu-west-1.amazonaws.com:5671",
        scheduler_secret=SimpleNamespace(secret_arn="arn:aws:secretsmanager:eu-west-1:1:secret:s"),
        metrics_namespace="Sluice-staging/Scheduler",
    )
    # When the worker's environment is rendered for the scheduler
    env = NamedBroker.worker_environment(named)  # type: ignore[arg-type]
    # Then the scheduler process reads that hold back (left out at 0, the default)
    assert SchedulerSettings.read(env).hold_s == hold
    assert ("SLUICE_SCHEDULER_HOLD_S" in env) == bool(hold)
