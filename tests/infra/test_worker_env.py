"""The EB worker environment, its VPC, IAM scoping, scaling and the upload notifications."""

from __future__ import annotations

import json

import pytest
import yaml

from sluice import catalog, naming
from sluice.settings import WebSettings
from stacks import config, coordination
from stacks.compliance import PACKS
from stacks.worker_env import worker_bundle
from tests.infra.conftest import resources


def _environment(s) -> dict:
    (env,) = resources(s.stateless, "AWS::ElasticBeanstalk::Environment").values()
    return env["Properties"]


def _options(s) -> dict[tuple[str, str], object]:
    return {
        (o["Namespace"], o["OptionName"]): o["Value"] for o in _environment(s)["OptionSettings"]
    }


def _worker_policy(s) -> list[dict]:
    policies = resources(s.stateless, "AWS::IAM::ManagedPolicy")
    (policy,) = [p for lid, p in policies.items() if lid.startswith("WorkerInstancePolicy")]
    return policy["Properties"]["PolicyDocument"]["Statement"]


def test_the_environment_is_a_worker_tier_on_the_configured_platform(synth, env):
    s = synth(env)
    props = _environment(s)
    assert props["Tier"] == {"Name": "Worker", "Type": "SQS/HTTP"}
    assert props["EnvironmentName"] == f"Sluice-{env}-worker"
    (version,) = resources(s.stateless, "AWS::ElasticBeanstalk::ApplicationVersion").values()
    assert version["Properties"]["SourceBundle"]["S3Key"].endswith(".zip")


def test_sqsd_reads_the_events_queue_with_the_configured_timeouts(synth, env):
    s = synth(env)
    o, w, q = _options(s), s.config.worker, s.config.events_queue
    sqsd = "aws:elasticbeanstalk:sqsd"
    assert s.resolve(o[(sqsd, "WorkerQueueURL")]) == s.stateful_value("EventsQueue")
    assert o[(sqsd, "HttpPath")] == w.http_path
    assert o[(sqsd, "MimeType")] == "application/json"
    assert o[(sqsd, "HttpConnections")] == str(w.http_connections)
    assert o[(sqsd, "InactivityTimeout")] == str(w.processing_timeout_s)
    assert o[(sqsd, "VisibilityTimeout")] == str(q.visibility_timeout_s)
    assert o[(sqsd, "ErrorVisibilityTimeout")] == str(w.error_visibility_timeout_s)
    assert o[(sqsd, "MaxRetries")] == str(q.max_receive_count)
    # the worker's own thread count matches sqsd's concurrency
    app_env = "aws:elasticbeanstalk:application:environment"
    assert o[(app_env, "SLUICE_WEB_THREADS")] == str(w.http_connections)
    assert o[(app_env, "SLUICE_MAX_BODY_BYTES")] == str(w.max_body_bytes)
    assert s.resolve(o[(app_env, "SLUICE_EVENTS_DLQ_URL")]) == s.stateful_value("EventsDlq")


def test_instances_are_private_imdsv2_only_and_sized_from_config(synth, env):
    s = synth(env)
    o, w = _options(s), s.config.worker
    assert o[("aws:ec2:instances", "InstanceTypes")] == w.instance_type
    assert o[("aws:autoscaling:asg", "MinSize")] == str(w.min_instances)
    assert o[("aws:autoscaling:asg", "MaxSize")] == str(w.max_instances)
    assert o[("aws:autoscaling:launchconfiguration", "DisableIMDSv1")] == "true"
    assert o[("aws:ec2:vpc", "AssociatePublicIpAddress")] == "false"
    # the stateful VPC's private subnets, one per zone, and no public one
    subnets = s.resolve(o[("aws:ec2:vpc", "Subnets")]).split(",")
    private = [
        s.stateful_value(f"NetworkVpcprivateSubnet{i}Subnet") for i in range(1, len(subnets) + 1)
    ]
    assert subnets == private and len(subnets) == s.config.network.max_azs
    assert s.resolve(o[("aws:ec2:vpc", "VPCId")]) == s.stateful_value("NetworkVpc")


def test_platform_updates_health_and_logs_are_managed(synth, env):
    s = synth(env)
    o = _options(s)
    assert o[("aws:elasticbeanstalk:managedactions", "ManagedActionsEnabled")] == "true"
    assert o[("aws:elasticbeanstalk:managedactions:platformupdate", "UpdateLevel")] == "minor"
    assert o[("aws:elasticbeanstalk:healthreporting:system", "SystemType")] == "enhanced"
    assert o[("aws:elasticbeanstalk:cloudwatch:logs", "StreamLogs")] == "true"
    assert o[("aws:elasticbeanstalk:cloudwatch:logs", "RetentionInDays")] == str(
        s.config.log_retention_days
    )
    assert o[("aws:elasticbeanstalk:hostmanager", "LogPublicationControl")] == "true"


def test_scaling_tracks_the_events_backlog_per_instance(synth, env):
    s = synth(env)
    o = _options(s)
    custom = "aws:elasticbeanstalk:customoption"
    assert o[(custom, "BacklogPerInstance")] == str(s.config.worker.backlog_per_instance)
    assert s.resolve(o[(custom, "EventsQueueName")]) == s.stateful_value("EventsQueue", "QueueName")
    # CPU may only add capacity: its scale-in threshold can never be crossed
    assert o[("aws:autoscaling:trigger", "LowerThreshold")] == "0"
    # The target tracking policy lives in the bundle's .ebextensions (it names EB's own ASG)
    config = yaml.safe_load((worker_bundle() / ".ebextensions" / "scaling.config").read_text())
    policy = config["Resources"]["SluiceBacklogScaling"]["Properties"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingConfiguration"]
    assert tracking["TargetValue"]["Fn::GetOptionSetting"]["OptionName"] == "BacklogPerInstance"
    metrics = {m["Id"]: m for m in tracking["CustomizedMetricSpecification"]["Metrics"]}
    assert metrics["backlog_per_instance"]["Expression"] == "visible / instances"
    visible = metrics["visible"]["MetricStat"]["Metric"]
    assert (visible["Namespace"], visible["MetricName"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
    )


def test_the_instance_policy_is_scoped_to_this_environment(synth, env):
    s = synth(env)
    statements = _worker_policy(s)
    by_sid = {st["Sid"]: st for st in statements}
    # sqsd's queue actions name the events queue only
    assert s.resolve(by_sid["EventsQueue"]["Resource"]) == s.stateful_value("EventsQueue", "Arn")
    # the process roles, and no others, may be assumed
    assert "Role" in json.dumps(by_sid["AssumeProcessRoles"]["Resource"])
    # "*" only where AWS has no resource type, and metrics only in EB's namespace
    star = {st["Sid"] for st in statements if st["Resource"] == "*"}
    assert star == {"Metrics", "Tracing"}
    assert by_sid["Metrics"]["Condition"]["StringEquals"]["cloudwatch:namespace"] == (
        "AWS/ElasticBeanstalk"
    )
    assert not any("*" in a for st in statements for a in _list(st["Action"]))


def test_the_web_process_starts_workflows_dead_letters_and_counts_in_its_namespace(synth, env):
    s = synth(env)
    policies = resources(s.stateless, "AWS::IAM::ManagedPolicy")
    (policy,) = [p for lid, p in policies.items() if lid.startswith("WorkerWebPolicy")]
    by_sid = {st["Sid"]: st for st in policy["Properties"]["PolicyDocument"]["Statement"]}
    assert "Alias" in json.dumps(by_sid["StartWorkflows"]["Resource"])
    assert by_sid["EventsDlq"]["Action"] == "sqs:SendMessage"
    assert s.resolve(by_sid["EventsDlq"]["Resource"]) == s.stateful_value("EventsDlq", "Arn")
    assert json.dumps(by_sid["DeadLetterBodies"]["Resource"]).endswith('/dead-letters/*"]]}')
    assert by_sid["Metrics"]["Condition"]["StringEquals"]["cloudwatch:namespace"] == (
        f"Sluice-{env}/Worker"
    )
    assert ("DataKey" in by_sid) == s.config.data_key


def test_the_web_process_keeps_flow_control_in_the_coordination_table_and_wakes_itself(synth, env):
    s = synth(env)
    policies = resources(s.stateless, "AWS::IAM::ManagedPolicy")
    (policy,) = [p for lid, p in policies.items() if lid.startswith("WorkerWebPolicy")]
    by_sid = {st["Sid"]: st for st in policy["Properties"]["PolicyDocument"]["Statement"]}
    state = by_sid["FlowState"]
    assert sorted(_list(state["Action"])) == sorted(coordination.WEB_ACTIONS)
    assert json.dumps(s.resolve(state["Resource"])).endswith(
        f'table/{naming.coordination_table(env)}"'
    )
    wake_ups = by_sid["FlowWakeUps"]
    assert wake_ups["Action"] == "sqs:SendMessage"
    assert s.resolve(wake_ups["Resource"]) == s.stateful_value("EventsQueue", "Arn")
    o = _options(s)
    app_env = "aws:elasticbeanstalk:application:environment"
    variables = WebSettings.variables()
    assert o[(app_env, variables["coordination_table"])] == naming.coordination_table(env)
    assert s.resolve(o[(app_env, variables["events_queue_url"])]) == s.stateful_value("EventsQueue")


def _list(value) -> list:
    return value if isinstance(value, list) else [value]


def test_no_role_uses_the_worker_tier_managed_policy(synth, env):
    s = synth(env)
    assert "AWSElasticBeanstalkWorkerTier" not in json.dumps(s.stateless.to_json())
    roles = resources(s.stateless, "AWS::IAM::Role")
    (instance_role,) = [r for lid, r in roles.items() if lid.startswith("WorkerInstanceRole")]
    assert "ManagedPolicyArns" not in instance_role["Properties"]


def test_the_vpc_has_private_subnets_nat_flow_logs_and_gateway_endpoints(synth, env):
    s = synth(env)
    t, net = s.stateful, s.config.network
    assert len(resources(t, "AWS::EC2::NatGateway")) == net.nat_gateways
    (flow_log,) = resources(t, "AWS::EC2::FlowLog").values()
    assert flow_log["Properties"]["TrafficType"] == net.flow_log_traffic
    groups = [
        g["Properties"]
        for lid, g in resources(t, "AWS::Logs::LogGroup").items()
        if lid.startswith("NetworkFlowLogs")
    ]
    assert [g["RetentionInDays"] for g in groups] == [net.flow_log_retention_days]
    endpoints = json.dumps(list(resources(t, "AWS::EC2::VPCEndpoint").values()))
    assert ".s3" in endpoints and ".dynamodb" in endpoints
    subnets = resources(t, "AWS::EC2::Subnet").values()
    assert not any(sn["Properties"].get("MapPublicIpOnLaunch") for sn in subnets)


def test_uploads_under_the_prefix_notify_the_events_queue(synth, env):
    s = synth(env)
    (notif,) = resources(s.stateful, "Custom::S3BucketNotifications").values()
    (queue_cfg,) = notif["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert queue_cfg["Events"] == ["s3:ObjectCreated:*"]
    assert queue_cfg["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": "uploads/"}]
    assert "EventsQueue" in json.dumps(queue_cfg["QueueArn"])
    # S3 may send only for this bucket, and only into the events queue
    policies = json.dumps(list(resources(s.stateful, "AWS::SQS::QueuePolicy").values()))
    assert '"Service": "s3.amazonaws.com"' in policies
    assert "aws:SourceArn" in policies


@pytest.mark.parametrize(
    ("env_name", "pack"),
    [(e, p) for e, cfg in config.ENVIRONMENTS.items() for p in cfg.compliance_packs],
)
def test_the_worker_and_network_have_no_findings_in_any_pack(synth, env_name, pack):
    s = synth(env_name)
    result = PACKS[pack]().validate_scope(s.app)
    ours = [
        (v.rule_name, c.construct_path)
        for v in result.violations
        for c in v.violating_constructs
        if any(part in c.construct_path for part in ("/Worker/", "/Network/", "Notifications"))
    ]
    assert ours == []


def test_sqsds_cron_leader_may_queue_periodic_tasks_on_the_worker_queue(synth, env):
    # Without a broker (dev), sqsd's cron leader sends each cron.yaml job to the worker queue
    rendered = synth(env).rendered
    statements = _instance_statements(rendered)
    (worker_queue,) = [
        o["Value"]
        for _, _, props in rendered.resources("AWS::ElasticBeanstalk::Environment")
        for o in props["OptionSettings"]
        if o["OptionName"] == "WorkerQueueURL"
    ]
    queue_arn = _queue_arn(rendered, worker_queue)
    assert _allowed(statements, "sqs:SendMessage", queue_arn)
    assert _allowed(statements, "sqs:ReceiveMessage", queue_arn)


def test_instances_may_read_ebs_environment_files_from_its_bucket(synth, env):
    rendered = synth(env).rendered
    statements = _instance_statements(rendered)
    bucket = f"arn:aws:s3:::elasticbeanstalk-{rendered.region}-{rendered.account}"
    manifest = f"{bucket}/resources/environments/e-abc123/_runtime/manifest"
    assert _allowed(statements, "s3:GetObject", manifest)
    assert not _allowed(statements, "s3:GetObject", f"{bucket}/resources/templates/x")


def test_every_statement_of_awss_worker_tier_policy_is_kept_narrowed_or_dropped_with_a_reason():
    from moto.iam.aws_managed_policies import aws_managed_policies_data

    from stacks.worker_env import WORKER_TIER_COMPARISON

    published = json.loads(aws_managed_policies_data)["AWSElasticBeanstalkWorkerTier"]
    sids = {st["Sid"] for st in published["Document"]["Statement"]}
    assert set(WORKER_TIER_COMPARISON) == sids
    assert all(
        reason.split(" ", 1)[0] in ("kept", "narrowed", "dropped:")
        for reason in WORKER_TIER_COMPARISON.values()
    )


def _instance_statements(rendered) -> list[dict]:
    """Every statement of the managed policies attached to the worker's instance role."""
    out = []
    for _, _, props in rendered.resources("AWS::IAM::ManagedPolicy"):
        if any(
            "WorkerInstanceRole" in str(r) or "instancerole" in str(r).lower()
            for r in props.get("Roles", [])
        ):
            out.extend(props["PolicyDocument"]["Statement"])
    assert out, "the instance role has no policy"
    return out


def _queue_arn(rendered, url: str) -> str:
    name = url.rsplit("/", 1)[1]
    return f"arn:aws:sqs:{rendered.region}:{rendered.account}:{name}"


def _allowed(statements: list[dict], action: str, resource: str) -> bool:
    import fnmatch

    return any(
        st["Effect"] == "Allow"
        and any(fnmatch.fnmatchcase(action, a) for a in _list(st["Action"]))
        and any(fnmatch.fnmatchcase(resource, r) for r in _list(st["Resource"]))
        and not st.get("Condition")
        for st in statements
    )


def test_the_health_configuration_sets_only_what_it_means(synth, env):
    document = json.loads(
        _options(synth(env))[("aws:elasticbeanstalk:healthreporting:system", "ConfigDocument")]
    )
    # An empty Rules entry would override EB's default rules with nothing.
    assert document == {
        "Version": 1,
        "CloudWatchMetrics": {"Environment": {"EnvironmentHealth": 60}},
    }


def _role_actions(rendered, role_prefix: str) -> set[str]:
    """Every action the managed policies attached to role `role_prefix…` allow."""
    actions: set[str] = set()
    for _, _, props in rendered.resources("AWS::IAM::ManagedPolicy"):
        if any(str(r).startswith(f"gen-{role_prefix.lower()}") for r in props.get("Roles", [])):
            for st in props["PolicyDocument"]["Statement"]:
                actions.update(_list(st["Action"]))
    return actions


def test_each_worker_process_holds_only_what_it_calls(synth, env):
    s = synth(env)
    rendered = s.rendered
    instance = _role_actions(rendered, "WorkerInstanceRole")
    web = _role_actions(rendered, "WorkerWebRole")
    tasks = _role_actions(rendered, "WorkerTasksRole")
    scheduler = _role_actions(rendered, "WorkerSchedulerRole")
    # The process that runs ffmpeg and the model over user uploads cannot start workflows,
    # dead-letter events or read the broker's secret.
    assert "lambda:InvokeFunction" in web and "lambda:InvokeFunction" not in tasks | scheduler
    assert "sqs:SendMessage" in web and "s3:GetObject" not in web
    assert {"s3:GetObject", "lambda:SendDurableExecutionCallbackSuccess"} <= tasks
    assert not any(a.startswith("secretsmanager:") for a in web | tasks | instance)
    if s.config.broker is not None:
        assert "secretsmanager:GetSecretValue" in scheduler
    # The instance role keeps only what EB's agents and sqsd call, and may assume the others.
    assert "sts:AssumeRole" in instance
    assert not instance & {"lambda:InvokeFunction", "s3:PutObject"} - {"s3:PutObject"}
    assert "lambda:InvokeFunction" not in instance
    assert not any(a.startswith("lambda:") or a.startswith("secretsmanager:") for a in instance)


def test_each_process_role_trusts_only_the_instance_role_and_is_named_to_its_process(synth, env):
    rendered = synth(env).rendered
    roles = {lid: props for _, lid, props in rendered.resources("AWS::IAM::Role")}
    options = {
        o["OptionName"]: o["Value"]
        for _, _, props in rendered.resources("AWS::ElasticBeanstalk::Environment")
        for o in props["OptionSettings"]
        if o["Namespace"] == "aws:elasticbeanstalk:application:environment"
    }
    (instance_arn,) = [
        f"arn:aws:iam::{rendered.account}:role/gen-{lid.lower()[:40]}"
        for lid in roles
        if lid.startswith("WorkerInstanceRole")
    ]
    for process in ("web", "tasks", "scheduler"):
        (lid,) = [lid for lid in roles if lid.startswith(f"Worker{process.title()}Role")]
        (trust,) = roles[lid]["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"AWS": instance_arn}
        assert options[f"SLUICE_ROLE_ARN_{process.upper()}"].endswith(
            f"role/gen-{lid.lower()[:40]}"
        )


def test_every_environment_property_fits_ebs_limits(synth, env):
    """With every generated name at its longest, EB accepts each property and their total."""
    from stacks.checks import after_synth

    s = synth(env)
    assert after_synth(s.outdir, region=s.config.region) == []


def test_the_property_check_refuses_what_eb_refuses():
    from stacks.checks import eb_property_problems
    from stacks.rendering import Environment

    def env_with(**properties: str) -> Environment:
        options = [
            {
                "Namespace": "aws:elasticbeanstalk:application:environment",
                "OptionName": k,
                "Value": v,
            }
            for k, v in properties.items()
        ]
        template = {
            "Resources": {
                "Env": {
                    "Type": "AWS::ElasticBeanstalk::Environment",
                    "Properties": {"OptionSettings": options},
                }
            }
        }
        return Environment(region="eu-west-1", templates={"S": template})

    aliases = json.dumps(
        {f"workflow_{i}": "arn:aws:lambda:eu-west-1:1:function:f:live" for i in range(8)}
    )
    assert len(aliases) > 256
    (long, chars) = eb_property_problems(env_with(SLUICE_WORKFLOW_ALIASES=aliases))
    assert "may be" in long and "limit 256" in long
    assert "'{'" in chars and "'\"'" in chars
    (key,) = eb_property_problems(env_with(**{"sluice-x": "1"}))
    assert "property name" in key
    many = {f"SLUICE_SETTING_{i}": "x" * 250 for i in range(17)}
    (total,) = eb_property_problems(env_with(**many))
    assert "limit 4096" in total
    assert (
        eb_property_problems(env_with(SLUICE_OK="arn:aws:lambda:eu-west-1:1:function:f:live")) == []
    )


def _platform_lookup(s) -> dict:
    (lookup,) = resources(s.stateless, "Custom::AWS").values()
    return (
        json.loads(lookup["Properties"]["Create"]["Fn::Join"][1][0])
        if isinstance(lookup["Properties"]["Create"], dict)
        else json.loads(lookup["Properties"]["Create"])
    )


def test_the_platform_is_the_branchs_recommended_version_resolved_at_deploy(synth, env):
    """No pinned platform version (a fresh account cannot create an environment on a retired
    one): a deploy-time lookup asks EB for the configured branch's recommended version."""
    s = synth(env)
    props = _environment(s)
    assert "SolutionStackName" not in props
    (lookup_id,) = resources(s.stateless, "Custom::AWS")
    assert props["PlatformArn"] == {"Fn::GetAtt": [lookup_id, "PlatformSummaryList.0.PlatformArn"]}
    call = _platform_lookup(s)
    assert (call["service"], call["action"]) == ("ElasticBeanstalk", "listPlatformVersions")
    filters = {f["Type"]: f["Values"] for f in call["parameters"]["Filters"]}
    assert filters == {
        "PlatformBranchName": [s.config.worker.platform_branch],
        "PlatformLifecycleState": ["recommended"],
        "SupportedTier": ["Worker/SQS/HTTP"],
    }
    # managed platform updates keep it current from then on
    o = _options(s)
    assert o[("aws:elasticbeanstalk:managedactions", "ManagedActionsEnabled")] == "true"


def test_the_platform_lookup_is_a_valid_call_of_ebs_api():
    """The custom resource's call, checked against botocore's model of ListPlatformVersions."""
    import botocore.session
    from botocore.validate import validate_parameters

    from stacks.worker_env import platform_filters

    model = botocore.session.get_session().get_service_model("elasticbeanstalk")
    operation = model.operation_model("ListPlatformVersions")
    params = {"Filters": platform_filters("Python 3.13 running on 64bit Amazon Linux 2023")}
    validate_parameters(params, operation.input_shape)  # raises on a wrong shape
    documented = operation.input_shape.members["Filters"].member.members["Type"].documentation
    for f in params["Filters"]:
        assert f"<code>{f['Type']}</code>" in documented
    values = operation.input_shape.members["Filters"].member.members["Values"].documentation
    assert "<code>recommended</code>" in values and "<code>Worker/SQS/HTTP</code>" in values
    output = operation.output_shape.members["PlatformSummaryList"].member.members
    assert "PlatformArn" in output


def _role_statements(rendered, role_prefix: str) -> dict[str, dict]:
    """The statements of the managed policies attached to role `role_prefix…`, by Sid."""
    found = {}
    for _, _, props in rendered.resources("AWS::IAM::ManagedPolicy"):
        if any(str(r).startswith(f"gen-{role_prefix.lower()}") for r in props.get("Roles", [])):
            found.update({st.get("Sid", ""): st for st in props["PolicyDocument"]["Statement"]})
    return found


def test_the_web_process_may_cancel_exactly_the_runs_a_declared_event_cancels(synth, env):
    s = synth(env)
    rendered = s.rendered
    stateless = s.rendered_stack("stateless")
    outputs = {k: stateless.render(v["Value"]) for k, v in stateless.template["Outputs"].items()}
    options = {
        o["OptionName"]: o["Value"]
        for _, _, props in rendered.resources("AWS::ElasticBeanstalk::Environment")
        for o in props["OptionSettings"]
        if o["Namespace"] == "aws:elasticbeanstalk:application:environment"
    }
    cancellable = {wf for pairs in catalog.CANCELS.values() for wf, _ in pairs}
    assert cancellable, "the reference pipeline declares cancel_on (media/deleted)"
    # Its settings: the coordination table the stateful stack makes, and each cancellable
    # workflow's failure handler: the function the stack outputs as its FailureHandler<Name>
    web = WebSettings.read({k: str(v) for k, v in options.items()})
    assert web.coordination_table == naming.coordination_table(s.config.name)
    handlers = catalog.workflows_in_outputs(outputs, prefix=catalog.FAILURE_HANDLER_OUTPUT_PREFIX)
    assert set(web.failure_handlers) == cancellable
    for workflow, alias_arn in web.failure_handlers.items():
        assert alias_arn.endswith(f":function:{handlers[workflow]}:{catalog.WORKFLOW_ALIAS}")
    # Its grants: read and stop the executions of those workflows only, run their handlers,
    # work the table (the IAM catalogue test checks each action against its resource type)
    statements = _role_statements(rendered, "WorkerWebRole")
    functions = catalog.workflows_in_outputs(outputs)
    assert sorted(_list(statements["CancelRuns"]["Resource"])) == sorted(
        f"arn:aws:lambda:{s.config.region}:{rendered.account}:function:{functions[wf]}"
        ":*/durable-execution/*"
        for wf in cancellable
    )
    assert set(_list(statements["CancelRuns"]["Action"])) == {
        "lambda:GetDurableExecution",
        "lambda:StopDurableExecution",
    }
    assert sorted(_list(statements["FailureHandlers"]["Resource"])) == sorted(
        set(web.failure_handlers.values())
    )
    assert _list(statements["FlowState"]["Resource"]) == [
        f"arn:aws:dynamodb:{s.config.region}:{rendered.account}:table/"
        f"{naming.coordination_table(s.config.name)}"
    ]
