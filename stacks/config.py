"""Per-environment settings of Sluice: typed, frozen data, validated once, chosen in app.py."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sluice import catalog, naming

# SQS hard limits (seconds): the console and API refuse anything outside them.
SQS_MIN_RETENTION_S = 60
SQS_MAX_RETENTION_S = 1_209_600  # 14 days
SQS_MAX_VISIBILITY_S = 43_200  # 12 hours
SQS_MAX_RECEIVE_COUNT = 1000
SQSD_MAX_INACTIVITY_S = 36_000
SQSD_MAX_CONNECTIONS = 100
LAMBDA_MAX_TIMEOUT_S = 900
# Lambda keeps this much of an account's concurrency unreserved, whatever functions reserve.
LAMBDA_UNRESERVED_MIN = 100
DURABLE_MAX_EXECUTION_S = 366 * 24 * 3600
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
COMPLIANCE_PACKS = ("AwsSolutions", "NIST80053R5", "HIPAASecurity")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$")
_ACCOUNT = re.compile(r"^\d{12}$")
_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
_WEEKDAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")


class ConfigError(ValueError):
    """A setting is impossible; the message names the setting (`<env>.<section>.<field>`)."""


def _require(ok: bool, setting: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{setting}: {message}")


@dataclass(frozen=True)
class QueueConfig:
    """The events queue (and, later, the tasks queue) with its dead-letter queue."""

    max_receive_count: int = 5
    visibility_timeout_s: int = 960
    retention_s: int = 4 * 24 * 3600
    dlq_retention_s: int = SQS_MAX_RETENTION_S
    customer_managed_key: bool = False

    def validate(self, where: str) -> None:
        _require(
            1 <= self.max_receive_count <= SQS_MAX_RECEIVE_COUNT,
            f"{where}.max_receive_count",
            f"must be between 1 and {SQS_MAX_RECEIVE_COUNT}, got {self.max_receive_count}",
        )
        _require(
            0 <= self.visibility_timeout_s <= SQS_MAX_VISIBILITY_S,
            f"{where}.visibility_timeout_s",
            f"must be between 0 and {SQS_MAX_VISIBILITY_S} s, got {self.visibility_timeout_s}",
        )
        for name in ("retention_s", "dlq_retention_s"):
            value = getattr(self, name)
            _require(
                SQS_MIN_RETENTION_S <= value <= SQS_MAX_RETENTION_S,
                f"{where}.{name}",
                f"SQS keeps messages between {SQS_MIN_RETENTION_S} s and "
                f"{SQS_MAX_RETENTION_S} s (14 days), got {value}",
            )
        _require(
            self.dlq_retention_s >= self.retention_s,
            f"{where}.dlq_retention_s",
            f"must be at least retention_s ({self.retention_s} s): a message's age is kept "
            "when it moves to the DLQ, so a shorter DLQ retention deletes it on arrival",
        )


@dataclass(frozen=True)
class NetworkConfig:
    """The worker's VPC."""

    max_azs: int = 2
    nat_gateways: int = 1
    flow_log_retention_days: int = 30

    def validate(self, where: str) -> None:
        _require(self.max_azs >= 2, f"{where}.max_azs", f"must be >= 2, got {self.max_azs}")
        _require(
            1 <= self.nat_gateways <= self.max_azs,
            f"{where}.nat_gateways",
            f"must be between 1 and max_azs ({self.max_azs}), got {self.nat_gateways}",
        )
        _require(
            self.flow_log_retention_days in VALID_LOG_RETENTION_DAYS,
            f"{where}.flow_log_retention_days",
            f"CloudWatch Logs accepts {VALID_LOG_RETENTION_DAYS}, got {self.flow_log_retention_days}",
        )


@dataclass(frozen=True)
class WorkerConfig:
    """The Elastic Beanstalk worker environment and its sqsd daemon."""

    instance_type: str = "t3.medium"
    min_instances: int = 1
    max_instances: int = 2
    # EB's platform branch; the deploy picks its recommended version (a pinned version retires
    # and cannot be used by a fresh account), and managed updates keep it current.
    platform_branch: str = "Python 3.13 running on 64bit Amazon Linux 2023"
    # sqsd settings: processing_timeout_s is sqsd's InactivityTimeout, the longest one POST may take.
    http_path: str = "/"
    http_connections: int = 10
    processing_timeout_s: int = 60
    error_visibility_timeout_s: int = 30
    # Target backlog per instance for target tracking on the events queue.
    backlog_per_instance: int = 100
    tasks_concurrency: int = 2
    max_body_bytes: int = 256 * 1024

    def validate(self, where: str) -> None:
        _require(
            bool(
                re.fullmatch(
                    r"Python 3\.\d+ running on 64bit Amazon Linux 2023", self.platform_branch
                )
            ),
            f"{where}.platform_branch",
            "must name an Elastic Beanstalk platform branch such as 'Python 3.13 running on 64bit "
            f"Amazon Linux 2023' (the deploy picks its recommended version), got "
            f"{self.platform_branch!r}",
        )
        _require(
            1 <= self.min_instances <= self.max_instances,
            f"{where}.min_instances",
            f"must be between 1 and max_instances ({self.max_instances}), got {self.min_instances}",
        )
        _require(
            self.http_path.startswith("/"),
            f"{where}.http_path",
            f"must start with '/', got {self.http_path!r}",
        )
        _require(
            1 <= self.http_connections <= SQSD_MAX_CONNECTIONS,
            f"{where}.http_connections",
            f"sqsd allows 1 to {SQSD_MAX_CONNECTIONS}, got {self.http_connections}",
        )
        _require(
            1 <= self.processing_timeout_s <= SQSD_MAX_INACTIVITY_S,
            f"{where}.processing_timeout_s",
            f"sqsd's InactivityTimeout allows 1 to {SQSD_MAX_INACTIVITY_S} s, "
            f"got {self.processing_timeout_s}",
        )
        _require(
            0 <= self.error_visibility_timeout_s <= SQS_MAX_VISIBILITY_S,
            f"{where}.error_visibility_timeout_s",
            f"must be between 0 and {SQS_MAX_VISIBILITY_S} s, got {self.error_visibility_timeout_s}",
        )
        _require(
            self.backlog_per_instance >= 1,
            f"{where}.backlog_per_instance",
            f"must be >= 1, got {self.backlog_per_instance}",
        )
        _require(
            self.tasks_concurrency >= 1,
            f"{where}.tasks_concurrency",
            f"must be >= 1, got {self.tasks_concurrency}",
        )
        _require(
            1024 <= self.max_body_bytes <= 1024 * 1024,
            f"{where}.max_body_bytes",
            f"must be between 1 KiB and 1 MiB (SQS's limit), got {self.max_body_bytes}",
        )


@dataclass(frozen=True)
class FunctionConfig:
    """One Lambda function's sizing."""

    memory_mb: int = 256
    timeout_s: int = 60
    # None: no reserved concurrency (a new account's low quota cannot reserve any).
    reserved_concurrency: int | None = None

    def validate(self, where: str) -> None:
        _require(
            128 <= self.memory_mb <= 10_240,
            f"{where}.memory_mb",
            f"Lambda allows 128 to 10240 MB, got {self.memory_mb}",
        )
        _require(
            1 <= self.timeout_s <= LAMBDA_MAX_TIMEOUT_S,
            f"{where}.timeout_s",
            f"Lambda allows 1 to {LAMBDA_MAX_TIMEOUT_S} s, got {self.timeout_s}",
        )
        _require(
            self.reserved_concurrency is None or self.reserved_concurrency >= 1,
            f"{where}.reserved_concurrency",
            f"must be None or >= 1, got {self.reserved_concurrency}",
        )


@dataclass(frozen=True)
class WorkflowConfig:
    """Durable workflow functions and the step handlers they invoke."""

    execution_timeout_days: int = 30
    retention_days: int = 14
    max_audio_seconds: int = 4 * 3600
    orchestrator: FunctionConfig = FunctionConfig(memory_mb=512, timeout_s=300)
    steps: Mapping[str, FunctionConfig] = field(default_factory=lambda: MappingProxyType({}))

    def step(self, name: str) -> FunctionConfig:
        """The sizing of step `name` (the default sizing when the environment names none)."""
        return self.steps.get(name, FunctionConfig())

    def reserved_concurrency(self) -> int:
        """What every function of the environment reserves together, out of the account's."""
        per_workflow = self.orchestrator.reserved_concurrency or 0
        steps = sum(self.step(name).reserved_concurrency or 0 for name in catalog.TRANSCRIBE_STEPS)
        return per_workflow * len(catalog.WORKFLOWS) + steps

    def validate(self, where: str) -> None:
        _require(
            1 <= self.execution_timeout_days * 86_400 <= DURABLE_MAX_EXECUTION_S,
            f"{where}.execution_timeout_days",
            f"durable executions run 1 to 366 days, got {self.execution_timeout_days}",
        )
        _require(
            1 <= self.retention_days <= 90,
            f"{where}.retention_days",
            f"durable history is kept 1 to 90 days, got {self.retention_days}",
        )
        _require(
            self.max_audio_seconds >= 1,
            f"{where}.max_audio_seconds",
            f"must be >= 1, got {self.max_audio_seconds}",
        )
        self.orchestrator.validate(f"{where}.orchestrator")
        for name, fn in self.steps.items():
            fn.validate(f"{where}.steps.{name}")


@dataclass(frozen=True)
class BrokerConfig:
    """Amazon MQ for RabbitMQ, driving the periodic scheduler."""

    instance_type: str = "mq.m7g.medium"
    engine_version: str = "4.2"
    deployment_mode: str = "SINGLE_INSTANCE"
    # Weekly maintenance window (UTC), an hour after the worker's managed platform updates.
    maintenance_day: str = "SUNDAY"
    maintenance_time_utc: str = "04:00"
    admin_username: str = "sluiceadmin"
    # Alarms: memory used as % of RabbitMQ's high watermark; free disk as a multiple of its limit.
    memory_alarm_pct: int = 80
    disk_free_alarm_ratio: float = 2.0
    # The deploy-time function that makes the scheduler's own broker user. One reserved execution:
    # a deploy never waits on an account whose unreserved concurrency the workflows have used up.
    provisioner: FunctionConfig = FunctionConfig(
        memory_mb=256, timeout_s=120, reserved_concurrency=1
    )
    # Raise it after putting a new password in the scheduler user's secret: the next deploy sets
    # that password on the broker (docs/runbook.md#scheduler-broker-credentials).
    scheduler_password_revision: int = 1

    def validate(self, where: str) -> None:
        _require(
            self.maintenance_day in _WEEKDAYS,
            f"{where}.maintenance_day",
            f"must be one of {_WEEKDAYS}, got {self.maintenance_day!r}",
        )
        _require(
            bool(re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", self.maintenance_time_utc)),
            f"{where}.maintenance_time_utc",
            f"must be HH:MM (24 h, UTC), got {self.maintenance_time_utc!r}",
        )
        # Amazon MQ: 2-100 characters of letters, digits, '-', '.', '_' and '~'.
        _require(
            bool(re.fullmatch(r"[A-Za-z0-9._~-]{2,100}", self.admin_username)),
            f"{where}.admin_username",
            f"must be 2-100 chars of [A-Za-z0-9._~-], got {self.admin_username!r}",
        )
        _require(
            1 <= self.memory_alarm_pct <= 100,
            f"{where}.memory_alarm_pct",
            f"must be 1..100, got {self.memory_alarm_pct}",
        )
        _require(
            self.disk_free_alarm_ratio >= 1,
            f"{where}.disk_free_alarm_ratio",
            f"must be >= 1 (RabbitMQ blocks publishers at 1), got {self.disk_free_alarm_ratio}",
        )
        self.provisioner.validate(f"{where}.provisioner")
        _require(
            self.scheduler_password_revision >= 1,
            f"{where}.scheduler_password_revision",
            f"must be >= 1, got {self.scheduler_password_revision}",
        )
        _require(
            self.deployment_mode in ("SINGLE_INSTANCE", "CLUSTER_MULTI_AZ"),
            f"{where}.deployment_mode",
            f"must be SINGLE_INSTANCE or CLUSTER_MULTI_AZ, got {self.deployment_mode!r}",
        )
        _require(
            self.instance_type.startswith("mq."),
            f"{where}.instance_type",
            f"must be an Amazon MQ instance type such as mq.m7g.medium, got {self.instance_type!r}",
        )
        if self.engine_version.startswith("4."):
            _require(
                self.instance_type.startswith("mq.m7g."),
                f"{where}.instance_type",
                f"RabbitMQ {self.engine_version} runs only on mq.m7g.* instances, "
                f"got {self.instance_type!r}",
            )


@dataclass(frozen=True)
class AlarmConfig:
    """Who is told, and when."""

    email: str = "oncall@example.com"
    queue_age_s: int = 300
    tasks_queue_age_s: int = 1800
    failed_executions: int = 1
    running_utilization_pct: int = 80
    step_errors: int = 1
    dispatch_failures: int = 5
    duration_pct_of_timeout: int = 80

    def validate(self, where: str) -> None:
        _require(
            bool(_EMAIL.match(self.email)),
            f"{where}.email",
            f"must be an e-mail address, got {self.email!r}",
        )
        for name in (
            "queue_age_s",
            "tasks_queue_age_s",
            "failed_executions",
            "step_errors",
            "dispatch_failures",
        ):
            value = getattr(self, name)
            _require(value >= 1, f"{where}.{name}", f"must be >= 1, got {value}")
        for name in ("running_utilization_pct", "duration_pct_of_timeout"):
            value = getattr(self, name)
            _require(1 <= value <= 100, f"{where}.{name}", f"must be 1..100, got {value}")


@dataclass(frozen=True)
class EnvConfig:
    """Everything that differs between dev, staging and prod."""

    name: str
    region: str = "eu-west-1"
    account: str | None = None
    retain_data: bool = False
    termination_protection: bool = False
    # The account's Lambda concurrency quota (Service Quotas L-B99A9384; new accounts may get
    # less than the default 1,000): every reservation comes out of it (docs/runbook.md).
    account_concurrency_quota: int = 1000
    log_retention_days: int = 30
    compliance_packs: tuple[str, ...] = ("AwsSolutions",)
    events_queue: QueueConfig = QueueConfig()
    tasks_queue: QueueConfig = QueueConfig(visibility_timeout_s=900, max_receive_count=3)
    network: NetworkConfig = NetworkConfig()
    worker: WorkerConfig = WorkerConfig()
    workflows: WorkflowConfig = WorkflowConfig()
    broker: BrokerConfig | None = None
    alarms: AlarmConfig = AlarmConfig()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        n = self.name
        _require(
            bool(re.fullmatch(r"[a-z][a-z0-9]{1,15}", n)),
            "name",
            f"must be 2-16 lowercase letters/digits starting with a letter, got {n!r}",
        )
        _require(bool(_REGION.match(self.region)), f"{n}.region", f"not a region: {self.region!r}")
        _require(
            self.account is None or bool(_ACCOUNT.match(self.account)),
            f"{n}.account",
            f"must be a 12-digit AWS account id or None, got {self.account!r}",
        )
        _require(
            self.log_retention_days in EB_LOG_RETENTION_DAYS,
            f"{n}.log_retention_days",
            "the Lambda log groups (CloudWatch Logs) and the worker's streamed logs (Elastic "
            f"Beanstalk) both keep it: one of {EB_LOG_RETENTION_DAYS}, got {self.log_retention_days}",
        )
        _require(
            "AwsSolutions" in self.compliance_packs
            and set(self.compliance_packs) <= set(COMPLIANCE_PACKS),
            f"{n}.compliance_packs",
            f"must include AwsSolutions and only packs of {COMPLIANCE_PACKS}, "
            f"got {self.compliance_packs}",
        )
        self.events_queue.validate(f"{n}.events_queue")
        self.tasks_queue.validate(f"{n}.tasks_queue")
        self.network.validate(f"{n}.network")
        self.worker.validate(f"{n}.worker")
        self.workflows.validate(f"{n}.workflows")
        if self.broker is not None:
            self.broker.validate(f"{n}.broker")
        self.alarms.validate(f"{n}.alarms")
        reserved = self.reserved_concurrency()
        _require(
            reserved <= self.account_concurrency_quota - LAMBDA_UNRESERVED_MIN,
            f"{n}.account_concurrency_quota",
            f"({self.account_concurrency_quota}) must hold the {reserved} concurrent executions "
            "the functions reserve (workflows.orchestrator, workflows.steps, "
            f"broker.provisioner) plus the "
            f"{LAMBDA_UNRESERVED_MIN} Lambda keeps unreserved: raise the quota first "
            "(docs/runbook.md#before-the-first-deploy) or reserve less",
        )
        # sqsd keeps a message invisible while the worker handles it: if the queue (or sqsd's
        # VisibilityTimeout, which we set from the queue) expired first, a second instance would
        # receive the same message while the first still works on it.
        _require(
            self.events_queue.visibility_timeout_s >= self.worker.processing_timeout_s,
            f"{n}.events_queue.visibility_timeout_s",
            f"({self.events_queue.visibility_timeout_s} s) must be >= "
            f"worker.processing_timeout_s ({self.worker.processing_timeout_s} s)",
        )
        _require(
            self.worker.error_visibility_timeout_s <= self.events_queue.visibility_timeout_s,
            f"{n}.worker.error_visibility_timeout_s",
            f"({self.worker.error_visibility_timeout_s} s) must be <= "
            f"events_queue.visibility_timeout_s ({self.events_queue.visibility_timeout_s} s)",
        )

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


_STEP_SIZES = MappingProxyType(
    {
        "fetch_audio_metadata": FunctionConfig(memory_mb=512, timeout_s=60),
        "start_transcription": FunctionConfig(memory_mb=256, timeout_s=30),
        "check_transcription": FunctionConfig(memory_mb=256, timeout_s=30),
        "parse_save_transcription": FunctionConfig(memory_mb=1024, timeout_s=300),
        "notify_user": FunctionConfig(memory_mb=256, timeout_s=30),
        "on_failure": FunctionConfig(memory_mb=256, timeout_s=30),
    }
)


def _reserved(concurrency: int) -> Mapping[str, FunctionConfig]:
    return MappingProxyType(
        {
            name: FunctionConfig(fn.memory_mb, fn.timeout_s, reserved_concurrency=concurrency)
            for name, fn in _STEP_SIZES.items()
        }
    )


ENVIRONMENTS: Mapping[str, EnvConfig] = MappingProxyType(
    {
        "dev": EnvConfig(
            name="dev",
            log_retention_days=14,
            workflows=WorkflowConfig(execution_timeout_days=7, retention_days=7, steps=_STEP_SIZES),
            alarms=AlarmConfig(email="sluice-dev@example.com", queue_age_s=900),
        ),
        # Staging rehearses prod: the same keys and compliance packs, so every KMS permission
        # path and every pack's rule is first exercised here; a smaller broker, fewer instances.
        "staging": EnvConfig(
            name="staging",
            log_retention_days=30,
            compliance_packs=COMPLIANCE_PACKS,
            events_queue=QueueConfig(max_receive_count=5, customer_managed_key=True),
            tasks_queue=QueueConfig(
                visibility_timeout_s=900, max_receive_count=3, customer_managed_key=True
            ),
            workflows=WorkflowConfig(steps=_STEP_SIZES),
            broker=BrokerConfig(instance_type="mq.m7g.medium", deployment_mode="SINGLE_INSTANCE"),
            alarms=AlarmConfig(email="sluice-staging@example.com"),
        ),
        "prod": EnvConfig(
            name="prod",
            retain_data=True,
            termination_protection=True,
            log_retention_days=365,
            compliance_packs=COMPLIANCE_PACKS,
            events_queue=QueueConfig(max_receive_count=5, customer_managed_key=True),
            tasks_queue=QueueConfig(
                visibility_timeout_s=900, max_receive_count=3, customer_managed_key=True
            ),
            network=NetworkConfig(max_azs=2, nat_gateways=2, flow_log_retention_days=365),
            worker=WorkerConfig(min_instances=2, max_instances=6, http_connections=20),
            workflows=WorkflowConfig(
                execution_timeout_days=365, retention_days=30, steps=_reserved(10)
            ),
            broker=BrokerConfig(instance_type="mq.m7g.large", deployment_mode="CLUSTER_MULTI_AZ"),
            alarms=AlarmConfig(email="sluice-oncall@example.com", queue_age_s=300),
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
