"""What each process is told at start, as one model per process: the variable names are defined here
and nowhere else.

The stacks render a process's environment from its model (`render`, which takes CDK tokens as
they are: only the deployment knows their values), and the process reads it back through the
same model (`read`), typed and validated: a missing or impossible value stops the process at
start with the variable named, instead of failing its first job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sluice import naming
from sluice.scheduling.oneoff import MIN_WAIT_EXP, RABBITMQ_MAX_TTL_MS
from sluice.workflows import Throttle, with_throttles

# The longest audio any step accepts; the configuration may lower it per environment.
DEFAULT_MAX_AUDIO_SECONDS = 4 * 3600
# A concurrency slot's holder younger than this is not asked whether it still runs (each ask is
# a GetDurableExecution call); adapters/slots.py.
SLOT_CHECK_AFTER_S = 60
# SQS's own ceiling on a message (its size limit): nothing larger can come from sqsd.
SQS_MAX_MESSAGE_BYTES = 1024 * 1024
MAX_BODY_BYTES = 256 * 1024


class SettingsError(ValueError):
    """A variable is missing or impossible; the message names it."""


def _var(name: str, description: str, default: Any = ..., **limits: Any) -> Any:
    return Field(default, validation_alias=name, description=description, **limits)


# The coordination table's name, read by the Lambdas (slots, joins) and the scheduler (its ledger).
_COORDINATION_TABLE = "SLUICE_COORDINATION_TABLE"
_EVENTS_QUEUE_URL = "SLUICE_EVENTS_QUEUE_URL"
_URL = r"^https?://\S+$"
_ARN = r"^arn:aws[a-z-]*:\S+$"
_PATH = r"^/\S*$"
Url = Annotated[str, Field(pattern=_URL)]
Arn = Annotated[str, Field(pattern=_ARN)]
# What a value that does not match a pattern should have been.
_PATTERNS = {_URL: "must be an http(s) URL", _ARN: "must be an ARN", _PATH: "must start with '/'"}


class ProcessSettings(BaseSettings):
    """The settings of one process; subclasses declare the fields, each under its variable."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", case_sensitive=True, populate_by_name=True
    )

    @classmethod
    def of(cls, **fields: Any) -> Self:
        """Settings given by field name (tests, local runs), validated like the environment."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise SettingsError(_explain(cls, exc)) from None

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Field name -> the environment variable it is read from."""
        return {name: str(f.validation_alias) for name, f in cls.model_fields.items()}

    @classmethod
    def render(cls, **values: object) -> dict[str, str]:
        """The environment a stack gives the process: each given field under its variable."""
        names = cls.variables()
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise TypeError(f"{cls.__name__} has no settings {unknown}")
        return {names[k]: v if isinstance(v, str) else str(v) for k, v in values.items()}

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Parse and validate the environment (the process's own by default)."""
        env = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        for variable in cls.variables().values():
            if env.get(variable, "") != "":
                data[variable] = env[variable]
        data.update(cls._extra(env))
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SettingsError(_explain(cls, exc)) from None

    @classmethod
    def _extra(cls, env: Mapping[str, str]) -> dict[str, Any]:
        """Settings that are not one variable each (subclasses)."""
        return {}


class WebSettings(ProcessSettings):
    """The worker's web process (worker/app.py), fed by sqsd."""

    env: str = _var("SLUICE_ENV", "environment name (metric dimension)", min_length=1)
    events_dlq_url: Url = _var("SLUICE_EVENTS_DLQ_URL", "the events DLQ")
    max_body_bytes: int = _var(
        "SLUICE_MAX_BODY_BYTES",
        "largest body accepted",
        MAX_BODY_BYTES,
        ge=1024,
        le=SQS_MAX_MESSAGE_BYTES,
    )
    http_path: str = _var("SLUICE_HTTP_PATH", "sqsd's HttpPath", "/", pattern=_PATH)
    web_threads: int = _var("SLUICE_WEB_THREADS", "gunicorn threads per process", 10, ge=1)
    metrics_namespace: str = _var(
        "SLUICE_METRICS_NAMESPACE", "where the counts go", "Sluice/Worker", min_length=1
    )
    invoke_timeout_s: float = _var(
        "SLUICE_INVOKE_TIMEOUT_S", "connect + read budget of one Invoke", 10.0, gt=0, le=60
    )
    publish_metrics_s: float = _var(
        "SLUICE_PUBLISH_METRICS_S", "seconds between PutMetricData flushes (0: EMF lines only)", 0.0
    )
    claim_check_bucket: str = _var(
        "SLUICE_CLAIM_CHECK_BUCKET", "bucket for dead letters too large for the DLQ", ""
    )
    role_arn: Arn | None = _var(naming.role_variable("web"), "the role this process assumes", None)
    # Flow control's state and runs' cancel registrations (docs/flow-control.md, worker/cancels.py)
    coordination_table: str = _var(
        _COORDINATION_TABLE, "flow control's state, cancel registrations (coordination table)", ""
    )
    events_queue_url: str = _var(
        _EVENTS_QUEUE_URL, "the events queue (flow control's wake-ups)", ""
    )
    # Workflow -> a throttle replacing its declared one (JSON): a local run's short windows
    # (devtools/local/resources.py `THROTTLES`); the stacks never set it.
    throttles: Mapping[str, Throttle] = Field(
        default_factory=dict,
        validation_alias="SLUICE_THROTTLES",
        description="throttles replacing declared ones, JSON {workflow: {limit, period_s, key}}",
    )
    # Workflow -> its `live` alias ARN, one variable each (naming.alias_variable).
    workflow_aliases: Mapping[str, Arn] = Field(default_factory=dict, validation_alias="aliases")
    # Workflow -> its failure handler's `live` alias ARN, for the workflows an event may cancel.
    failure_handlers: Mapping[str, Arn] = Field(
        default_factory=dict, validation_alias="failure_handlers"
    )

    @classmethod
    def _extra(cls, env: Mapping[str, str]) -> dict[str, Any]:
        return {
            "aliases": naming.aliases_from(env),
            "failure_handlers": naming.aliases_from(
                env, prefix=naming.FAILURE_HANDLER_VARIABLE_PREFIX
            ),
        }

    @field_validator("throttles", mode="before")
    @classmethod
    def _throttles_json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("throttles")
    @classmethod
    def _throttles_declared(cls, value: Mapping[str, Throttle]) -> Mapping[str, Throttle]:
        # Imported here: the declarations are read only by a process told to replace a throttle.
        from sluice.catalog import FLOWS

        with_throttles(FLOWS, value)  # raises, naming the workflows that declare none
        return value

    @field_validator("http_path")
    @classmethod
    def _not_health(cls, value: str) -> str:
        if value == "/health":
            raise ValueError("/health is the health check, not the sqsd path")
        return value

    @field_validator("publish_metrics_s")
    @classmethod
    def _flush(cls, value: float) -> float:
        if not (value == 0 or 10 <= value <= 300):
            raise ValueError("must be 0 (off) or 10..300 s")
        return value


class TasksSettings(ProcessSettings):
    """The worker's tasks process (worker/tasks.py) and the heavy steps' input limits."""

    queue_url: Url = _var("SLUICE_TASKS_QUEUE_URL", "the tasks queue")
    concurrency: int = _var(
        "SLUICE_TASKS_CONCURRENCY",
        "tasks at once (default: one per CPU)",
        os.cpu_count() or 1,
        ge=1,
    )
    visibility_timeout_s: int = _var("SLUICE_TASKS_VISIBILITY_S", "message visibility", 900, ge=1)
    keepalive_s: float = _var("SLUICE_TASKS_KEEPALIVE_S", "heartbeat period", 60.0, gt=0)
    grace_s: float = _var("SLUICE_TASKS_GRACE_S", "drain time on SIGTERM", 60.0, ge=0)
    stop_timeout_s: int | None = _var(
        "SLUICE_TASKS_STOP_TIMEOUT_S",
        "systemd's stop timeout for this process (the .platform hook sets it; > grace)",
        None,
        ge=1,
    )
    scale_in_protection: bool = _var(
        "SLUICE_TASKS_SCALE_IN_PROTECTION",
        "protect the instance from scale-in while a task runs (on EC2 in an Auto Scaling group)",
        False,
    )
    protection_max_s: int = _var(
        "SLUICE_TASKS_PROTECTION_MAX_S",
        "longest a task keeps its instance protected (one attempt's longest run)",
        2 * DEFAULT_MAX_AUDIO_SECONDS,
        ge=1,
    )
    receive_wait_s: int = _var("SLUICE_TASKS_RECEIVE_WAIT_S", "long poll", 20, ge=0, le=20)
    max_audio_bytes: int = _var("SLUICE_MAX_AUDIO_BYTES", "largest upload", 2 * 1024**3, ge=1)
    max_audio_seconds: int = _var(
        "SLUICE_MAX_AUDIO_SECONDS", "longest audio", DEFAULT_MAX_AUDIO_SECONDS, ge=1
    )
    max_transcript_bytes: int = _var(
        "SLUICE_MAX_TRANSCRIPT_BYTES", "largest transcript", 50 * 1024**2, ge=1
    )
    max_chunks: int = _var("SLUICE_MAX_CHUNKS", "most chunks embedded", 20_000, ge=1)
    embed_threads: int = _var("SLUICE_EMBED_THREADS", "onnxruntime threads per task", 1, ge=1)
    transcode_chunk_s: int = _var(
        "SLUICE_TRANSCODE_CHUNK_S",
        "audio per resumable transcode chunk: at most this is redone after an interruption",
        60,
        ge=6,
    )
    role_arn: Arn | None = _var(
        naming.role_variable("tasks"), "the role this process assumes", None
    )

    @field_validator("stop_timeout_s")
    @classmethod
    def _after_the_drain(cls, value: int | None, info: Any) -> int | None:
        grace = info.data.get("grace_s")
        if value is not None and grace is not None and value <= grace:
            raise ValueError(f"must be above SLUICE_TASKS_GRACE_S ({grace} s)")
        return value

    @field_validator("keepalive_s")
    @classmethod
    def _below_visibility(cls, value: float, info: Any) -> float:
        visibility = info.data.get("visibility_timeout_s")
        if visibility is not None and value >= visibility:
            raise ValueError(f"must be below SLUICE_TASKS_VISIBILITY_S ({visibility} s)")
        return value


# The longest a scheduler runner may keep a delivery (SchedulerSettings.hold_s): well below
# RabbitMQ's consumer timeout (30 min by default; Amazon MQ's too), which closes the channel of a
# delivery kept longer.
SCHEDULER_HOLD_MAX_S = 600.0


class SchedulerSettings(ProcessSettings):
    """The worker's scheduler process (worker/scheduler)."""

    broker_url: str | None = _var("SLUICE_BROKER_URL", "a full AMQP(S) URL (tests, local)", None)
    broker_endpoint: str | None = _var(
        "SLUICE_BROKER_ENDPOINT", "the broker's amqps://host:5671 endpoint", None
    )
    broker_secret_arn: Arn | None = _var(
        "SLUICE_BROKER_SECRET_ARN", "the secret holding the broker credentials", None
    )
    management_url: Url | None = _var(
        "SLUICE_BROKER_MANAGEMENT_URL",
        "RabbitMQ's management API (default: https on the AMQPS host)",
        None,
    )
    events_queue_url: Url | None = _var(
        _EVENTS_QUEUE_URL, "where event tasks send their events", None
    )
    metrics_namespace: str | None = _var(
        "SLUICE_SCHEDULER_METRICS_NAMESPACE", "where the broker figures go", None
    )
    coordination_table: str | None = _var(
        _COORDINATION_TABLE,
        "the tick ledger (unset: ticks are recorded in this process only)",
        None,
    )
    lease_s: float = _var(
        "SLUICE_SCHEDULER_LEASE_S",
        "how long a claimed tick is held without renewal before another process may take over",
        10.0,
        gt=0,
    )
    retry_delay_s: float = _var(
        "SLUICE_SCHEDULER_RETRY_DELAY_S",
        "how long a tick that failed transiently waits before its first retry",
        5.0,
        gt=0,
    )
    retry_backoff: float = _var(
        "SLUICE_SCHEDULER_RETRY_BACKOFF",
        "each further retry waits this many times longer than the one before",
        2.0,
        ge=1,
    )
    max_ttl_ms: int = _var(
        "SLUICE_SCHEDULER_MAX_TTL_MS",
        "the longest hop of a one-off task (RabbitMQ's TTL ceiling; tests shorten it)",
        RABBITMQ_MAX_TTL_MS,
        ge=2**MIN_WAIT_EXP,
        le=RABBITMQ_MAX_TTL_MS,
    )
    heartbeat_s: int = _var(
        "SLUICE_SCHEDULER_HEARTBEAT_S",
        "AMQP heartbeat (a frozen runner is evicted after ~2)",
        5,
        ge=1,
    )
    hold_s: float = _var(
        "SLUICE_SCHEDULER_HOLD_S",
        "how long a runner may keep its task's token to run the next ticks from its own clock "
        "(0: every tick's token waits in the broker's hatchery)",
        0.0,
        ge=0,
        le=SCHEDULER_HOLD_MAX_S,
    )
    role_arn: Arn | None = _var(
        naming.role_variable("scheduler"), "the role this process assumes", None
    )
    overlap_pending_s: float = _var(
        "SLUICE_SCHEDULER_OVERLAP_PENDING_S",
        "how long a sent tick whose run has not started yet keeps the next ticks of its task "
        "skipped (overlap = skip)",
        900.0,
        gt=0,
    )
    # Workflow -> its `live` alias ARN (naming.alias_variable): where an event task's previous
    # run is looked up (worker/scheduler/overlap.py).
    workflow_aliases: Mapping[str, Arn] = Field(default_factory=dict, validation_alias="aliases")

    @classmethod
    def _extra(cls, env: Mapping[str, str]) -> dict[str, Any]:
        return {"aliases": naming.aliases_from(env)}

    @property
    def broker_configured(self) -> bool:
        return bool(self.broker_url or (self.broker_endpoint and self.broker_secret_arn))


class LambdaSettings(ProcessSettings):
    """What the workflow and step Lambdas are told (lambdas/common)."""

    media_bucket: str = _var("SLUICE_MEDIA_BUCKET", "the media bucket", "")
    jobs_table: str = _var("SLUICE_JOBS_TABLE", "the jobs table", "")
    coordination_table: str = _var(_COORDINATION_TABLE, "concurrency slots and fan-in joins", "")
    notifications_topic: str = _var("SLUICE_NOTIFICATIONS_TOPIC", "the job notifications topic", "")
    events_queue_url: str = _var(_EVENTS_QUEUE_URL, "the events queue", "")
    tasks_queue_url: str = _var("SLUICE_TASKS_QUEUE_URL", "the tasks queue (heavy steps)", "")
    media_key_arn: str = _var("SLUICE_MEDIA_KEY_ARN", "the data key (Transcribe's output)", "")
    max_audio_seconds: int = _var(
        "SLUICE_MAX_AUDIO_SECONDS", "longest audio", DEFAULT_MAX_AUDIO_SECONDS, ge=1
    )
    job_ttl_days: int = _var("SLUICE_JOB_TTL_DAYS", "how long a job record is kept", 400, ge=1)
    transcribe_language: str = _var(
        "SLUICE_TRANSCRIBE_LANGUAGE", "Transcribe language (empty: identify it)", ""
    )
    heavy_heartbeat_timeout_s: int = _var(
        "SLUICE_HEAVY_HEARTBEAT_TIMEOUT_S", "heavy task callback heartbeat timeout", 3600, ge=1
    )
    heavy_timeout_s: int = _var(
        "SLUICE_HEAVY_TIMEOUT_S", "longest heavy task attempt", 4 * 3600, ge=1
    )
    heavy_max_attempts: int | None = _var(
        "SLUICE_HEAVY_MAX_ATTEMPTS",
        "heavy task attempts, over the declared retries (unset: the declaration's)",
        None,
        ge=1,
    )
    heavy_backoff_s: int = _var("SLUICE_HEAVY_BACKOFF_S", "first heavy retry delay", 30, ge=1)
    slot_check_after_s: int = _var(
        "SLUICE_SLOT_CHECK_AFTER_S",
        "age of a concurrency slot's holder before a waiting run asks whether it still runs "
        "(the stacks keep the default; `make local` shortens it)",
        SLOT_CHECK_AFTER_S,
        ge=1,
    )

    def require(self, name: str) -> str:
        """A setting this function needs: its absence is a deployment fault, named."""
        value = getattr(self, name)
        if not value:
            raise SettingsError(f"{self.variables()[name]}: not set for this function")
        return str(value)


def _explain(cls: type[ProcessSettings], exc: ValidationError) -> str:
    """The first problem, as `<VARIABLE>: <what it must be>, got <value>`."""
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"]]
    names = cls.variables()
    if loc and loc[0] in ("aliases", "workflow_aliases") and len(loc) > 1:
        return (
            f"{naming.alias_variable(loc[1])}: must be a Lambda alias ARN, got {err.get('input')!r}"
        )
    variable = names.get(loc[0], loc[0]) if loc else cls.__name__
    kind, ctx = err["type"], err.get("ctx", {})
    if kind in ("int_parsing", "float_parsing", "int_from_float"):
        message = "must be a number"
    elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        field = cls.model_fields.get(next((n for n, v in names.items() if v == variable), ""))
        low = high = None
        for meta in field.metadata if field else ():
            low = getattr(meta, "ge", getattr(meta, "gt", low))
            high = getattr(meta, "le", getattr(meta, "lt", high))
        message = (
            f"must be between {low} and {high}"
            if low is not None and high is not None
            else err["msg"]
        )
    elif kind == "string_pattern_mismatch":
        message = _PATTERNS.get(str(ctx.get("pattern")), err["msg"])
    elif kind == "missing":
        message = "must be set"
    else:
        message = err["msg"].removeprefix("Value error, ")
    return f"{variable}: {message}, got {err.get('input')!r}"
