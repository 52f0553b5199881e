"""The CloudWatch metrics AWS services publish, as their documentation lists them.

An alarm on a metric its service never publishes gets no data and, with missing data treated as
not breaching, stays OK forever. The alarms choose their metrics from these tables, and a test
checks every alarm and every scaling policy of every environment against them (and against the
metrics our own processes publish).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    """Metrics of one namespace published with one of `dimensions` (sets of dimension names),
    and the page that lists them."""

    doc: str
    metrics: frozenset[str]
    dimensions: frozenset[frozenset[str]]

    def has(self, metric: str, dimensions: frozenset[str]) -> bool:
        return metric in self.metrics and dimensions in self.dimensions


def _dims(*sets: tuple[str, ...]) -> frozenset[frozenset[str]]:
    return frozenset(frozenset(d) for d in sets)


SQS = Published(
    "https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/"
    "sqs-available-cloudwatch-metrics.html",
    frozenset(
        {
            "ApproximateAgeOfOldestMessage",
            "ApproximateNumberOfMessagesDelayed",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesVisible",
            "NumberOfEmptyReceives",
            "NumberOfMessagesDeleted",
            "NumberOfMessagesReceived",
            "NumberOfMessagesSent",
            "SentMessageSize",
        }
    ),
    _dims(("QueueName",)),
)
LAMBDA = Published(
    "https://docs.aws.amazon.com/lambda/latest/dg/monitoring-metrics-types.html (durable "
    "executions: https://docs.aws.amazon.com/lambda/latest/dg/durable-monitoring.html)",
    frozenset(
        {
            "Invocations",
            "Errors",
            "Throttles",
            "Duration",
            "ConcurrentExecutions",
            "DeadLetterErrors",
            "DestinationDeliveryFailures",
            "DurableExecutionStarted",
            "DurableExecutionSucceeded",
            "DurableExecutionFailed",
            "DurableExecutionTimedOut",
            "DurableExecutionStopped",
            "DurableExecutionOperations",
            "ApproximateRunningDurableExecutions",
            "ApproximateRunningDurableExecutionsUtilization",
        }
    ),
    _dims(("FunctionName",), ("FunctionName", "Resource"), ("FunctionName", "ExecutedVersion")),
)
ELASTIC_BEANSTALK = Published(
    "https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/health-enhanced-cloudwatch.html",
    frozenset({"EnvironmentHealth", "InstancesOk", "InstancesDegraded", "InstancesSevere"}),
    _dims(("EnvironmentName",)),
)
# Group metrics, published once the group's metrics collection names them (MetricsCollection).
AUTO_SCALING = Published(
    "https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-metrics.html",
    frozenset(
        {
            "GroupMinSize",
            "GroupMaxSize",
            "GroupDesiredCapacity",
            "GroupInServiceInstances",
            "GroupPendingInstances",
            "GroupStandbyInstances",
            "GroupTerminatingInstances",
            "GroupTotalInstances",
        }
    ),
    _dims(("AutoScalingGroupName",)),
)
_MQ_DOC = (
    "https://docs.aws.amazon.com/amazon-mq/latest/developer-guide/rabbitmq-logging-monitoring.html"
)
# Broker and node metrics (dimensions Broker, and Broker + Node). For a cluster the broker-level
# memory, disk and CPU figures are sums over its nodes.
_MQ_BROKER = frozenset(
    {
        "ExchangeCount",
        "QueueCount",
        "ConnectionCount",
        "ChannelCount",
        "ConsumerCount",
        "MessageCount",
        "MessageReadyCount",
        "MessageUnacknowledgedCount",
        "PublishRate",
        "ConfirmRate",
        "AckRate",
        "SystemCpuUtilization",
        "RabbitMQMemLimit",
        "RabbitMQMemUsed",
        "RabbitMQDiskFreeLimit",
        "RabbitMQDiskFree",
        "RabbitMQFdUsed",
    }
)
# Per-queue metrics (dimensions Broker + VirtualHost + Queue): not published for RabbitMQ 4.
_MQ_QUEUE = frozenset(
    {"ConsumerCount", "MessageCount", "MessageReadyCount", "MessageUnacknowledgedCount"}
)


def amazon_mq(engine_version: str) -> tuple[Published, ...]:
    """What Amazon MQ publishes for a RabbitMQ broker of `engine_version`."""
    broker = Published(_MQ_DOC, _MQ_BROKER, _dims(("Broker",), ("Broker", "Node")))
    if not engine_version.startswith("3."):
        return (broker,)
    return (broker, Published(_MQ_DOC, _MQ_QUEUE, _dims(("Broker", "VirtualHost", "Queue"))))


def aws(engine_version: str | None) -> dict[str, tuple[Published, ...]]:
    """Namespace -> what AWS publishes there, for an environment with this broker engine."""
    out: dict[str, tuple[Published, ...]] = {
        "AWS/SQS": (SQS,),
        "AWS/Lambda": (LAMBDA,),
        "AWS/ElasticBeanstalk": (ELASTIC_BEANSTALK,),
        "AWS/AutoScaling": (AUTO_SCALING,),
    }
    if engine_version is not None:
        out["AWS/AmazonMQ"] = amazon_mq(engine_version)
    return out
