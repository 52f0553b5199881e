"""The names a deployment gives its resources, derived from the environment's name.

One definition for the stacks that create the resources and for everything that finds them
again: the CLI, the runbook's queries and `make local`.
"""

from __future__ import annotations

from collections.abc import Mapping

PROJECT = "Sluice"


def prefix(env: str) -> str:
    """Stack and resource name prefix, e.g. `Sluice-prod`."""
    return f"{PROJECT}-{env}"


# The queues of an environment (stacks/stateful.py), each with its dead-letter queue.
QUEUES = ("events", "tasks")
DLQ_SUFFIX = "-dlq"


def queue_name(env: str, queue: str, *, dlq: bool = False) -> str:
    """`queue_name("prod", "events")` -> `Sluice-prod-events`; with `dlq`, `Sluice-prod-events-dlq`."""
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}: one of {', '.join(QUEUES)}")
    name = f"{prefix(env)}-{queue}"
    return dead_letter_queue_name(name) if dlq else name


def dead_letter_queue_name(queue_name: str) -> str:
    """The name of the dead-letter queue of the queue named `queue_name`."""
    return queue_name + DLQ_SUFFIX


def media_bucket(env: str, account: str, region: str) -> str:
    """The media bucket's name: fixed per environment, account and region, so every stack (and
    `make local`) can name it without a cross-stack export, e.g. `sluice-prod-media-<account>-<region>`."""
    return f"{prefix(env).lower()}-media-{account}-{region}"


def jobs_table(env: str) -> str:
    """The jobs table (one record per job), e.g. `Sluice-prod-jobs`."""
    return f"{prefix(env)}-jobs"


def notifications_topic(env: str) -> str:
    """The topic the pipeline announces finished and failed jobs on, e.g. `Sluice-prod-notifications`."""
    return f"{prefix(env)}-notifications"


# What the stateful stack holds that AWS names or numbers itself (the data key's id, VPC and
# subnet ids, the broker's endpoint and security group, the secrets' ARNs, which end in a random
# suffix). The stateful stack writes each to the SSM parameter `parameter(env, name)`; the
# stateless stack reads it there when it deploys. No CloudFormation export couples the stacks, so
# either may change what it holds without a two-phase deploy.
DATA_KEY_ID = "data-key-id"
VPC_ID = "vpc-id"
PRIVATE_SUBNET_IDS = "private-subnet-ids"
BROKER_SECURITY_GROUP_ID = "broker/security-group-id"
BROKER_AMQPS_ENDPOINT = "broker/amqps-endpoint"
BROKER_ADMIN_SECRET_ARN = "broker/admin-secret-arn"  # noqa: S105 - a parameter name
BROKER_SCHEDULER_SECRET_ARN = "broker/scheduler-secret-arn"  # noqa: S105 - a parameter name
PARAMETERS = (
    DATA_KEY_ID,
    VPC_ID,
    PRIVATE_SUBNET_IDS,
    BROKER_SECURITY_GROUP_ID,
    BROKER_AMQPS_ENDPOINT,
    BROKER_ADMIN_SECRET_ARN,
    BROKER_SCHEDULER_SECRET_ARN,
)


def parameter(env: str, name: str) -> str:
    """`parameter("prod", VPC_ID)` -> `/Sluice-prod/vpc-id`: the SSM parameter holding it."""
    if name not in PARAMETERS:
        raise ValueError(f"unknown parameter {name!r}: one of {', '.join(PARAMETERS)}")
    return f"/{prefix(env)}/{name}"


def coordination_table(env: str) -> str:
    """The coordination table (concurrency slots, fan-in joins, the scheduler's tick ledger), e.g.
    `Sluice-prod-coordination`:
    fixed per environment, so the stateless stack names it without a cross-stack export."""
    return f"{prefix(env)}-coordination"


def lambda_log_groups(env: str) -> str:
    """The prefix of every Lambda log group of the environment."""
    return f"/aws/lambda/{prefix(env)}-"


def lambda_log_group(env: str, function: str) -> str:
    """The log group of Lambda `function` (a workflow or step name, e.g. `transcribe_audio`)."""
    return f"{lambda_log_groups(env)}{function}"


def worker_log_groups(env: str) -> str:
    """The prefix of the worker environment's log groups (EB names one per log file)."""
    return f"/aws/elasticbeanstalk/{prefix(env)}-worker/"


def metrics_namespace(env: str, component: str) -> str:
    """The CloudWatch namespace of `component`'s own metrics (`Sluice-dev/Worker`): one per
    environment, so that a role's cloudwatch:namespace condition names only its environment's."""
    return f"{prefix(env)}/{component}"


# The worker's Procfile processes. Each calls AWS as its own role, which the stack names to it in
# the variable `role_variable(process)` (worker/credentials.py assumes it).
WORKER_PROCESSES = ("web", "tasks", "scheduler")


def role_variable(process: str) -> str:
    """`web` -> `SLUICE_ROLE_ARN_WEB`: the environment variable naming the process's role."""
    if process not in WORKER_PROCESSES:
        raise ValueError(f"unknown worker process {process!r}: one of {WORKER_PROCESSES}")
    return f"SLUICE_ROLE_ARN_{process.upper()}"


# The worker finds each workflow's `live` alias in a variable of its own: one plain value each,
# as Elastic Beanstalk's environment properties require (no JSON, <= 256 characters); and, for
# the workflows an event may cancel (`cancel_on`), its failure handler's `live` alias.
ALIAS_VARIABLE_PREFIX = "SLUICE_ALIAS_"
FAILURE_HANDLER_VARIABLE_PREFIX = "SLUICE_ON_FAILURE_"


def alias_variable(workflow: str, prefix: str = ALIAS_VARIABLE_PREFIX) -> str:
    """`transcribe_audio` -> `SLUICE_ALIAS_TRANSCRIBE_AUDIO`."""
    return prefix + workflow.upper()


def step_variable(step: str) -> str:
    """`on_failure` -> `STEP_ON_FAILURE`: where a workflow Lambda finds the step's alias ARN."""
    return "STEP_" + step.upper()


def alias_variables(
    aliases: Mapping[str, str], prefix: str = ALIAS_VARIABLE_PREFIX
) -> dict[str, str]:
    """Workflow name -> alias ARN, as the environment variables the worker reads."""
    return {alias_variable(name, prefix): arn for name, arn in aliases.items()}


def aliases_from(environ: Mapping[str, str], prefix: str = ALIAS_VARIABLE_PREFIX) -> dict[str, str]:
    """The workflow aliases `alias_variables` wrote into `environ`."""
    n = len(prefix)
    return {k[n:].lower(): v for k, v in environ.items() if k.startswith(prefix)}


# The attribute every item of the state tables (jobs, coordination) expires by: the stacks enable
# DynamoDB's TTL on it, the adapters write it on every item.
TTL_ATTRIBUTE = "expires_at"
