"""Configuration is data, validated once: each impossible value fails with a message naming it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from stacks import config
from stacks.config import (
    AlarmConfig,
    ConfigError,
    EnvConfig,
    NetworkConfig,
    QueueConfig,
    WorkerConfig,
)
from tests.conftest import ROOT


def test_every_environment_is_valid_and_named_after_its_key():
    for name, cfg in config.ENVIRONMENTS.items():
        assert cfg.name == name
        cfg.validate()


def test_default_environment_is_dev():
    assert config.load(None).name == "dev"


def test_unknown_environment_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown environment 'qa'.*dev, staging, prod"):
        config.load("qa")


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.load("dev").name = "x"  # type: ignore[misc]


def test_prod_retains_data_and_dev_destroys_it():
    assert config.load("prod").retain_data and config.load("prod").termination_protection
    assert not config.load("dev").retain_data and not config.load("dev").termination_protection


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"events_queue": QueueConfig(max_receive_count=0)}, "dev.events_queue.max_receive_count"),
        ({"events_queue": QueueConfig(retention_s=30)}, "dev.events_queue.retention_s"),
        ({"events_queue": QueueConfig(retention_s=15 * 86400)}, "dev.events_queue.retention_s"),
        ({"events_queue": QueueConfig(dlq_retention_s=59)}, "dev.events_queue.dlq_retention_s"),
        (
            {"events_queue": QueueConfig(retention_s=86400, dlq_retention_s=3600)},
            "dev.events_queue.dlq_retention_s",
        ),
        (
            {"events_queue": QueueConfig(visibility_timeout_s=30)},
            "dev.events_queue.visibility_timeout_s",
        ),
        ({"alarms": AlarmConfig(email="not-an-address")}, "dev.alarms.email"),
        ({"alarms": AlarmConfig(email="a@b")}, "dev.alarms.email"),
        ({"worker": WorkerConfig(http_connections=0)}, "dev.worker.http_connections"),
        ({"worker": WorkerConfig(min_instances=3, max_instances=2)}, "dev.worker.min_instances"),
        ({"log_retention_days": 42}, "dev.log_retention_days"),
        ({"compliance_packs": ("NIST80053R5",)}, "dev.compliance_packs"),
        ({"account": "123"}, "dev.account"),
    ],
)
def test_impossible_value_names_the_setting(change, setting):
    with pytest.raises(ConfigError) as err:
        EnvConfig(name="dev", **change)
    assert str(err.value).startswith(f"{setting}:"), str(err.value)


def test_visibility_timeout_shorter_than_processing_timeout_explains_both():
    with pytest.raises(ConfigError) as err:
        EnvConfig(
            name="dev",
            events_queue=QueueConfig(visibility_timeout_s=100),
            worker=WorkerConfig(processing_timeout_s=200),
        )
    message = str(err.value)
    assert "events_queue.visibility_timeout_s" in message
    assert "worker.processing_timeout_s (200 s)" in message


def test_synth_of_an_unknown_environment_fails_with_the_list(tmp_path):
    # When the CDK app itself is run with a bad -c env
    proc = subprocess.run(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env={**os.environ, "CDK_CONTEXT_JSON": '{"env": "qa"}', "CDK_OUTDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Then it exits non-zero naming the setting and the valid environments
    assert proc.returncode != 0
    assert "env: unknown environment 'qa'; valid environments: dev, staging, prod" in proc.stderr


def test_log_retention_must_be_one_elastic_beanstalk_accepts_too():
    # 1096 days is a CloudWatch Logs value EB's RetentionInDays option does not list: the worker
    # environment would fail to update.
    with pytest.raises(ConfigError, match=r"^dev.log_retention_days: .*Elastic Beanstalk"):
        EnvConfig(name="dev", log_retention_days=1096)
    # The flow logs go to CloudWatch Logs only, which accepts it.
    assert EnvConfig(name="dev", network=NetworkConfig(flow_log_retention_days=1096))


def test_reserved_concurrency_must_leave_lambdas_unreserved_pool_in_the_account_quota():
    prod = config.load("prod")
    reserved = sum(s.reserved_concurrency or 0 for s in prod.workflows.steps.values())
    assert reserved == 60
    # and the broker user's provisioning function reserves its one
    assert prod.broker is not None and prod.broker.provisioner.reserved_concurrency == 1
    assert prod.reserved_concurrency() == 61
    # A new account's reduced quota cannot hold prod's reservations and Lambda's 100 unreserved.
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(prod, account_concurrency_quota=160)
    assert str(err.value).startswith("prod.account_concurrency_quota:"), str(err.value)
    assert "61" in str(err.value) and "100" in str(err.value)
    assert dataclasses.replace(prod, account_concurrency_quota=161).account_concurrency_quota == 161
    # without a broker there is nothing to provision
    assert config.load("dev").reserved_concurrency() == 0


@pytest.mark.parametrize("branch", ["", "64bit Amazon Linux 2023 v4.7.3 running Python 3.13"])
def test_the_platform_is_a_branch_not_a_pinned_version(branch):
    with pytest.raises(ConfigError, match=r"^dev.worker.platform_branch: .*running on"):
        EnvConfig(name="dev", worker=WorkerConfig(platform_branch=branch))
