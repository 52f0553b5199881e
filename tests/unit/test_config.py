"""Configuration is data, validated once: each impossible value fails with a message naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pydantic
import pytest

from stacks import config
from stacks.config import ConfigError, EnvConfig
from tests.conftest import ROOT


def test_every_environment_is_valid_and_named_after_its_key():
    for name, cfg in config.ENVIRONMENTS.items():
        assert cfg.name == name
        assert config.replace(cfg) == cfg  # validated again, unchanged


def test_default_environment_is_dev():
    assert config.load(None).name == "dev"


def test_unknown_environment_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown environment 'qa'.*dev, staging, prod"):
        config.load("qa")


def test_config_is_frozen():
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.load("dev").name = "x"
    with pytest.raises(TypeError):
        config.load("dev").workflows.steps["on_failure"] = config.FunctionConfig()  # type: ignore[index]


def test_prod_retains_data_and_dev_destroys_it():
    assert config.load("prod").retain_data and config.load("prod").termination_protection
    assert not config.load("dev").retain_data and not config.load("dev").termination_protection


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"events_queue": {"max_receive_count": 0}}, "dev.events_queue.max_receive_count"),
        ({"events_queue": {"retention_s": 30}}, "dev.events_queue.retention_s"),
        ({"events_queue": {"retention_s": 15 * 86400}}, "dev.events_queue.retention_s"),
        ({"events_queue": {"dlq_retention_s": 59}}, "dev.events_queue.dlq_retention_s"),
        (
            {"events_queue": {"retention_s": 86400, "dlq_retention_s": 3600}},
            "dev.events_queue.dlq_retention_s",
        ),
        (
            {"events_queue": {"visibility_timeout_s": 30}},
            "dev.events_queue.visibility_timeout_s",
        ),
        ({"alarms": {"email": "not-an-address"}}, "dev.alarms.email"),
        ({"alarms": {"email": "a@b"}}, "dev.alarms.email"),
        ({"worker": {"http_connections": 0}}, "dev.worker.http_connections"),
        ({"worker": {"min_instances": 3, "max_instances": 2}}, "dev.worker.min_instances"),
        ({"log_retention_days": 42}, "dev.log_retention_days"),
        ({"compliance_packs": ("NIST80053R5",)}, "dev.compliance_packs"),
        ({"account": "123"}, "dev.account"),
        ({"broker": {"hold_tokens_s": -1}}, "dev.broker.hold_tokens_s"),
        # beyond SCHEDULER_HOLD_MAX_S: near RabbitMQ's consumer timeout
        ({"broker": {"hold_tokens_s": 601}}, "dev.broker.hold_tokens_s"),
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
            events_queue={"visibility_timeout_s": 100},
            worker={"processing_timeout_s": 200},
        )
    message = str(err.value)
    assert "events_queue.visibility_timeout_s" in message
    assert "worker.processing_timeout_s (200 s)" in message


@pytest.mark.infra  # runs the CDK app
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
    assert EnvConfig(name="dev", network={"flow_log_retention_days": 1096})


def test_reserved_concurrency_must_leave_lambdas_unreserved_pool_in_the_account_quota():
    prod = config.load("prod")
    reserved = sum(s.reserved_concurrency or 0 for s in prod.workflows.steps.values())
    assert reserved == 70  # 10 for each of the 7 step Lambdas
    # and the broker user's provisioning function reserves its one
    assert prod.broker is not None and prod.broker.provisioner.reserved_concurrency == 1
    assert prod.reserved_concurrency() == 71
    # A new account's reduced quota cannot hold prod's reservations and Lambda's 100 unreserved.
    with pytest.raises(ConfigError) as err:
        config.replace(prod, account_concurrency_quota=170)
    assert str(err.value).startswith("prod.account_concurrency_quota:"), str(err.value)
    assert "71" in str(err.value) and "100" in str(err.value)
    assert config.replace(prod, account_concurrency_quota=171).account_concurrency_quota == 171
    # without a broker there is nothing to provision
    assert config.load("dev").reserved_concurrency() == 0


@pytest.mark.parametrize("branch", ["", "64bit Amazon Linux 2023 v4.7.3 running Python 3.13"])
def test_the_platform_is_a_branch_not_a_pinned_version(branch):
    with pytest.raises(ConfigError, match=r"^dev.worker.platform_branch: .*running on"):
        EnvConfig(name="dev", worker={"platform_branch": branch})


# What pydantic adds: a typo of type or of name fails with the setting named, where the
# dataclasses took it (True or "5" for an int, "false" for a bool, a trailing newline).
@pytest.mark.parametrize(
    ("change", "message"),
    [
        # a bool is an int to Python: True would have been 1 receive
        ({"events_queue": {"max_receive_count": True}}, "dev.events_queue.max_receive_count: "),
        (
            {"alarms": {"queue_age_s": "300"}},
            "dev.alarms.queue_age_s: must be a valid integer, got '300'",
        ),
        ({"worker": {"max_instances": 2.5}}, "dev.worker.max_instances: must be a valid integer"),
        # a non-empty string is truthy: "false" would have retained dev's data
        ({"retain_data": "false"}, "dev.retain_data: must be a valid boolean, got 'false'"),
        ({"log_retention_days": True}, "dev.log_retention_days: must be a valid integer"),
        ({"events_queue": None}, "dev.events_queue: must be a valid dictionary"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_setting(change, message):
    with pytest.raises(ConfigError) as err:
        EnvConfig(name="dev", **change)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"retian_data": True}, "dev.retian_data: unknown setting (known: name, region,"),
        (
            {"events_queue": {"max_recieve_count": 3}},
            "dev.events_queue.max_recieve_count: unknown setting (known: max_receive_count,",
        ),
        (
            {"workflows": {"steps": {"on_failure": {"memory": 512}}}},
            "dev.workflows.steps.on_failure.memory: unknown setting (known: memory_mb,",
        ),
        # a step's sizing under a misspelled name would silently size nothing
        (
            {"workflows": {"steps": {"fetch_audio_metdata": {"memory_mb": 512}}}},
            "dev.workflows.steps: unknown step 'fetch_audio_metdata'; the steps are check_transcription, fetch_audio_",
        ),
    ],
)
def test_a_misspelled_setting_names_it_and_the_known_ones(change, message):
    with pytest.raises(ConfigError) as err:
        EnvConfig(name="dev", **change)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"alarms": {"email": "oncall@example.com\n"}}, "dev.alarms.email"),
        ({"region": "eu-west-1\n"}, "dev.region"),
        ({"account": "123456789012\n"}, "dev.account"),
        ({"broker": {"maintenance_time_utc": "04:00\n"}}, "dev.broker.maintenance_time_utc"),
        ({"worker": {"http_path": "/\n"}}, "dev.worker.http_path"),
    ],
)
def test_a_pattern_matches_the_whole_value_not_up_to_a_trailing_newline(change, setting):
    # re's `$` also matches before a final newline; the patterns are matched in full.
    with pytest.raises(ConfigError, match=rf"^{setting}: must be .*\\n'$"):
        EnvConfig(name="dev", **change)


def test_a_range_names_both_bounds_and_the_value():
    with pytest.raises(ConfigError) as err:
        EnvConfig(name="dev", events_queue={"max_receive_count": 0})
    assert str(err.value) == "dev.events_queue.max_receive_count: must be between 1 and 1000, got 0"


def test_every_wrong_setting_is_named_one_per_line():
    with pytest.raises(ConfigError) as err:
        EnvConfig(name="dev", network={"max_azs": 1}, alarms={"email": "x", "step_errors": 0})
    assert str(err.value).splitlines() == [
        "dev.network.max_azs: must be >= 2, got 1",
        "dev.alarms.email: must be an e-mail address, got 'x'",
        "dev.alarms.step_errors: must be >= 1, got 0",
    ]


def test_an_impossible_name_is_named_without_an_environment():
    with pytest.raises(ConfigError, match=r"^name: must be 2-16 lowercase letters"):
        EnvConfig(name="Dev")


def test_rabbitmq_4_needs_a_graviton_broker():
    with pytest.raises(
        ConfigError, match=r"^dev.broker.instance_type: RabbitMQ 4.2 runs only on mq.m7g"
    ):
        EnvConfig(name="dev", broker={"instance_type": "mq.m5.large"})
    assert EnvConfig(name="dev", broker={"instance_type": "mq.m5.large", "engine_version": "3.13"})


def test_replace_validates_what_model_copy_would_not():
    dev = config.load("dev")
    # model_copy(update=...) builds the copy without validating it: replace() is the way.
    assert dev.model_copy(update={"log_retention_days": 42}).log_retention_days == 42
    with pytest.raises(ConfigError, match=r"^dev.log_retention_days: "):
        config.replace(dev, log_retention_days=42)
    assert config.replace(dev, worker={"min_instances": 2}).worker.min_instances == 2


@pytest.mark.parametrize(
    ("worker", "message"),
    [
        (
            {"tasks_concurrency": 4, "tasks_per_instance": 2},
            r"^dev.worker.tasks_per_instance: \(2\) must be >= tasks_concurrency \(4\)",
        ),
        (
            {"drain_s": 900, "deploy_timeout_s": 900},
            r"^dev.worker.deploy_timeout_s: \(900 s\) must be >= drain_s \(900 s\) \+ 120 s",
        ),
        (
            {"deployment_policy": "AllAtOnce"},
            r"^dev.worker.deployment_policy: must be 'RollingWithAdditionalBatch' or 'Immutable'",
        ),
        ({"deploy_timeout_s": 3601}, r"^dev.worker.deploy_timeout_s: must be between 1 and 3600"),
    ],
)
def test_scaling_and_deploys_refuse_what_cannot_work(worker, message):
    with pytest.raises(ConfigError, match=message):
        EnvConfig(name="dev", worker=worker)


def test_the_tasks_process_stops_after_its_drain_and_cleanup_within_a_deploy():
    from stacks.config import DRAIN_MARGIN_S, TASKS_STOP_MARGIN_S
    from worker.tasks import CLEANUP_S

    # The cleanup after the drain fits in systemd's margin, which fits in the deploy's
    assert CLEANUP_S < TASKS_STOP_MARGIN_S < DRAIN_MARGIN_S
    for cfg in config.ENVIRONMENTS.values():
        w = cfg.worker
        assert w.drain_s < w.tasks_stop_timeout_s < w.deploy_timeout_s
