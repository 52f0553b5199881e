"""The cost model against the synthesized templates: every resource type of every environment is
priced or listed free with a reason, docs/cost.md holds what the model gives for them, and dev's
cheaper flow log is priced as such."""

from __future__ import annotations

import copy

import pytest

from stacks.cost import (
    UnpricedResource,
    check_priced,
    fixed_monthly,
    load_table,
    report,
    resources,
    section,
)
from stacks.summary import templates
from tests.conftest import ROOT
from tests.infra.conftest import resources as of_type

COST_DOC = ROOT / "docs" / "cost.md"


def test_every_resource_type_of_the_environment_is_priced_or_free(synth, env: str):
    found = resources(templates(synth(env).outdir))
    check_priced(load_table(), found)  # raises naming each unpriced type
    assert {kind for kind, _ in found} <= set(load_table().resource_types)


def test_a_template_with_a_new_resource_type_fails_the_cost_model(synth):
    # Given dev's templates with one resource of a type the price table does not know
    stacks = copy.deepcopy(templates(synth("dev").outdir))
    first = next(iter(stacks.values()))
    first["Resources"]["NewCache"] = {
        "Type": "AWS::ElastiCache::CacheCluster",
        "Properties": {"CacheNodeType": "cache.t4g.micro", "NumCacheNodes": 1},
    }
    # Then the model refuses it, naming the type
    with pytest.raises(UnpricedResource, match=r"AWS::ElastiCache::CacheCluster"):
        fixed_monthly(load_table(), resources(stacks))


def test_the_fixed_cost_counts_what_the_templates_create(synth, env: str):
    s = synth(env)
    lines = {
        line.item: line for line in fixed_monthly(load_table(), resources(templates(s.outdir)))
    }
    nat = of_type(s.stateful, "AWS::EC2::NatGateway")
    alarms = of_type(s.stateless, "AWS::CloudWatch::Alarm")
    assert lines["NAT gateways"].quantity == len(nat) * 730
    assert len(nat) == s.config.network.nat_gateways
    assert lines["CloudWatch alarms"].quantity == len(alarms) > 0
    assert lines["worker instances"].quantity == s.config.worker.min_instances * 730
    assert ("Amazon MQ broker" in lines) == (s.config.broker is not None)


def test_docs_cost_md_holds_what_the_model_gives(synth, env: str):
    s = synth(env)
    expected = report(load_table(), s.config, resources(templates(s.outdir)))
    assert section(COST_DOC.read_text(), env) == expected, "run `make cost-docs`"


def test_dev_keeps_only_rejected_traffic_and_pays_less_for_it(synth):
    s = synth("dev")
    assert s.config.network.flow_log_traffic == "REJECT"
    table = load_table()
    lines = {line.item: line for line in fixed_monthly(table, resources(templates(s.outdir)))}
    a = table.assumptions
    assert lines["VPC flow logs"].quantity == a.flow_log_gb_per_month * a.flow_log_reject_fraction
