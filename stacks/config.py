"""Per-environment settings of Sluice: pydantic models, frozen, validated once, chosen in app.py.

Each field's type holds its constraint (bounds, choices, patterns) and its `description` is the
README's configuration table (`make docs`). Rules that relate two settings are model validators.
An impossible value raises ConfigError naming the setting, `<env>.<section>.<field>: <message>`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal, NoReturn, Self, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from sluice import naming
from sluice.settings import SCHEDULER_HOLD_MAX_S
from stacks.declarations import declared, step_names

# SQS hard limits (seconds): the console and API refuse anything outside them.
SQS_MIN_RETENTION_S = 60
SQS_MAX_RETENTION_S = 1_209_600  # 14 days
SQS_MAX_VISIBILITY_S = 43_200  # 12 hours
SQS_MAX_RECEIVE_COUNT = 1000
SQSD_MAX_INACTIVITY_S = 36_000
SQSD_MAX_CONNECTIONS = 100
# aws:elasticbeanstalk:command Timeout: 1-3600 s (EB's general options reference).
EB_MAX_COMMAND_TIMEOUT_S = 3600
# What a deploy needs beyond the tasks' drain: the tasks process's cleanup after it
# (worker.tasks.CLEANUP_S), stopping the other processes and starting the new version.
DRAIN_MARGIN_S = 120
# Of which the tasks process's own stop after its drain: cleanup of the tasks it hands back
# (worker.tasks.CLEANUP_S) and the hand-back calls. systemd kills it past drain_s plus this.
TASKS_STOP_MARGIN_S = 30
LAMBDA_MAX_TIMEOUT_S = 900
# Lambda keeps this much of an account's concurrency unreserved, whatever functions reserve.
LAMBDA_UNRESERVED_MIN = 100
# Retention periods, in days. CloudWatch Logs accepts these (PutRetentionPolicy); Elastic
# Beanstalk's log streaming options (aws:elasticbeanstalk:cloudwatch:logs RetentionInDays) accept
# fewer, so a setting used by both must be in both lists.
# fmt: off
VALID_LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
    2922, 3288, 3653,
)
EB_LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827, 3653,
)
# fmt: on
CompliancePack = Literal["AwsSolutions", "NIST80053R5", "HIPAASecurity"]
COMPLIANCE_PACKS: tuple[CompliancePack, ...] = get_args(CompliancePack)
# The EB deployment policies that keep capacity during a deploy (AllAtOnce and Rolling do not).
DeploymentPolicy = Literal["RollingWithAdditionalBatch", "Immutable"]
Weekday = Literal["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"]


class ConfigError(ValueError):
    """A setting is impossible; the message names the setting (`<env>.<section>.<field>`)."""


def _fullmatch(pattern: str, should_be: str) -> AfterValidator:
    """A string constraint: all of the value matches `pattern` (a trailing newline does not)."""
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(f"must be {should_be}, got {value!r}")
        return value

    return AfterValidator(check)


def _one_of(values: tuple[int, ...], accepted_by: str) -> AfterValidator:
    # Not a Literal: Literal[1, ...] lets True through (True == 1), even in strict mode.
    def check(value: int) -> int:
        if value not in values:
            raise ValueError(f"{accepted_by} {values}, got {value}")
        return value

    return AfterValidator(check)


def _fail(setting: str, message: str) -> NoReturn:
    """Reject a rule between settings, naming `setting` (relative to the model that checks it)."""
    raise PydanticCustomError("setting", "{message}", {"setting": setting, "message": message})


class _Settings(BaseModel):
    # strict: a typo of type fails (True or "5" for an int, "false" for a bool) instead of being
    # coerced; frozen: the stacks cannot change what was validated; forbid: a misspelled setting
    # fails instead of being ignored.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# Constrained types several settings share, and those whose message must say what is wanted.
Positive = Annotated[int, Field(ge=1)]
Percent = Annotated[int, Field(ge=1, le=100)]
VisibilityS = Annotated[int, Field(ge=0, le=SQS_MAX_VISIBILITY_S)]
RetentionS = Annotated[int, Field(ge=SQS_MIN_RETENTION_S, le=SQS_MAX_RETENTION_S)]
EnvName = Annotated[
    str, _fullmatch(r"[a-z][a-z0-9]{1,15}", "2-16 lowercase letters/digits starting with a letter")
]
Region = Annotated[str, _fullmatch(r"[a-z]{2}(-gov)?-[a-z]+-\d", "an AWS region such as eu-west-1")]
AccountId = Annotated[str, _fullmatch(r"\d{12}", "a 12-digit AWS account id or None")]
Email = Annotated[
    str,
    _fullmatch(
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", "an e-mail address"
    ),
]
# A branch, not a platform version: a pinned version retires and a fresh account cannot use it;
# the deploy picks the branch's recommended version and managed updates keep it current.
PlatformBranch = Annotated[
    str,
    _fullmatch(
        r"Python 3\.\d+ running on 64bit Amazon Linux 2023",
        "an Elastic Beanstalk platform branch such as 'Python 3.13 running on 64bit Amazon Linux "
        "2023' (the deploy picks its recommended version)",
    ),
]
MqInstanceType = Annotated[
    str, _fullmatch(r"mq\.[a-z0-9]+\.[a-z0-9]+", "an Amazon MQ instance type such as mq.m7g.medium")
]
# Amazon MQ's rule for user names.
MqUsername = Annotated[str, _fullmatch(r"[A-Za-z0-9._~-]{2,100}", "2-100 chars of [A-Za-z0-9._~-]")]
TimeUtc = Annotated[str, _fullmatch(r"([01]\d|2[0-3]):[0-5]\d", "HH:MM (24 h, UTC)")]


class QueueConfig(_Settings):
    """The events queue (and, later, the tasks queue) with its dead-letter queue."""

    max_receive_count: int = Field(
        5, ge=1, le=SQS_MAX_RECEIVE_COUNT, description="receives before a message moves to the DLQ"
    )
    visibility_timeout_s: VisibilityS = Field(
        960, description="queue visibility timeout (>= worker.processing_timeout_s)"
    )
    retention_s: RetentionS = Field(4 * 24 * 3600, description="how long the queue keeps a message")
    dlq_retention_s: RetentionS = Field(
        SQS_MAX_RETENTION_S, description="how long the DLQ keeps a message (>= retention_s)"
    )
    customer_managed_key: bool = Field(
        False, description="encrypt with the environment's KMS key (else SQS-managed SSE)"
    )

    @model_validator(mode="after")
    def _dlq_keeps_what_arrives(self) -> Self:
        if self.dlq_retention_s < self.retention_s:
            _fail(
                "dlq_retention_s",
                f"must be at least retention_s ({self.retention_s} s): a message's age is kept "
                "when it moves to the DLQ, so a shorter DLQ retention deletes it on arrival",
            )
        return self


class NetworkConfig(_Settings):
    """The worker's VPC."""

    max_azs: int = Field(2, ge=2, description="availability zones used")
    nat_gateways: Positive = Field(1, description="NAT gateways (1 in dev; one per AZ in prod)")
    flow_log_retention_days: Annotated[
        int, _one_of(VALID_LOG_RETENTION_DAYS, "CloudWatch Logs accepts")
    ] = Field(30, description="VPC flow log retention")
    # REJECT keeps the security signal (refused connections) at a fraction of ALL's log volume.
    flow_log_traffic: Literal["ALL", "REJECT"] = Field(
        "ALL",
        description="traffic the VPC flow log records: ALL, or REJECT only (cheaper: docs/cost.md)",
    )

    @model_validator(mode="after")
    def _a_nat_gateway_sits_in_a_zone(self) -> Self:
        if self.nat_gateways > self.max_azs:
            _fail(
                "nat_gateways",
                f"must be between 1 and max_azs ({self.max_azs}), got {self.nat_gateways}",
            )
        return self


class WorkerConfig(_Settings):
    """The Elastic Beanstalk worker environment and its sqsd daemon."""

    instance_type: str = Field("t3.medium", description="instance type")
    min_instances: Positive = Field(1, description="auto scaling lower bound")
    max_instances: Positive = Field(2, description="auto scaling upper bound")
    platform_branch: PlatformBranch = Field(
        "Python 3.13 running on 64bit Amazon Linux 2023",
        description="EB platform branch; each deploy that creates the environment takes its "
        "recommended version, managed updates keep it current",
    )
    http_path: Annotated[str, _fullmatch(r"/\S*", "a path starting with '/'")] = Field(
        "/", description="sqsd HttpPath the messages are POSTed to"
    )
    http_connections: int = Field(
        10,
        ge=1,
        le=SQSD_MAX_CONNECTIONS,
        description="sqsd HttpConnections (concurrent POSTs per instance)",
    )
    processing_timeout_s: int = Field(
        60,
        ge=1,
        le=SQSD_MAX_INACTIVITY_S,
        description="sqsd InactivityTimeout: longest one POST may take",
    )
    error_visibility_timeout_s: VisibilityS = Field(
        30, description="sqsd ErrorVisibilityTimeout: delay before a failed message returns"
    )
    backlog_per_instance: Positive = Field(
        100, description="target events backlog per instance for scaling"
    )
    tasks_concurrency: Positive = Field(2, description="heavy tasks run at once per instance")
    tasks_per_instance: Positive = Field(
        2,
        description="target tasks per instance for scaling: queued plus running on the tasks "
        "queue, over in-service instances (>= tasks_concurrency: below it instances are added "
        "that have no task to run)",
    )
    deployment_policy: DeploymentPolicy = Field(
        "RollingWithAdditionalBatch",
        description="EB deployment policy, both keep capacity: RollingWithAdditionalBatch "
        "launches one extra instance, then deploys in place one instance at a time, each "
        "draining its tasks first (dev: the cheapest that keeps capacity); Immutable deploys to "
        "a full new set beside the old, which keep working until the new pass health checks, "
        "and a failed deploy never touches them (staging, prod)",
    )
    drain_s: int = Field(
        300,
        ge=0,
        le=EB_MAX_COMMAND_TIMEOUT_S - DRAIN_MARGIN_S,
        description="on a deploy or scale-in, how long the tasks process lets running tasks "
        "finish before handing them back to the queue (systemd's stop timeout is set above it)",
    )
    deploy_timeout_s: int = Field(
        900,
        ge=1,
        le=EB_MAX_COMMAND_TIMEOUT_S,
        description="EB's command Timeout: how long one instance may take to deploy (>= drain_s "
        f"+ {DRAIN_MARGIN_S} s)",
    )
    # 1 MiB is SQS's largest message.
    max_body_bytes: int = Field(
        256 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="largest message body the worker accepts (else DLQ, reason oversize)",
    )

    @property
    def tasks_stop_timeout_s(self) -> int:
        """systemd's stop timeout for the tasks process: its drain, then its own cleanup."""
        return self.drain_s + TASKS_STOP_MARGIN_S

    @model_validator(mode="after")
    def _scales_between_its_bounds(self) -> Self:
        if self.min_instances > self.max_instances:
            _fail(
                "min_instances",
                f"must be between 1 and max_instances ({self.max_instances}), "
                f"got {self.min_instances}",
            )
        if self.tasks_per_instance < self.tasks_concurrency:
            _fail(
                "tasks_per_instance",
                f"({self.tasks_per_instance}) must be >= tasks_concurrency "
                f"({self.tasks_concurrency}): below it, scaling adds instances that have no task "
                "to run",
            )
        # An in-place deploy stops the tasks process within the instance's deploy: a drain
        # longer than EB's command timeout fails the deploy instead of finishing the tasks.
        if self.drain_s + DRAIN_MARGIN_S > self.deploy_timeout_s:
            _fail(
                "deploy_timeout_s",
                f"({self.deploy_timeout_s} s) must be >= drain_s ({self.drain_s} s) + "
                f"{DRAIN_MARGIN_S} s to stop the processes and start the new version",
            )
        return self


class FunctionConfig(_Settings):
    """One Lambda function's sizing."""

    memory_mb: int = Field(256, ge=128, le=10_240, description="memory (MB)")
    timeout_s: int = Field(60, ge=1, le=LAMBDA_MAX_TIMEOUT_S, description="timeout (s)")
    reserved_concurrency: Positive | None = Field(
        None,
        description="reserved concurrency (None: none; a new account's quota cannot reserve any)",
    )


def _known_steps(steps: Mapping[str, FunctionConfig]) -> Mapping[str, FunctionConfig]:
    known = step_names(declared())
    unknown = sorted(set(steps) - set(known))
    if unknown:
        raise ValueError(
            f"unknown step {', '.join(map(repr, unknown))}; the steps are {', '.join(known)}"
        )
    return MappingProxyType(dict(steps))  # read-only, like the rest of the configuration


class WorkflowConfig(_Settings):
    """Durable workflow functions and the step handlers they invoke."""

    retention_days: int = Field(14, ge=1, le=90, description="durable execution history retention")
    max_audio_seconds: Positive = Field(
        4 * 3600, description="longest audio accepted (business error beyond)"
    )
    orchestrator: FunctionConfig = Field(
        FunctionConfig(memory_mb=512, timeout_s=300),
        description="workflow functions: memory / timeout / reserved concurrency",
    )
    steps: Annotated[
        Mapping[str, FunctionConfig], AfterValidator(_known_steps), PlainSerializer(dict)
    ] = Field(
        default_factory=lambda: MappingProxyType({}),
        description="step handler: memory / timeout / reserved concurrency",
    )

    def step(self, name: str) -> FunctionConfig:
        """The sizing of step `name` (the default sizing when the environment names none)."""
        return self.steps.get(name, FunctionConfig())

    def reserved_concurrency(self) -> int:
        """What every function of the environment reserves together, out of the account's."""
        per_workflow = self.orchestrator.reserved_concurrency or 0
        workflows = declared()
        steps = sum(self.step(name).reserved_concurrency or 0 for name in step_names(workflows))
        return per_workflow * len(workflows) + steps


class BrokerConfig(_Settings):
    """Amazon MQ for RabbitMQ, driving the periodic scheduler."""

    instance_type: MqInstanceType = Field("mq.m7g.medium", description="instance type")
    engine_version: str = Field("4.2", description="RabbitMQ engine version")
    deployment_mode: Literal["SINGLE_INSTANCE", "CLUSTER_MULTI_AZ"] = Field(
        "SINGLE_INSTANCE", description="SINGLE_INSTANCE or CLUSTER_MULTI_AZ"
    )
    # An hour after the worker's managed platform updates.
    maintenance_day: Weekday = Field("SUNDAY", description="broker maintenance window: day (UTC)")
    maintenance_time_utc: TimeUtc = Field(
        "04:00", description="broker maintenance window: start time HH:MM (UTC)"
    )
    admin_username: MqUsername = Field(
        "sluiceadmin",
        description="broker admin user (its password is generated in Secrets Manager)",
    )
    memory_alarm_pct: Percent = Field(
        80, description="broker memory used as % of RabbitMQ's limit that alarms"
    )
    # Not below 1: RabbitMQ blocks publishers when free disk reaches its limit.
    disk_free_alarm_ratio: float = Field(
        2.0, ge=1, description="broker free disk as a multiple of RabbitMQ's limit that alarms"
    )
    # One reserved execution: a deploy never waits on an account whose unreserved concurrency
    # the workflows have used up.
    provisioner: FunctionConfig = Field(
        FunctionConfig(memory_mb=256, timeout_s=120, reserved_concurrency=1),
        description="the deploy-time function that makes the scheduler's own broker user: "
        "memory / timeout / reserved concurrency",
    )
    hold_tokens_s: float = Field(
        0.0,
        ge=0,
        le=SCHEDULER_HOLD_MAX_S,
        description="how long a scheduler runner may keep its task's token to run the next "
        "ticks from its own clock, without the broker (0: every tick's token through the "
        "hatchery)",
    )
    scheduler_password_revision: Positive = Field(
        1,
        description="raise it after putting a new password in the scheduler user's secret: the "
        "next deploy sets that password on the broker",
    )

    @model_validator(mode="after")
    def _engine_runs_on_instance(self) -> Self:
        if self.engine_version.startswith("4.") and not self.instance_type.startswith("mq.m7g."):
            _fail(
                "instance_type",
                f"RabbitMQ {self.engine_version} runs only on mq.m7g.* instances, "
                f"got {self.instance_type!r}",
            )
        return self


class AlarmConfig(_Settings):
    """Who is told, and when."""

    email: Email = Field("oncall@example.com", description="address subscribed to the alarm topic")
    queue_age_s: Positive = Field(300, description="events queue: oldest message age that alarms")
    tasks_queue_age_s: Positive = Field(
        1800, description="tasks queue: oldest message age that alarms"
    )
    failed_executions: Positive = Field(
        1, description="failed or timed-out durable executions per 5 min that alarm"
    )
    running_utilization_pct: Percent = Field(
        80, description="running durable executions as % of quota that alarms"
    )
    step_errors: Positive = Field(1, description="step handler errors per 5 min that alarm")
    dispatch_failures: Positive = Field(
        5, description="worker 503 answers (could not start a workflow) per 5 min that alarm"
    )
    duration_pct_of_timeout: Percent = Field(
        80, description="step duration (p99) as % of its timeout that alarms"
    )


def _include_aws_solutions(packs: tuple[CompliancePack, ...]) -> tuple[CompliancePack, ...]:
    if "AwsSolutions" not in packs:
        raise ValueError(f"must include AwsSolutions, got {packs}")
    return packs


class EnvConfig(_Settings):
    """Everything that differs between dev, staging and prod.

    `EnvConfig(name=..., <setting>=..., <section>=dict(...))` validates and raises ConfigError;
    give sections as dicts, so an error names the whole path (a section built on its own cannot
    know its environment). `replace()` derives a changed, validated copy.
    """

    name: EnvName = Field(description="the environment's name (stacks are named Sluice-<name>-…)")
    region: Region = Field("eu-west-1", description="AWS region of both stacks")
    account: AccountId | None = Field(
        None, description="AWS account (None: the CLI's current account)"
    )
    retain_data: bool = Field(
        False, description="RETAIN stateful resources on stack deletion (else DESTROY)"
    )
    termination_protection: bool = Field(
        False, description="CloudFormation termination protection on both stacks"
    )
    # Service Quotas L-B99A9384; new accounts may get less than the default 1,000 (docs/runbook.md).
    account_concurrency_quota: int = Field(
        1000,
        description="the account's Lambda concurrency quota; reservations must "
        "leave 100 of it unreserved (checked at synth)",
    )
    log_retention_days: Annotated[
        int,
        _one_of(
            EB_LOG_RETENTION_DAYS,
            "the Lambda log groups (CloudWatch Logs) and the worker's streamed logs (Elastic "
            "Beanstalk) both keep it: one of",
        ),
    ] = Field(30, description="retention of every log group (Lambda, worker, flow logs default)")
    # A list is as good as a tuple here: what a newcomer types for "these packs".
    compliance_packs: Annotated[
        tuple[CompliancePack, ...], AfterValidator(_include_aws_solutions)
    ] = Field(
        ("AwsSolutions",),
        strict=False,
        description="cdk-nag packs run at synth; any finding fails synth",
    )
    events_queue: QueueConfig = Field(QueueConfig(), description="events queue and its DLQ")
    tasks_queue: QueueConfig = Field(
        QueueConfig(visibility_timeout_s=900, max_receive_count=3),
        description="tasks queue (heavy steps) and its DLQ",
    )
    network: NetworkConfig = Field(NetworkConfig(), description="the worker's VPC")
    worker: WorkerConfig = Field(
        WorkerConfig(), description="Elastic Beanstalk worker environment and sqsd"
    )
    # A factory: pydantic deep-copies an unhashable default, and the steps' read-only mapping
    # cannot be copied.
    workflows: WorkflowConfig = Field(
        default_factory=WorkflowConfig, description="durable workflows and step handler Lambdas"
    )
    broker: BrokerConfig | None = Field(
        None,
        description="Amazon MQ for RabbitMQ (None: no broker, cron.yaml drives periodic tasks)",
    )
    alarms: AlarmConfig = Field(AlarmConfig(), description="alarm e-mail and thresholds")

    def __init__(self, **settings: Any) -> None:
        try:
            super().__init__(**settings)
        except ValidationError as err:
            raise ConfigError(_explain(err, settings.get("name"))) from None

    @model_validator(mode="after")
    def _settings_agree(self) -> Self:
        reserved = self.reserved_concurrency()
        if reserved > self.account_concurrency_quota - LAMBDA_UNRESERVED_MIN:
            _fail(
                "account_concurrency_quota",
                f"({self.account_concurrency_quota}) must hold the {reserved} concurrent "
                "executions the functions reserve (workflows.orchestrator, workflows.steps, "
                "broker.provisioner) "
                f"plus the {LAMBDA_UNRESERVED_MIN} Lambda keeps unreserved: raise the quota "
                "first (docs/runbook.md#before-the-first-deploy) or reserve less",
            )
        # sqsd keeps a message invisible while the worker handles it: if the queue (or sqsd's
        # VisibilityTimeout, which we set from the queue) expired first, a second instance would
        # receive the same message while the first still works on it.
        queue, worker = self.events_queue, self.worker
        if queue.visibility_timeout_s < worker.processing_timeout_s:
            _fail(
                "events_queue.visibility_timeout_s",
                f"({queue.visibility_timeout_s} s) must be >= "
                f"worker.processing_timeout_s ({worker.processing_timeout_s} s)",
            )
        if worker.error_visibility_timeout_s > queue.visibility_timeout_s:
            _fail(
                "worker.error_visibility_timeout_s",
                f"({worker.error_visibility_timeout_s} s) must be <= "
                f"events_queue.visibility_timeout_s ({queue.visibility_timeout_s} s)",
            )
        return self

    def reserved_concurrency(self) -> int:
        """What every function of the environment reserves together, out of the account's."""
        provisioner = self.broker.provisioner.reserved_concurrency if self.broker else None
        return self.workflows.reserved_concurrency() + (provisioner or 0)

    @property
    def data_key(self) -> bool:
        """Whether the environment has a customer-managed data key (queues, bucket, table, logs)."""
        return self.events_queue.customer_managed_key or self.tasks_queue.customer_managed_key

    @property
    def prefix(self) -> str:
        """Stack and resource name prefix, e.g. `Sluice-prod`."""
        return naming.prefix(self.name)


def replace(cfg: EnvConfig, **changes: Any) -> EnvConfig:
    """`cfg` with `changes`, validated again (`model_copy(update=...)` would not validate them)."""
    return EnvConfig(**{**cfg.model_dump(), **changes})


def section_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (`QueueConfig`, `BrokerConfig | None`, `Mapping[str, FunctionConfig]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(section_of, get_args(annotation))), None)


def _lookup(loc: tuple[int | str, ...]) -> tuple[type[BaseModel], FieldInfo | None]:
    """The model that holds the setting at `loc`, and its field (None for an unknown name)."""
    model: type[BaseModel] = EnvConfig
    info = None
    for part in loc:
        if info is not None:
            model = section_of(info.annotation) or model
        # A part that is no field is a key (a step's name) or an index: the model stays.
        info = model.model_fields.get(part) if isinstance(part, str) else None
    return model, info


def _bounds(info: FieldInfo | None, ctx: dict[str, Any]) -> str:
    """The field's range: pydantic's error gives only the bound that was crossed (`ctx`)."""
    limits = dict(ctx)
    for constraint in info.metadata if info else ():
        limits.update({k: getattr(constraint, k) for k in ("ge", "le") if hasattr(constraint, k)})
    if "ge" in limits and "le" in limits:
        return f"must be between {limits['ge']} and {limits['le']}"
    return f"must be >= {limits['ge']}" if "ge" in limits else f"must be <= {limits['le']}"


def _describe(error: ErrorDetails) -> tuple[tuple[int | str, ...], str]:
    """Where the error is (a path under EnvConfig) and what to say about it."""
    loc, kind, ctx = error["loc"], error["type"], error.get("ctx", {})
    if kind == "setting":  # a rule between settings (_fail): its message is whole
        return loc + tuple(ctx["setting"].split(".")), ctx["message"]
    if kind == "value_error":  # a constraint of ours (_fullmatch, _one_of, ...): whole too
        return loc, str(ctx["error"])
    if kind == "extra_forbidden":
        model, _ = _lookup(loc)
        return loc, f"unknown setting (known: {', '.join(model.model_fields)})"
    if kind == "missing":
        return loc, "required"
    if kind in ("greater_than_equal", "less_than_equal"):
        what = _bounds(_lookup(loc)[1], ctx)
    else:  # a wrong type or choice: pydantic's words ("Input should be a valid integer")
        what = error["msg"].replace("Input should be", "must be")
    return loc, f"{what}, got {error['input']!r}"


def _explain(err: ValidationError, env: Any) -> str:
    """Every error of `err`, one per line, each `<env>.<section>.<field>: <message>`."""
    lines = []
    for error in err.errors():
        loc, message = _describe(error)
        setting = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
        # The name is every other setting's prefix: when it is wrong, there is none to give.
        lines.append(
            f"{setting[1:]}: {message}" if loc == ("name",) else f"{env}{setting}: {message}"
        )
    return "\n".join(lines)


_STEP_SIZES: Mapping[str, Mapping[str, int]] = {
    "fetch_audio_metadata": {"memory_mb": 512, "timeout_s": 60},
    "start_transcription": {"memory_mb": 256, "timeout_s": 30},
    "check_transcription": {"memory_mb": 256, "timeout_s": 30},
    "parse_save_transcription": {"memory_mb": 1024, "timeout_s": 300},
    "notify_user": {"memory_mb": 256, "timeout_s": 30},
    "on_failure": {"memory_mb": 256, "timeout_s": 30},
    # deliver_webhook's POST: a 10 s request timeout, one attempt per invocation.
    "post_webhook": {"memory_mb": 256, "timeout_s": 30},
}


def _reserved(concurrency: int) -> dict[str, dict[str, int]]:
    return {
        name: {**size, "reserved_concurrency": concurrency} for name, size in _STEP_SIZES.items()
    }


# Sections are plain dicts (validated into their models), so an error names the whole setting,
# e.g. `prod.events_queue.max_receive_count`. A section given replaces all of its defaults.
ENVIRONMENTS: Mapping[str, EnvConfig] = MappingProxyType(
    {
        "dev": EnvConfig(
            name="dev",
            log_retention_days=14,
            network=dict(flow_log_traffic="REJECT"),
            workflows=dict(retention_days=7, steps=_STEP_SIZES),
            alarms=dict(email="sluice-dev@example.com", queue_age_s=900),
        ),
        # Staging rehearses prod: the same keys and compliance packs, so every KMS permission
        # path and every pack's rule is first exercised here; a smaller broker, fewer instances.
        "staging": EnvConfig(
            name="staging",
            log_retention_days=30,
            compliance_packs=COMPLIANCE_PACKS,
            events_queue=dict(max_receive_count=5, customer_managed_key=True),
            tasks_queue=dict(
                visibility_timeout_s=900, max_receive_count=3, customer_managed_key=True
            ),
            worker=dict(deployment_policy="Immutable"),
            workflows=dict(steps=_STEP_SIZES),
            broker=dict(instance_type="mq.m7g.medium", deployment_mode="SINGLE_INSTANCE"),
            alarms=dict(email="sluice-staging@example.com"),
        ),
        "prod": EnvConfig(
            name="prod",
            retain_data=True,
            termination_protection=True,
            log_retention_days=365,
            compliance_packs=COMPLIANCE_PACKS,
            events_queue=dict(max_receive_count=5, customer_managed_key=True),
            tasks_queue=dict(
                visibility_timeout_s=900, max_receive_count=3, customer_managed_key=True
            ),
            network=dict(max_azs=2, nat_gateways=2, flow_log_retention_days=365),
            worker=dict(
                min_instances=2,
                max_instances=6,
                http_connections=20,
                deployment_policy="Immutable",
            ),
            workflows=dict(retention_days=30, steps=_reserved(10)),
            broker=dict(instance_type="mq.m7g.large", deployment_mode="CLUSTER_MULTI_AZ"),
            alarms=dict(email="sluice-oncall@example.com", queue_age_s=300),
        ),
    }
)


def load(name: str | None) -> EnvConfig:
    """The configuration of environment `name` (default `dev`); an unknown name lists the valid ones."""
    key = name or "dev"
    if key not in ENVIRONMENTS:
        raise ConfigError(
            f"env: unknown environment {key!r}; valid environments: {', '.join(ENVIRONMENTS)}"
        )
    return ENVIRONMENTS[key]
