"""Alarms, their SNS topic and the dashboard: every alarm has an action and a runbook section."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.config import EnvConfig

RUNBOOK = "docs/runbook.md"


class Monitoring(Construct):
    """The alarm topic (encrypted, TLS only, e-mail from config) and the alarms that notify it."""

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvConfig) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        # CloudWatch cannot publish to a topic encrypted with the AWS-managed SNS key, so the topic
        # gets a key of its own whose policy lets CloudWatch use it.
        self.key = kms.Key(
            self,
            "AlarmKey",
            description=f"{config.prefix}: alarm topic",
            enable_key_rotation=True,
        )
        self.key.grant(
            iam.ServicePrincipal("cloudwatch.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*"
        )
        self.topic = sns.Topic(
            self,
            "AlarmTopic",
            display_name=f"Sluice {config.name} alarms",
            master_key=self.key,
            enforce_ssl=True,
        )
        self.topic.add_subscription(subs.EmailSubscription(config.alarms.email))
        self.alarms: list[cw.Alarm] = []

    def alarm(
        self,
        construct_id: str,
        *,
        metric: cw.IMetric,
        threshold: float,
        runbook: str,
        summary: str,
        comparison: cw.ComparisonOperator = cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluation_periods: int = 1,
    ) -> cw.Alarm:
        """An alarm that notifies the topic; `runbook` is the anchor of its section in the runbook."""
        alarm = cw.Alarm(
            self,
            construct_id,
            alarm_name=f"{self._config.prefix}-{construct_id}",
            alarm_description=f"{summary} Runbook: {RUNBOOK}#{runbook}",
            metric=metric,
            threshold=threshold,
            comparison_operator=comparison,
            evaluation_periods=evaluation_periods,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        )
        action = cw_actions.SnsAction(self.topic)
        alarm.add_alarm_action(action)
        alarm.add_ok_action(action)
        self.alarms.append(alarm)
        return alarm

    def watch_dead_letter_queue(self, construct_id: str, dlq: sqs.IQueue) -> cw.Alarm:
        """Any message in a DLQ is an event we failed to handle: alarm on the first one."""
        return self.alarm(
            construct_id,
            metric=dlq.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(1), statistic="Maximum"
            ),
            threshold=1,
            runbook="dead-letter-queue-has-messages",
            summary=f"A message reached the dead-letter queue {dlq.queue_name}.",
        )
