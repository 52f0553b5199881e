"""The worker VPC's settings are checked when the configuration loads."""

from __future__ import annotations

import pytest

from stacks.config import ConfigError, EnvConfig


def test_a_flow_log_retention_cloudwatch_refuses_names_the_setting():
    with pytest.raises(ConfigError, match=r"^x1\.network\.flow_log_retention_days: "):
        EnvConfig(name="x1", network={"flow_log_retention_days": 45})


def test_more_nat_gateways_than_zones_names_the_setting():
    with pytest.raises(ConfigError, match=r"^x1\.network\.nat_gateways: "):
        EnvConfig(name="x1", network={"max_azs": 2, "nat_gateways": 3})


def test_a_flow_log_traffic_ec2_does_not_know_names_the_setting():
    # CreateFlowLogs takes TrafficType ACCEPT, REJECT or ALL; ACCEPT alone would drop the refused
    # connections, the one signal a cheaper log keeps.
    with pytest.raises(ConfigError, match=r"^x1\.network\.flow_log_traffic: "):
        EnvConfig(name="x1", network={"flow_log_traffic": "ACCEPT"})
