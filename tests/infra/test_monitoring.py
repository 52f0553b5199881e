"""Every alarm notifies the alarm topic and points at an existing runbook section; the dashboard
shows this stack's resources."""

from __future__ import annotations

import json
import re

from sluice.settings import SchedulerSettings
from stacks.declarations import declared
from tests.conftest import ROOT
from tests.infra.conftest import resources

_RUNBOOK_LINK = re.compile(r"Runbook: docs/runbook\.md#([a-z0-9-]+)")


def runbook_sections() -> set[str]:
    """GitHub-style anchors of the runbook's headings."""
    anchors = set()
    for line in (ROOT / "docs" / "runbook.md").read_text().splitlines():
        if line.startswith("## "):
            title = line[3:].strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 -]", "", title).replace(" ", "-"))
    return anchors


def alarms(synth, env) -> dict[str, dict]:
    return {
        lid: r["Properties"]
        for lid, r in resources(synth(env).stateless, "AWS::CloudWatch::Alarm").items()
    }


def alarm_named(synth, env, fragment: str) -> dict:
    (found,) = [a for a in alarms(synth, env).values() if fragment in a["AlarmName"]]
    return found


def topic_id(synth, env) -> str:
    (tid,) = resources(synth(env).stateless, "AWS::SNS::Topic")
    return tid


def test_every_alarm_notifies_the_alarm_topic(synth, env):
    tid = topic_id(synth, env)
    found = alarms(synth, env)
    assert found
    for lid, alarm in found.items():
        assert alarm["ActionsEnabled"] is True, lid
        assert {"Ref": tid} in alarm["AlarmActions"], lid
        assert {"Ref": tid} in alarm["OKActions"], lid


def test_every_alarm_names_an_existing_runbook_section(synth, env):
    sections = runbook_sections()
    for lid, alarm in alarms(synth, env).items():
        links = _RUNBOOK_LINK.findall(alarm["AlarmDescription"])
        assert links, f"{lid} has no runbook link"
        assert set(links) <= sections, f"{lid} links {links}, runbook has {sorted(sections)}"


def test_alarm_topic_is_encrypted_tls_only_and_mails_the_configured_address(synth, env):
    s = synth(env)
    (topic,) = resources(s.stateless, "AWS::SNS::Topic").values()
    assert "KmsMasterKeyId" in topic["Properties"]
    s.stateless.has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": s.config.alarms.email}
    )
    (policy,) = resources(s.stateless, "AWS::SNS::TopicPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert any(
        st["Effect"] == "Deny" and st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for st in statements
    )


def test_events_queue_age_alarm_uses_the_environment_threshold(synth, env):
    s = synth(env)
    alarm = alarm_named(synth, env, "EventsQueue-Queue-Message-Age")
    (query,) = alarm["Metrics"]
    stat = query["MetricStat"]
    assert stat["Metric"]["MetricName"] == "ApproximateAgeOfOldestMessage"
    assert stat["Stat"] == "Maximum"
    assert stat["Period"] == 300
    assert alarm["Threshold"] == s.config.alarms.queue_age_s
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert "events-queue-backlog" in alarm["AlarmDescription"]


def test_events_dlq_alarms_on_the_first_message(synth, env):
    alarm = alarm_named(synth, env, "EventsQueue-DLQ-Queue-Message-Count")
    (query,) = alarm["Metrics"]
    assert query["MetricStat"]["Metric"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert query["MetricStat"]["Period"] == 60
    assert alarm["Threshold"] == 0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"


def test_one_dashboard_per_environment_showing_this_stacks_resources(synth, env):
    s = synth(env)
    (dashboard,) = resources(s.stateless, "AWS::CloudWatch::Dashboard").values()
    assert dashboard["Properties"]["DashboardName"] == f"Sluice-{env}-jobs"
    body = s.resolve(dashboard["Properties"]["DashboardBody"])
    # The stateful stack's events queue and DLQ, by the names it gives them.
    assert s.stateful_value("EventsQueue", "QueueName") in body
    assert s.stateful_value("EventsDlq", "QueueName") in body
    assert "ApproximateAgeOfOldestMessage" in body


def test_runbook_anchor_rules_match_github():
    assert "dead-letter-queue-has-messages" in runbook_sections()
    assert "follow-one-job" in runbook_sections()


def _alarm_metric_names(alarm: dict) -> set[str]:
    if "MetricName" in alarm:
        return {alarm["MetricName"]}
    return {
        q["MetricStat"]["Metric"]["MetricName"]
        for q in alarm.get("Metrics", [])
        if "MetricStat" in q
    }


def test_every_alarm_the_issue_names_exists(synth, env):
    """Queues, workflows, steps, worker (and the broker where enabled) each have their alarms."""
    s = synth(env)
    found = alarms(synth, env).values()

    def having(metric: str) -> list[dict]:
        return [a for a in found if metric in _alarm_metric_names(a)]

    # events + tasks queue age, events + tasks DLQ
    assert len(having("ApproximateAgeOfOldestMessage")) == 2
    assert len(having("ApproximateNumberOfMessagesVisible")) >= 2
    # one failed/timed-out alarm and one near-quota alarm per declared workflow
    workflows = len(declared())
    assert len(having("DurableExecutionFailed")) == workflows
    assert all(
        "DurableExecutionTimedOut" in _alarm_metric_names(a)
        for a in having("DurableExecutionFailed")
    )
    assert len(having("ApproximateRunningDurableExecutionsUtilization")) == workflows
    for alarm in having("ApproximateRunningDurableExecutionsUtilization"):
        assert alarm["Threshold"] == s.config.alarms.running_utilization_pct
    # errors, throttles and duration near the timeout for each step handler
    steps = len(s.stage.stateless.workflows.steps)
    assert len(having("Errors")) == steps
    assert len(having("Throttles")) == steps
    assert len(having("Duration")) == steps
    # the worker
    (health,) = having("EnvironmentHealth")
    assert health["Threshold"] == 20
    assert health["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    (dispatch,) = having("TransientFailures")
    assert dispatch["Threshold"] == s.config.alarms.dispatch_failures
    # the broker, only where the environment has one
    broker_alarms = [
        a for a in found if "Broker" in a["AlarmName"] or "Scheduler" in a["AlarmName"]
    ]
    assert bool(broker_alarms) == (s.config.broker is not None)


def test_worker_health_is_published_for_the_alarm(synth, env):
    s = synth(env)
    (environment,) = resources(s.stateless, "AWS::ElasticBeanstalk::Environment").values()
    settings = {
        (o["Namespace"], o["OptionName"]): o["Value"]
        for o in environment["Properties"]["OptionSettings"]
    }
    doc = json.loads(settings[("aws:elasticbeanstalk:healthreporting:system", "ConfigDocument")])
    assert doc["CloudWatchMetrics"]["Environment"]["EnvironmentHealth"] == 60
    # and the worker publishes the counts the dispatch-failures alarm reads
    app_env = "aws:elasticbeanstalk:application:environment"
    assert settings[(app_env, "SLUICE_PUBLISH_METRICS_S")] == "60"


def test_broker_environments_give_the_worker_the_broker_and_events_queue(synth, env):
    s = synth(env)
    (environment,) = resources(s.stateless, "AWS::ElasticBeanstalk::Environment").values()
    names = {
        o["OptionName"]
        for o in environment["Properties"]["OptionSettings"]
        if o["Namespace"] == "aws:elasticbeanstalk:application:environment"
    }
    variables = SchedulerSettings.variables()
    broker_vars = {variables[f] for f in ("broker_endpoint", "broker_secret_arn")}
    if s.config.broker is None:
        assert not names & broker_vars
    else:
        assert broker_vars <= names
    # The events queue's URL in every environment: the scheduler's events and the web process's
    # flow control wake-ups (docs/flow-control.md).
    assert variables["events_queue_url"] in names
