"""The names a deployment gives its resources: one definition for the stacks, the CLI and local."""

from __future__ import annotations

import pytest

from sluice import naming


def test_queue_names_are_the_environments_prefix_and_the_queue():
    assert naming.queue_name("prod", "events") == "Sluice-prod-events"
    assert naming.queue_name("prod", "events", dlq=True) == "Sluice-prod-events-dlq"
    assert naming.queue_name("dev", "tasks", dlq=True) == "Sluice-dev-tasks-dlq"
    assert naming.dead_letter_queue_name("Sluice-dev-tasks") == "Sluice-dev-tasks-dlq"


def test_an_unknown_queue_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown queue 'jobs': one of events, tasks"):
        naming.queue_name("dev", "jobs")


def test_the_media_bucket_is_lowercase_and_names_account_and_region():
    assert (
        naming.media_bucket("prod", "123456789012", "eu-west-1")
        == "sluice-prod-media-123456789012-eu-west-1"
    )
    # a CDK token for the account is left as it is (only the prefix is lowercased)
    assert naming.media_bucket("dev", "${Token[AWS.AccountId.6]}", "eu-west-1").endswith(
        "-media-${Token[AWS.AccountId.6]}-eu-west-1"
    )


def test_the_jobs_table_and_notifications_topic_are_named_by_the_prefix():
    assert naming.jobs_table("prod") == "Sluice-prod-jobs"
    assert naming.notifications_topic("dev") == "Sluice-dev-notifications"


def test_the_parameters_the_stateful_stack_writes_live_under_the_environments_prefix():
    assert naming.parameter("prod", naming.VPC_ID) == "/Sluice-prod/vpc-id"
    assert naming.parameter("dev", naming.BROKER_AMQPS_ENDPOINT) == (
        "/Sluice-dev/broker/amqps-endpoint"
    )
    with pytest.raises(ValueError, match="unknown parameter 'vpc'"):
        naming.parameter("dev", "vpc")
