"""The cost model (stacks/cost.py): its arithmetic on small hand-computed cases, its refusal of an
unpriced resource type, the price table's provenance, and the reference job's facts against the
code that runs the job."""

from __future__ import annotations

import json
import re

import pytest

from lambdas.workflows.transcribe_audio import handler as transcribe
from stacks import config
from stacks.cost import (
    EXPRESS_MAX_S,
    FIXED,
    Pipeline,
    PriceTable,
    UnpricedResource,
    check_priced,
    express_runs,
    fixed_monthly,
    load_table,
    main,
    per_thousand_jobs,
    replace_section,
    section,
    standard_transitions,
    step_functions,
    total,
)
from stacks.declarations import declared
from worker.heavy import embed, transcode

TABLE = load_table()


def small_table(**prices: float) -> PriceTable:
    """The real table's structure with round prices, so each case is computed by hand."""
    doc = TABLE.model_dump()
    for name in doc["prices"]:
        doc["prices"][name].update(usd=prices.get(name.replace(".", "_"), 0.0))
    doc["hours_per_month"] = 100  # round hours
    return PriceTable.model_validate(doc)


def worker_env(instance_type: str = "t3.medium", min_size: int = 2) -> tuple[str, dict]:
    settings = [
        {"Namespace": "aws:ec2:instances", "OptionName": "InstanceTypes", "Value": instance_type},
        {"Namespace": "aws:autoscaling:asg", "OptionName": "MinSize", "Value": str(min_size)},
    ]
    return "AWS::ElasticBeanstalk::Environment", {"OptionSettings": settings}


def by_item(lines) -> dict[str, float]:
    return {line.item: round(line.usd, 6) for line in lines}


# -- fixed cost --------------------------------------------------------------------------------


def test_instances_are_min_size_times_hours_times_the_hourly_price():
    # Given 2 x t3.medium at $0.10 an hour and a 100-hour month
    table = small_table(ec2_t3_medium=0.10)
    # When the fixed cost is computed
    lines = by_item(fixed_monthly(table, [worker_env(min_size=2)]))
    # Then 2 x 100 h x 0.10 = 20
    assert lines["worker instances"] == 20.0


def test_an_instance_type_without_a_price_fails_naming_it():
    with pytest.raises(UnpricedResource, match=r"ec2\.m9\.huge"):
        fixed_monthly(TABLE, [worker_env(instance_type="m9.huge")])


def test_nat_gateways_their_addresses_and_the_stated_traffic():
    # Given 2 NAT gateways at $0.05/h + $0.01/GB, 2 EIPs at $0.005/h, 5 GB a month assumed
    table = small_table(nat_hour=0.05, nat_gb=0.01, ipv4_hour=0.005)
    table = table.with_changes(nat_gb_per_month=5)
    found = [("AWS::EC2::NatGateway", {})] * 2 + [("AWS::EC2::EIP", {})] * 2
    lines = by_item(fixed_monthly(table, found))
    # Then 2 x 100 x 0.05 = 10; 5 x 0.01 = 0.05; 2 x 100 x 0.005 = 1
    assert lines == {"NAT gateways": 10.0, "NAT data processed": 0.05, "public IPv4 addresses": 1.0}


def test_a_cluster_broker_is_three_instances_a_single_one_one():
    table = small_table(mq_mq_m7g_large=1.0, mq_mq_m7g_medium=0.5)
    cluster = ("AWS::AmazonMQ::Broker", {"HostInstanceType": "mq.m7g.large",
                                         "DeploymentMode": "CLUSTER_MULTI_AZ"})  # fmt: skip
    single = ("AWS::AmazonMQ::Broker", {"HostInstanceType": "mq.m7g.medium",
                                        "DeploymentMode": "SINGLE_INSTANCE"})  # fmt: skip
    assert total(fixed_monthly(table, [cluster])) == 300.0  # 3 x 100 h x 1.0
    assert total(fixed_monthly(table, [single])) == 50.0  # 1 x 100 h x 0.5


def test_keys_alarms_dashboards_and_secrets_are_counted():
    table = small_table(kms_key=1.0, cloudwatch_alarm=0.1, cloudwatch_dashboard=3.0,
                        secrets_secret=0.4)  # fmt: skip
    found = (
        [("AWS::KMS::Key", {})] * 2
        + [("AWS::CloudWatch::Alarm", {})] * 41
        + [("AWS::CloudWatch::Dashboard", {})]
        + [("AWS::SecretsManager::Secret", {})] * 2
    )
    lines = by_item(fixed_monthly(table, found))
    assert lines == {"KMS keys": 2.0, "CloudWatch alarms": 4.1, "dashboards": 3.0, "secrets": 0.8}


def test_logs_are_priced_at_the_stated_volume_and_kept_for_their_retention():
    # Given 10 GB a month, ingestion $0.5/GB, archive $0.03/GB-month, groups kept 30 and 90 days
    table = small_table(logs_ingest=0.5, logs_storage=0.03).with_changes(log_gb_per_month=10)
    found = [("AWS::Logs::LogGroup", {"RetentionInDays": 30}),
             ("AWS::Logs::LogGroup", {"RetentionInDays": 90})]  # fmt: skip
    lines = by_item(fixed_monthly(table, found))
    # Then ingestion 10 x 0.5 = 5; archive 10 GB x 2 months (60 days on average) x 0.03 = 0.6
    assert lines == {"log ingestion": 5.0, "log archive": 0.6}


def test_a_reject_only_flow_log_costs_its_fraction_of_all():
    table = small_table(logs_vended=1.0).with_changes(
        flow_log_gb_per_month=4, flow_log_reject_fraction=0.25
    )
    every = total(fixed_monthly(table, [("AWS::EC2::FlowLog", {"TrafficType": "ALL"})]))
    rejected = total(fixed_monthly(table, [("AWS::EC2::FlowLog", {"TrafficType": "REJECT"})]))
    assert (every, rejected) == (4.0, 1.0)


def test_gateway_endpoints_are_free_interface_endpoints_are_charged_per_zone():
    table = small_table(vpce_interface_hour=0.01)
    gateway = ("AWS::EC2::VPCEndpoint", {"VpcEndpointType": "Gateway"})
    interface = ("AWS::EC2::VPCEndpoint", {"VpcEndpointType": "Interface",
                                           "SubnetIds": ["a", "b"]})  # fmt: skip
    assert total(fixed_monthly(table, [gateway])) == 0
    assert total(fixed_monthly(table, [gateway, interface])) == 2.0  # 2 AZs x 100 h x 0.01


# -- a resource type without a price -----------------------------------------------------------


def test_a_resource_type_the_table_does_not_list_fails_naming_it():
    # Given a template that gained a resource of a new type
    found = [worker_env(), ("AWS::RDS::DBInstance", {"DBInstanceClass": "db.t4g.micro"})]
    # Then the cost model refuses to guess
    with pytest.raises(UnpricedResource, match=r"AWS::RDS::DBInstance"):
        fixed_monthly(TABLE, found)


def test_every_fixed_type_has_a_calculator_and_every_calculator_a_listed_type():
    check_priced(TABLE, [])  # raises on a fixed type without a calculator
    fixed = {k for k, t in TABLE.resource_types.items() if t.kind == "fixed"}
    assert fixed == set(FIXED)


# -- the price table's provenance --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TABLE.prices))
def test_every_price_has_a_unit_a_date_and_a_source_address(name: str):
    price = TABLE.prices[name]
    assert price.unit and price.date.year >= 2025
    assert re.search(r"https://\S+", price.source), f"{name}: the source names no address"


@pytest.mark.parametrize(
    "kind", sorted(k for k, t in TABLE.resource_types.items() if t.kind != "fixed")
)
def test_every_free_or_usage_type_says_why(kind: str):
    assert len(TABLE.resource_types[kind].reason.split()) >= 2


# -- the reference job: its arithmetic, and its facts against the code -------------------------


@pytest.mark.parametrize(("minutes", "polls"), [(1, 1), (2, 2), (45, 8)])
def test_polls_follow_the_backoff_until_transcribe_is_done(minutes: float, polls: int):
    # Transcribe takes a quarter of the audio: 15 s, 30 s, 675 s. The waits are 15, 22, 33, 50,
    # 75, 113, 170, 256 s (cumulative 15, 37, 70, 120, 195, 308, 478, 734).
    job = TABLE.job.model_copy(update={"audio_minutes": minutes})
    assert job.polls() == polls


def test_the_poll_schedule_is_the_workflows_own():
    job = TABLE.job
    needed = job.audio_s * job.transcribe_ratio
    waited, expected = 0, 0
    for delay in transcribe.poll_delays():
        waited, expected = waited + delay, expected + 1
        if waited >= needed:
            break
    assert job.polls() == expected
    assert (job.first_poll_s, job.max_poll_s) == (transcribe.FIRST_POLL_S, transcribe.MAX_POLL_S)


def test_the_job_facts_are_the_workers_own():
    job = TABLE.job
    assert job.hls_segment_s == transcode.SEGMENT_S
    assert job.hls_bitrates_kbps == tuple(r.bitrate_kbps for r in transcode.RENDITIONS)
    assert job.chunk_words == embed.CHUNK_WORDS
    assert job.polled_step in declared()["transcribe_audio"].steps


def test_standard_transitions_count_each_state_of_the_declared_workflows():
    job = TABLE.job  # 8 polls for a 45-minute sermon
    pipeline = Pipeline.declared()
    # transcribe_audio: claim + 5 step tasks + 7 more checks, a Wait and a Choice per poll,
    # Succeed: 1 + 5 + 7 + 16 + 1 = 30; transcode and embed: a task-token task and Succeed each.
    assert standard_transitions(pipeline.transcribe, job) == 30
    assert [standard_transitions(w, job) for w in pipeline.heavy] == [2, 2]
    standard, _, _ = step_functions(small_table(sfn_standard_transition=0.001), pipeline)
    assert round(total(standard), 6) == 34.0  # 1,000 jobs x 34 x 0.001


def test_express_runs_each_end_before_five_minutes():
    runs = express_runs(Pipeline.declared(), TABLE.job)
    assert len(runs) == 6
    assert all(seconds < EXPRESS_MAX_S for _, seconds in runs)


def test_transcribe_minutes_and_sqs_requests_per_thousand_jobs():
    table = small_table(transcribe_minute=0.01, sqs_request=0.001)
    work, _ = per_thousand_jobs(table, config.load("dev"), Pipeline.declared())
    lines = by_item(work)
    assert lines["Transcribe"] == 450.0  # 1,000 x 45 min x 0.01
    assert lines["SQS requests"] == 12.0  # 1,000 x 4 messages x 3 requests x 0.001


def test_durable_operations_per_job_are_counted_from_the_declarations():
    table = small_table(durable_operation=1.0)
    _, durable = per_thousand_jobs(table, config.load("dev"), Pipeline.declared())
    # transcribe_audio: start, claim, 5 invokes + 7 more checks, 8 waits, 2 wrapper = 24;
    # transcode and embed: start, callback + its submitter, 2 wrapper = 5 each. 34 a job.
    assert by_item(durable)["durable operations"] == 34_000.0


@pytest.mark.parametrize("old", ["", "old table\n\nmore"])
def test_writing_a_section_replaces_only_that_environments(old: str):
    # Given a page with an empty or a filled dev section and a staging section
    text = (
        "intro\n<!-- cost:dev:begin -->\n" + (old + "\n" if old else "") + "<!-- cost:dev:end -->\n"
        "<!-- cost:staging:begin -->\nkept\n<!-- cost:staging:end -->\n"
    )
    # When dev's tables are written
    written = replace_section(text, "dev", "new table")
    # Then dev holds them and nothing else changed
    assert section(written, "dev") == "new table"
    assert section(written, "staging") == "kept"
    assert written.startswith("intro\n") and written.count("<!-- cost:") == 4


def cloud_assembly(tmp_path, resources: dict) -> None:
    """A minimal cloud assembly (what `cdk synth` writes): a manifest naming one template."""
    template = {"Resources": resources}
    (tmp_path / "Sluice-dev-stateless.template.json").write_text(json.dumps(template))
    artifact = {
        "type": "aws:cloudformation:stack",
        "properties": {
            "templateFile": "Sluice-dev-stateless.template.json",
            "stackName": "Sluice-dev-stateless",
        },
    }
    manifest = {"artifacts": {"Sluice-dev-stateless": artifact}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))


def test_make_cost_fails_on_an_unpriced_resource_type(tmp_path, capsys):
    # Given a synthesized template holding a type the price table does not list
    cloud_assembly(tmp_path, {"Db": {"Type": "AWS::RDS::DBCluster", "Properties": {}}})
    # When `python -m stacks.cost` (make cost) reads it
    status = main(["--env", "dev", str(tmp_path)])
    # Then it fails, naming the type and where to price it
    assert status == 1
    assert "AWS::RDS::DBCluster" in capsys.readouterr().err


def test_make_cost_prints_the_fixed_cost_of_the_templates(tmp_path, capsys):
    # Given a template with one dashboard, priced at $3.00 a month in the table
    cloud_assembly(tmp_path, {"Board": {"Type": "AWS::CloudWatch::Dashboard", "Properties": {}}})
    assert main(["--env", "dev", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    expected = TABLE.prices["cloudwatch.dashboard"].usd
    assert f"| **fixed a month** | | | **{expected:,.2f}** | |" in out


def test_kms_requests_are_paid_only_where_the_environment_has_a_data_key():
    table = small_table(kms_request=0.001)
    dev, _ = per_thousand_jobs(table, config.load("dev"), Pipeline.declared())
    staging, _ = per_thousand_jobs(table, config.load("staging"), Pipeline.declared())
    assert not config.load("dev").data_key and config.load("staging").data_key
    assert by_item(dev)["KMS requests"] == 0
    assert by_item(staging)["KMS requests"] == 1000 * TABLE.job.kms_requests * 0.001
