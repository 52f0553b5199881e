"""The events queue and its DLQ, per environment: redrive, TLS, encryption, retention."""

from __future__ import annotations

from aws_cdk.assertions import Match

from sluice import naming
from tests.infra.conftest import resources


def _queues(synth, env):
    s = synth(env)
    queues = resources(s.stateful, "AWS::SQS::Queue")
    by_name = {q["Properties"]["QueueName"]: (lid, q["Properties"]) for lid, q in queues.items()}
    return s, by_name


def test_events_queue_redrives_to_its_dlq_after_max_receive_count(synth, env):
    # Given the synthesized stateful stack
    s, queues = _queues(synth, env)
    # When we look at the events queue
    _, props = queues[f"Sluice-{env}-events"]
    dlq_id, _ = queues[f"Sluice-{env}-events-dlq"]
    # Then it dead-letters to its own DLQ after the configured number of receives
    assert props["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]},
        "maxReceiveCount": s.config.events_queue.max_receive_count,
    }
    assert props["VisibilityTimeout"] == s.config.events_queue.visibility_timeout_s


def test_dlq_keeps_messages_14_days_and_serves_only_its_source_queue(synth, env):
    _, queues = _queues(synth, env)
    _, dlq = queues[f"Sluice-{env}-events-dlq"]
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    policy = dlq["RedriveAllowPolicy"]
    assert policy["redrivePermission"] == "byQueue"
    (source,) = policy["sourceQueueArns"]
    # The ARN is built from the source queue's name (a reference would be a cycle).
    assert f":Sluice-{env}-events" in str(source)
    assert "-dlq" not in str(source)


def test_every_queue_denies_requests_without_tls(synth, env):
    s, queues = _queues(synth, env)
    policies = resources(s.stateful, "AWS::SQS::QueuePolicy")
    protected = set()
    for policy in policies.values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        denies = [
            st
            for st in statements
            if st["Effect"] == "Deny"
            and st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
            and st["Principal"] == {"AWS": "*"}
            and st["Action"] == "sqs:*"
        ]
        if denies:
            protected.update(ref["Ref"] for ref in policy["Properties"]["Queues"])
    assert protected == {lid for lid, _ in queues.values()}


def test_queues_are_encrypted_with_sqs_keys_or_the_customer_key(synth, env):
    s, queues = _queues(synth, env)
    for name, (_, props) in queues.items():
        if s.config.events_queue.customer_managed_key:
            assert "KmsMasterKeyId" in props, name
            assert "SqsManagedSseEnabled" not in props, name
        else:
            assert props.get("SqsManagedSseEnabled") is True, name
    if s.config.events_queue.customer_managed_key:
        s.stateful.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})


def test_removal_policy_follows_the_environment(synth, env):
    s, _ = _queues(synth, env)
    expected = "RetainExceptOnCreate" if s.config.retain_data else "Delete"
    s.stateful.all_resources("AWS::SQS::Queue", Match.object_like({"DeletionPolicy": expected}))


def test_prod_stacks_have_termination_protection(synth, env):
    s = synth(env)
    for stack in (s.stage.stateful, s.stage.stateless):
        assert stack.termination_protection is s.config.termination_protection
    assert synth("prod").stage.stateful.termination_protection is True
    assert synth("dev").stage.stateful.termination_protection is False


def test_stack_names_carry_the_environment(synth, env):
    s = synth(env)
    assert s.stage.stateful.stack_name == f"Sluice-{env}-stateful"
    assert s.stage.stateless.stack_name == f"Sluice-{env}-stateless"


def test_retained_resources_go_away_when_their_first_create_rolls_back(synth, env):
    """A retained, named resource that outlived a failed first create would make the retry fail
    with "already exists": keep data only once the stack that created it succeeded."""
    s = synth(env)
    policies = {
        (lid, r.get("DeletionPolicy", "Delete"))
        for t in (s.stateful, s.stateless)
        for lid, r in t.to_json()["Resources"].items()
    }
    kept = {p for _, p in policies} - {"Delete"}
    if s.config.retain_data:
        assert kept == {"RetainExceptOnCreate"}
    else:
        assert kept == set()


def test_every_queue_is_named_by_sluice_naming(synth, env):
    # The CLI and `make local` find the queues by these names
    _, queues = _queues(synth, env)
    assert set(queues) == {
        naming.queue_name(env, queue, dlq=dlq) for queue in naming.QUEUES for dlq in (False, True)
    }
