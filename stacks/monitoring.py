"""Alarms, their SNS topic and the dashboard: every alarm has an action and a runbook section.

cdk-monitoring-constructs covers what it knows (SQS queue + DLQ, Lambda functions) with tested
metric math and dashboard widgets; what it does not know (durable executions, Elastic Beanstalk,
Amazon MQ, the worker's own metrics) goes through `custom`, the same facade's generic segment,
so every alarm shares one naming scheme, one SNS action and one dashboard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cdk_monitoring_constructs as mon
from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.config import EnvConfig
from stacks.keys import customer_key

RUNBOOK = "docs/runbook.md"
CLOUDWATCH = iam.ServicePrincipal("cloudwatch.amazonaws.com")
GTE = cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD


def runbook(section: str) -> str:
    """The link an alarm carries to its runbook section (`section` is the heading's anchor)."""
    return f"{RUNBOOK}#{section}"


@dataclass(frozen=True)
class AlarmSpec:
    """One alarm of a custom segment: it fires when `metric` compares to `threshold`."""

    id: str
    metric: cw.IMetric
    threshold: float
    runbook: str
    description: str
    comparison: cw.ComparisonOperator = GTE
    # An idle metric (an empty DLQ, no failures) stops reporting: healthy, not alarming.
    missing: cw.TreatMissingData = cw.TreatMissingData.NOT_BREACHING


class Monitoring(Construct):
    """The alarm topic (encrypted, TLS only, e-mail from config), alarms and one dashboard."""

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvConfig) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        # Only this environment's alarms may act through the topic and its key (no confused deputy:
        # the account and the alarm-name prefix are both pinned).
        stack = Stack.of(self)
        alarms_only = {
            "StringEquals": {"aws:SourceAccount": stack.account},
            "ArnLike": {
                "aws:SourceArn": stack.format_arn(
                    service="cloudwatch",
                    resource="alarm",
                    resource_name=f"{config.prefix}-*",
                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                )
            },
        }
        # CloudWatch cannot publish to a topic encrypted with the AWS-managed SNS key, so the topic
        # gets a key of its own whose policy lets CloudWatch use it.
        self.key = customer_key(
            self,
            "AlarmKey",
            description=f"{config.prefix}: alarm topic",
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AlarmsEncryptNotifications",
                principals=[CLOUDWATCH],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions=alarms_only,
            )
        )
        self.topic = sns.Topic(
            self,
            "AlarmTopic",
            display_name=f"Sluice {config.name} alarms",
            master_key=self.key,
            enforce_ssl=True,
        )
        # A topic policy replaces SNS's default one: without this statement the TLS-only deny
        # would be all there is, and no alarm could publish.
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AlarmsPublish",
                principals=[CLOUDWATCH],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions=alarms_only,
            )
        )
        subscription = self.topic.add_subscription(subs.EmailSubscription(config.alarms.email))
        # cfn-lint-serverless asks each subscription for a DLQ (ES7000). An alarm e-mail that
        # cannot be delivered (a bouncing address) would wait there unread; the alarm's state
        # stays on the dashboard and in `aws cloudwatch describe-alarms` either way.
        cfn_subscription = subscription.node.default_child
        assert isinstance(cfn_subscription, sns.CfnSubscription)
        cfn_subscription.add_metadata("cfn-lint", {"config": {"ignore_checks": ["ES7000"]}})
        self.dashboard_name = f"{config.prefix}-jobs"
        self.facade = mon.MonitoringFacade(
            self,
            "Facade",
            alarm_factory_defaults=mon.AlarmFactoryDefaults(
                actions_enabled=True,
                alarm_name_prefix=config.prefix,
                action=mon.SnsAlarmActionStrategy(
                    on_alarm_topic=self.topic, on_ok_topic=self.topic
                ),
                datapoints_to_alarm=1,
                evaluation_periods=1,
            ),
            dashboard_factory=mon.DefaultDashboardFactory(
                self,
                "Dashboards",
                dashboard_name_prefix=self.dashboard_name,
                create_dashboard=True,
                create_summary_dashboard=False,
                create_alarm_dashboard=False,
                rendering_preference=mon.DashboardRenderingPreference.INTERACTIVE_ONLY,
            ),
        )

    # -- queues ---------------------------------------------------------------------------------

    def watch_queue(
        self, name: str, *, queue: sqs.IQueue, dlq: sqs.IQueue, max_age_s: int, backlog: str
    ) -> None:
        """Age of the oldest message (section `backlog`) and any message in the DLQ."""
        self.facade.add_large_header(f"{name} queue")
        self.facade.monitor_sqs_queue_with_dlq(
            queue=queue,
            dead_letter_queue=dlq,
            alarm_friendly_name=f"{name}Queue",
            human_readable_name=f"{name} queue",
            add_queue_max_message_age_alarm={
                "Backlog": mon.MaxMessageAgeThreshold(
                    max_age_in_seconds=max_age_s, runbook_link=runbook(backlog)
                )
            },
            add_dead_letter_queue_max_size_alarm={
                "Dlq": mon.MaxMessageCountThreshold(
                    max_message_count=0,
                    period=Duration.minutes(1),
                    runbook_link=runbook("dead-letter-queue-has-messages"),
                    # An idle DLQ stops publishing metrics: that is the healthy state.
                    treat_missing_data_override=cw.TreatMissingData.NOT_BREACHING,
                )
            },
        )

    # -- Lambda -----------------------------------------------------------------------------------

    def watch_step(self, name: str, function: lambda_.IFunction) -> None:
        """Errors, throttles and p99 duration near the timeout of one step handler."""
        alarms = self._config.alarms
        self.facade.monitor_lambda_function(
            lambda_function=function,
            alarm_friendly_name=f"Step-{name}",
            human_readable_name=f"step {name}",
            add_fault_count_alarm={
                "Errors": mon.ErrorCountThreshold(
                    max_error_count=alarms.step_errors - 1,
                    period=Duration.minutes(5),
                    runbook_link=runbook("step-handler-errors"),
                )
            },
            add_throttles_count_alarm={
                "Throttles": mon.ErrorCountThreshold(
                    max_error_count=0,
                    period=Duration.minutes(5),
                    runbook_link=runbook("step-handler-throttles"),
                )
            },
            add_latency_p99_alarm={
                "NearTimeout": mon.LatencyTimeoutPercentageThreshold(
                    max_latency_percentage_of_timeout=alarms.duration_pct_of_timeout,
                    period=Duration.minutes(5),
                    runbook_link=runbook("step-handler-near-timeout"),
                )
            },
        )

    def watch_workflow(self, name: str, function: lambda_.IFunction) -> None:
        """Failed and timed-out durable executions, and running executions near their quota."""
        alarms = self._config.alarms

        def durable(metric: str, statistic: str) -> cw.Metric:
            return cw.Metric(
                namespace="AWS/Lambda",
                metric_name=metric,
                dimensions_map={"FunctionName": function.function_name},
                statistic=statistic,
                period=Duration.minutes(5),
            )

        failed = cw.MathExpression(
            expression="FILL(failed, 0) + FILL(timedout, 0)",
            using_metrics={
                "failed": durable("DurableExecutionFailed", "Sum"),
                "timedout": durable("DurableExecutionTimedOut", "Sum"),
            },
            label="failed + timed out",
            period=Duration.minutes(5),
        )
        self.custom(
            f"Workflow-{name}",
            title=f"workflow {name}: executions",
            alarms=[
                AlarmSpec(
                    "Failed",
                    failed,
                    alarms.failed_executions,
                    "workflow-executions-failing",
                    "Durable executions failed or timed out.",
                ),
                AlarmSpec(
                    "NearQuota",
                    durable("ApproximateRunningDurableExecutionsUtilization", "Maximum"),
                    alarms.running_utilization_pct,
                    "durable-executions-near-quota",
                    "Running durable executions near the account quota (%).",
                ),
            ],
            graphs=[
                durable("DurableExecutionStarted", "Sum"),
                durable("DurableExecutionSucceeded", "Sum"),
                durable("ApproximateRunningDurableExecutions", "Maximum"),
            ],
        )

    # -- the Elastic Beanstalk worker -----------------------------------------------------------------

    def watch_worker(self, *, environment_name: str, metrics_namespace: str) -> None:
        """Enhanced health degraded or worse, and the worker's own dispatch failures (503s)."""
        # EnvironmentHealth: 0 OK, 1 Info, 5 Unknown, 10 No data, 15 Warning, 20 Degraded, 25 Severe.
        health = cw.Metric(
            namespace="AWS/ElasticBeanstalk",
            metric_name="EnvironmentHealth",
            dimensions_map={"EnvironmentName": environment_name},
            statistic="Maximum",
            period=Duration.minutes(1),
        )

        def worker(metric: str) -> cw.Metric:
            return cw.Metric(
                namespace=metrics_namespace,
                metric_name=metric,
                dimensions_map={"Environment": self._config.name},
                statistic="Sum",
                period=Duration.minutes(5),
            )

        self.custom(
            "Worker",
            title="worker: health and dispatch",
            alarms=[
                AlarmSpec(
                    "Degraded",
                    health,
                    20,
                    "worker-health-degraded",
                    "Worker environment health is Degraded (20) or Severe (25).",
                ),
                AlarmSpec(
                    "DispatchFailures",
                    worker("TransientFailures"),
                    self._config.alarms.dispatch_failures,
                    "worker-dispatch-failures",
                    "The worker answered sqsd 503: it could not start workflows.",
                ),
            ],
            graphs=[worker("Received"), worker("Started"), worker("DeadLettered")],
        )

    # -- anything else ----------------------------------------------------------------------------

    def custom(
        self,
        name: str,
        *,
        title: str,
        alarms: Sequence[AlarmSpec],
        graphs: Sequence[cw.IMetric] = (),
    ) -> None:
        """A dashboard row with the alarms' metrics and `graphs`; every alarm notifies the topic."""
        metrics: list[object] = [
            mon.CustomMetricWithAlarm(
                metric=spec.metric,  # type: ignore[arg-type]
                alarm_friendly_name=f"{name}-{spec.id}",
                add_alarm={
                    spec.id: mon.CustomThreshold(
                        threshold=spec.threshold,
                        comparison_operator=spec.comparison,
                        additional_description=spec.description,
                        runbook_link=runbook(spec.runbook),
                        treat_missing_data_override=spec.missing,
                    )
                },
            )
            for spec in alarms
        ]
        metrics.extend(graphs)
        self.facade.monitor_custom(
            alarm_friendly_name=name,
            human_readable_name=title,
            metric_groups=[mon.CustomMetricGroup(title=title, metrics=metrics)],  # type: ignore[arg-type]
        )

    def alarm(
        self,
        construct_id: str,
        *,
        metric: cw.IMetric,
        threshold: float,
        runbook: str,
        summary: str,
        comparison: cw.ComparisonOperator = GTE,
        missing: cw.TreatMissingData = cw.TreatMissingData.NOT_BREACHING,
    ) -> None:
        """One alarm on its own dashboard row (`runbook` is the anchor of its runbook section)."""
        self.custom(
            construct_id,
            title=summary,
            alarms=[
                AlarmSpec(construct_id, metric, threshold, runbook, summary, comparison, missing)
            ],
        )

    @property
    def alarms(self) -> list[cw.AlarmBase]:
        return [a.alarm for a in self.facade.created_alarms()]
