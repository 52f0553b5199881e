"""Heavy steps in the templates: the tasks queue, the two callback workflows, the worker's grants."""

from __future__ import annotations

import json
from typing import Any

from sluice import catalog
from sluice.naming import alias_variable
from sluice.settings import LambdaSettings
from sluice.workflows import FAILURE_GRACE_S
from stacks.declarations import declared
from tests.infra.conftest import resources

# The Lambdas' variables, by setting (sluice.settings.LambdaSettings).
LAMBDA_VARS = LambdaSettings.variables()


def _by_description(template: Any, kind: str, text: str) -> dict[str, Any]:
    found = {
        lid: r["Properties"]
        for lid, r in resources(template, kind).items()
        if text in json.dumps(r["Properties"].get("Description", ""))
    }
    assert len(found) == 1, f"{kind} with {text!r}: {sorted(found)}"
    return next(iter(found.items()))  # type: ignore[return-value]


def _statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return policy["PolicyDocument"]["Statement"]


def test_tasks_queue_dead_letters_after_its_receive_count_with_tls_and_encryption(synth, env):
    # Given the stateful stack
    s = synth(env)
    queues = {
        q["Properties"]["QueueName"]: (lid, q["Properties"])
        for lid, q in resources(s.stateful, "AWS::SQS::Queue").items()
    }
    # When we look at the tasks queue
    _, props = queues[f"Sluice-{env}-tasks"]
    dlq_id, _ = queues[f"Sluice-{env}-tasks-dlq"]
    # Then it redrives to its own DLQ, keeps a task invisible for the configured time, is
    # encrypted (KMS where the environment asks for it) and refuses non-TLS access
    assert props["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": [dlq_id, "Arn"]}
    assert props["RedrivePolicy"]["maxReceiveCount"] == s.config.tasks_queue.max_receive_count
    assert props["VisibilityTimeout"] == s.config.tasks_queue.visibility_timeout_s
    if s.config.tasks_queue.customer_managed_key:
        assert "KmsMasterKeyId" in props
    else:
        assert props["SqsManagedSseEnabled"] is True
    tasks_id, _ = queues[f"Sluice-{env}-tasks"]
    tls = [
        p
        for p in resources(s.stateful, "AWS::SQS::QueuePolicy").values()
        if {"Ref": tasks_id} in p["Properties"]["Queues"]
    ]
    assert len(tls) == 1 and "aws:SecureTransport" in json.dumps(tls[0])


def test_heavy_workflows_are_durable_and_send_only_to_the_tasks_queue(synth, env):
    # Given the stateless stack
    s = synth(env)
    for name in ("transcode_audio", "embed_transcript"):
        # When we look at the workflow function and its policy
        _, fn = _by_description(s.stateless, "AWS::Lambda::Function", f"workflow {name}")
        _, policy = _by_description(
            s.stateless, "AWS::IAM::ManagedPolicy", f"workflow {name}: what it touches"
        )
        # Then it is a durable function that knows the tasks queue and the callback timeouts
        decl = declared()[name]
        assert fn["DurableConfig"]["ExecutionTimeout"] == decl.timeout_s + FAILURE_GRACE_S
        assert fn["Handler"] == f"lambdas.workflows.{name}.handler.handler"
        variables = fn["Environment"]["Variables"]
        assert {
            LAMBDA_VARS["tasks_queue_url"],
            LAMBDA_VARS["media_bucket"],
            LAMBDA_VARS["heavy_heartbeat_timeout_s"],
        } <= set(variables)
        assert (
            int(variables[LAMBDA_VARS["heavy_heartbeat_timeout_s"]])
            > s.config.tasks_queue.visibility_timeout_s
        )
        # and it may send to the tasks queue but touches no media object, and invokes its
        # failure handler only
        actions = {a for st in _statements(policy) for a in _list(st["Action"])}
        assert "sqs:SendMessage" in actions
        assert not any(a.startswith("s3:") for a in actions)
        (invoke,) = [st for st in _statements(policy) if st["Action"] == "lambda:InvokeFunction"]
        assert len(_list(invoke["Resource"])) == 1
        assert set(variables) >= {"STEP_ON_FAILURE"}


def test_worker_role_gets_the_tasks_queue_media_prefixes_and_these_callbacks_only(synth, env):
    # Given the worker's heavy-steps policy
    s = synth(env)
    _, policy = _by_description(s.stateless, "AWS::IAM::ManagedPolicy", "worker tasks process")
    by_sid = {st["Sid"]: st for st in _statements(policy)}
    # Then it consumes the tasks queue (no send), reads uploads/ and transcripts/, writes hls/ and
    # embeddings/, and answers the callbacks of the two heavy workflows' executions
    assert set(_list(by_sid["TasksQueue"]["Action"])) == {
        "sqs:ReceiveMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    }
    reads = json.dumps(by_sid["ReadInputs"]["Resource"])
    writes = json.dumps(by_sid["WriteOutputs"]["Resource"])
    assert "/uploads/*" in reads and "/transcripts/*" in reads and "/hls/" not in reads
    assert "/hls/*" in writes and "/embeddings/*" in writes and "/uploads/" not in writes
    # And reads back and deletes only its transcodes' chunk manifests under hls/
    resume = by_sid["ResumeTranscodes"]
    assert set(_list(resume["Action"])) == {"s3:GetObject", "s3:DeleteObject"}
    manifests = f"{catalog.HLS_PREFIX}*/{catalog.TRANSCODE_RESUME_DIR}*"
    assert json.dumps(resume["Resource"]).endswith(f'/{manifests}"]]}}')
    listing = by_sid["FindTranscodeChunks"]["Condition"]["StringLike"]["s3:prefix"]
    assert _list(listing) == [manifests]
    assert set(_list(by_sid["AnswerCallbacks"]["Action"])) == {
        "lambda:SendDurableExecutionCallbackSuccess",
        "lambda:SendDurableExecutionCallbackFailure",
        "lambda:SendDurableExecutionCallbackHeartbeat",
    }
    heavy_fns = {
        fid
        for name in ("transcode_audio", "embed_transcript")
        for fid in [_by_description(s.stateless, "AWS::Lambda::Function", f"workflow {name}")[0]]
    }
    callback_targets = {
        r["Fn::Join"][1][0]["Fn::GetAtt"][0] for r in by_sid["AnswerCallbacks"]["Resource"]
    }
    assert callback_targets == heavy_fns
    assert ("DataKey" in by_sid) == s.config.tasks_queue.customer_managed_key
    roles = policy["Roles"]
    assert roles == [
        {"Ref": lid}
        for lid in resources(s.stateless, "AWS::IAM::Role")
        if lid.startswith("WorkerTasksRole")
    ]


def test_the_worker_can_start_the_heavy_workflows(synth, env):
    # Given the worker environment's settings
    s = synth(env)
    (envr,) = resources(s.stateless, "AWS::ElasticBeanstalk::Environment").values()
    names = {o["OptionName"] for o in envr["Properties"]["OptionSettings"]}
    # Then the aliases it may invoke include transcode_audio and embed_transcript
    assert {alias_variable("transcode_audio"), alias_variable("embed_transcript")} <= names


def test_the_tasks_process_is_configured_on_the_worker(synth, env):
    # Given the worker environment's settings
    s = synth(env)
    (envr,) = resources(s.stateless, "AWS::ElasticBeanstalk::Environment").values()
    values = {
        o["OptionName"]: o["Value"]
        for o in envr["Properties"]["OptionSettings"]
        if o["Namespace"] == "aws:elasticbeanstalk:application:environment"
    }
    # Then the tasks process finds its queue, concurrency and visibility timeout there
    assert "Ref" in json.dumps(values["SLUICE_TASKS_QUEUE_URL"])
    assert values["SLUICE_TASKS_CONCURRENCY"] == str(s.config.worker.tasks_concurrency)
    assert values["SLUICE_TASKS_VISIBILITY_S"] == str(s.config.tasks_queue.visibility_timeout_s)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
