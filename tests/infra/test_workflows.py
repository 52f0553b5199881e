"""The transcription workflow's infrastructure: durable config, alias, scoped roles, sizing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sluice import catalog, naming
from sluice.workflows import FAILURE_GRACE_S
from stacks import config as config_mod
from stacks import workflows
from stacks.bundling import stage_bundle
from stacks.declarations import declared
from stacks.workflows import deps_layer

DECLARATION = declared()["transcribe_audio"]
STEPS = DECLARATION.lambdas
WORKFLOW_HANDLER = "lambdas.workflows.transcribe_audio.handler.handler"


def _step_handler(step: str) -> str:
    return f"lambdas.steps.{step}.handler.handler"


def _functions(template) -> dict[str, tuple[str, dict[str, Any]]]:
    """handler -> (logical id, properties) of every Lambda function in the template."""
    return {
        r["Properties"].get("Handler", lid): (lid, r["Properties"])
        for lid, r in template.find_resources("AWS::Lambda::Function").items()
    }


def _statements_of_role(template, role_id: str) -> list[dict[str, Any]]:
    """Every statement of the managed policies that name role `role_id`."""
    out = []
    for policy in template.find_resources("AWS::IAM::ManagedPolicy").values():
        roles = policy["Properties"].get("Roles", [])
        if {"Ref": role_id} in roles:
            out.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return out


def _role_of(props: dict[str, Any]) -> str:
    return props["Role"]["Fn::GetAtt"][0]


def _actions(statements: list[dict[str, Any]]) -> set[str]:
    acts: set[str] = set()
    for s in statements:
        a = s["Action"]
        acts.update([a] if isinstance(a, str) else a)
    return acts


def test_the_workflow_is_a_durable_function_with_its_declared_timeout_and_retention_from_config(
    synth, env
):
    s = synth(env)
    _, props = _functions(s.stateless)[WORKFLOW_HANDLER]
    wf = s.config.workflows
    assert props["DurableConfig"] == {
        # the declared timeout, and the failure handler's grace after it
        "ExecutionTimeout": DECLARATION.timeout_s + FAILURE_GRACE_S,
        "RetentionPeriodInDays": wf.retention_days,
    }
    assert (props["Runtime"], props["Architectures"]) == ("python3.14", ["arm64"])
    assert props["TracingConfig"] == {"Mode": "Active"}


def test_every_function_is_invoked_through_a_live_alias(synth):
    s = synth("dev")
    aliases = s.stateless.find_resources("AWS::Lambda::Alias")
    functions = _functions(s.stateless)
    ours = [functions[h][0] for h in [WORKFLOW_HANDLER, *map(_step_handler, STEPS)]]
    aliased = {a["Properties"]["FunctionName"]["Ref"]: a["Properties"] for a in aliases.values()}
    for lid in ours:
        assert aliased[lid]["Name"] == "live"
        assert "Fn::GetAtt" in aliased[lid]["FunctionVersion"]  # a published version


def test_the_worker_gets_the_alias_of_each_declared_workflow(synth):
    s = synth("dev")
    stateless = s.stage.stateless
    # Workflows builds those that do not use the tasks queue; HeavySteps the others
    light = {n for n, d in declared().items() if "tasks_queue" not in d.uses}
    assert set(stateless.workflows.aliases) == light
    assert set(stateless.workflows.aliases) | set(stateless.heavy.aliases) == set(declared())
    for alias in [*stateless.workflows.aliases.values(), *stateless.heavy.aliases.values()]:
        assert alias.alias_name == "live"


def test_the_workflow_invokes_steps_through_their_aliases(synth):
    s = synth("dev")
    _, props = _functions(s.stateless)[WORKFLOW_HANDLER]
    env_vars = props["Environment"]["Variables"]
    for step in STEPS:
        assert f"STEP_{step.upper()}" in env_vars, step
    statements = _statements_of_role(s.stateless, _role_of(props))
    (invoke,) = [st for st in statements if st["Action"] == "lambda:InvokeFunction"]
    assert len(invoke["Resource"]) == len(STEPS)
    assert all("Ref" in r for r in invoke["Resource"])  # alias ARNs, never `*`


def test_each_step_has_its_own_role(synth):
    functions = _functions(synth("dev").stateless)
    roles = [_role_of(functions[_step_handler(s)][1]) for s in STEPS]
    roles.append(_role_of(functions[WORKFLOW_HANDLER][1]))
    assert len(set(roles)) == len(roles)


def test_no_permission_uses_a_star_resource_except_resourceless_actions(synth, env):
    s = synth(env)
    functions = _functions(s.stateless)
    for handler in [WORKFLOW_HANDLER, *map(_step_handler, STEPS)]:
        for st in _statements_of_role(s.stateless, _role_of(functions[handler][1])):
            if st["Resource"] != "*":
                continue
            if _actions([st]) == {"transcribe:StartTranscriptionJob"}:
                # No resource type exists for it: its condition keys do the scoping.
                assert set(st["Condition"]["StringEquals"]) >= {"transcribe:OutputBucketName"}
            else:
                assert _actions([st]) <= {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def test_transcription_output_goes_only_to_the_media_bucket_with_the_data_key(synth, env):
    s = synth(env)
    _, props = _functions(s.stateless)[_step_handler("start_transcription")]
    statements = _statements_of_role(s.stateless, _role_of(props))
    (start,) = [st for st in statements if st["Action"] == "transcribe:StartTranscriptionJob"]
    conditions = start["Condition"]["StringEquals"]
    assert "-media-" in json.dumps(conditions["transcribe:OutputBucketName"])
    if s.stage.stateful.key is None:
        assert "transcribe:OutputEncryptionKMSKeyId" not in conditions
    else:
        # The caller encrypts Transcribe's output with the data key (AWS: "the role making the
        # request must have permission to use the specified KMS key").
        key = s.resolve(conditions["transcribe:OutputEncryptionKMSKeyId"])
        assert key == s.stateful_value("DataKey", "Arn")
        assert {"kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"} <= _actions(statements)


@pytest.mark.parametrize(
    ("step", "allowed"),
    [
        ("fetch_audio_metadata", {"s3:GetObject", "s3:GetObjectVersion"}),
        (
            "start_transcription",
            {
                "transcribe:StartTranscriptionJob",
                "transcribe:GetTranscriptionJob",
                "s3:GetObject",
                "s3:GetObjectVersion",
                "s3:PutObject",
            },
        ),
        ("check_transcription", {"transcribe:GetTranscriptionJob"}),
        ("parse_save_transcription", {"s3:GetObject", "s3:PutObject", "dynamodb:UpdateItem"}),
        ("notify_user", {"sns:Publish", "sqs:SendMessage"}),
        ("on_failure", {"dynamodb:UpdateItem", "sns:Publish"}),
    ],
)
def test_each_step_role_is_limited_to_what_its_step_touches(synth, step, allowed):
    s = synth("dev")
    _, props = _functions(s.stateless)[_step_handler(step)]
    common = {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
    }
    assert _actions(_statements_of_role(s.stateless, _role_of(props))) == allowed | common


def test_step_object_access_is_limited_to_its_key_prefixes(synth):
    s = synth("dev")
    _, props = _functions(s.stateless)[_step_handler("parse_save_transcription")]
    by_action = {
        st["Action"]: json.dumps(st["Resource"])
        for st in _statements_of_role(s.stateless, _role_of(props))
        if str(st["Action"]).startswith("s3:")
    }
    assert by_action["s3:GetObject"].endswith(
        '-media-", {"Ref": "AWS::AccountId"}, "-eu-west-1/tmp/transcribe/*"]]}'
    )
    assert by_action["s3:PutObject"].endswith('-eu-west-1/transcripts/*"]]}')


def test_prod_steps_may_use_the_data_key(synth):
    s = synth("prod")
    _, props = _functions(s.stateless)[_step_handler("notify_user")]
    actions = _actions(_statements_of_role(s.stateless, _role_of(props)))
    assert {"kms:Decrypt", "kms:GenerateDataKey"} <= actions


def test_sizing_and_reserved_concurrency_come_from_config(synth, env):
    s = synth(env)
    functions = _functions(s.stateless)
    for step in STEPS:
        sizing = s.config.workflows.step(step)
        _, props = functions[_step_handler(step)]
        assert (props["MemorySize"], props["Timeout"]) == (sizing.memory_mb, sizing.timeout_s)
        assert props.get("ReservedConcurrentExecutions") == sizing.reserved_concurrency


def test_prod_reserves_concurrency_for_every_step():
    prod = config_mod.load("prod").workflows
    assert all(prod.step(s).reserved_concurrency for s in STEPS)


def test_log_groups_keep_logs_for_the_environment_retention(synth, env):
    s = synth(env)
    groups = s.stateless.find_resources("AWS::Logs::LogGroup")
    functions = _functions(s.stateless)
    for handler in [WORKFLOW_HANDLER, *map(_step_handler, STEPS)]:
        lid = functions[handler][1]["LoggingConfig"]["LogGroup"]["Ref"]
        assert groups[lid]["Properties"]["RetentionInDays"] == s.config.log_retention_days


def test_the_media_bucket_is_private_encrypted_versioned_logged_with_tmp_lifecycle(synth, env):
    s = synth(env)
    buckets = s.stateful.find_resources("AWS::S3::Bucket")
    (media,) = [
        b["Properties"] for b in buckets.values() if "LoggingConfiguration" in b["Properties"]
    ]
    assert media["VersioningConfiguration"] == {"Status": "Enabled"}
    assert media["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    algo = media["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"
    ]["SSEAlgorithm"]
    assert algo == ("aws:kms" if s.config.data_key else "AES256")
    rules = {r.get("Prefix"): r for r in media["LifecycleConfiguration"]["Rules"]}
    assert rules["tmp/"]["ExpirationInDays"] == 7


def _tables(s) -> dict[str, dict]:
    """The stateful stack's tables by their partition key (job_id: jobs, pk: coordination)."""
    tables = s.stateful.find_resources("AWS::DynamoDB::Table").values()
    return {t["Properties"]["KeySchema"][0]["AttributeName"]: t["Properties"] for t in tables}


@pytest.mark.parametrize("pk", ["job_id", "pk"])
def test_the_jobs_and_coordination_tables_have_pitr_encryption_and_ttl(synth, env, pk):
    s = synth(env)
    props = _tables(s)[pk]
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert props["BillingMode"] == "PAY_PER_REQUEST"


def test_the_coordination_table_is_named_for_its_environment_and_every_workflow_reaches_it(
    synth, env
):
    s = synth(env)
    table = _tables(s)["pk"]
    assert table["TableName"] == naming.coordination_table(env)
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["pk", "sk"]
    for name in catalog.WORKFLOWS:
        _, props = _functions(s.stateless)[f"lambdas.workflows.{name}.handler.handler"]
        variables = props["Environment"]["Variables"]
        assert variables["SLUICE_COORDINATION_TABLE"] == naming.coordination_table(env), name
    policies = json.dumps(s.stateless.find_resources("AWS::IAM::ManagedPolicy"))
    assert f"table/{naming.coordination_table(env)}" in policies
    assert "lambda:GetDurableExecution" in policies


def test_the_notifications_topic_is_encrypted_and_tls_only(synth, env):
    s = synth(env)
    topics = s.stateful.find_resources("AWS::SNS::Topic")
    (topic,) = [t for t in topics.values() if "job notifications" in t["Properties"]["DisplayName"]]
    assert "KmsMasterKeyId" in topic["Properties"]
    policies = json.dumps(s.stateful.find_resources("AWS::SNS::TopicPolicy"))
    assert '"aws:SecureTransport": "false"' in policies


def test_the_same_sources_give_the_same_bundle(tmp_path):
    parts = {"sluice": config_mod.__file__ and workflows.ROOT / "sluice"}
    assert stage_bundle("x", parts, build_dir=tmp_path) == stage_bundle(
        "x", parts, build_dir=tmp_path
    )


def test_the_same_code_gives_the_same_asset_in_every_environment(synth):
    def code_key(env: str) -> str:
        _, props = _functions(synth(env).stateless)[_step_handler("notify_user")]
        return json.dumps(props["Code"]["S3Key"])

    assert code_key("dev") == code_key("staging")


def test_synth_names_the_make_target_when_lambda_deps_are_missing(tmp_path, monkeypatch):
    import aws_cdk as cdk

    monkeypatch.setattr(workflows, "DEPS", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="make lambda-deps"):
        deps_layer(cdk.Stack(cdk.App(), "S"), "Deps")
