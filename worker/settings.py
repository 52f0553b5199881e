"""The worker's settings: environment variables parsed once into a typed, validated object."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sluice import naming
from sluice.envelope import MAX_BODY_BYTES

# The environment variables the EB environment sets (stacks/worker_env.py writes the same names).
ENV_NAME = "SLUICE_ENV"
EVENTS_DLQ_URL = "SLUICE_EVENTS_DLQ_URL"
MAX_BODY = "SLUICE_MAX_BODY_BYTES"
HTTP_PATH = "SLUICE_HTTP_PATH"
METRICS_NAMESPACE = "SLUICE_METRICS_NAMESPACE"
INVOKE_TIMEOUT = "SLUICE_INVOKE_TIMEOUT_S"
PUBLISH_METRICS_S = "SLUICE_PUBLISH_METRICS_S"
CLAIM_CHECK_BUCKET = "SLUICE_CLAIM_CHECK_BUCKET"
# SQS's own ceiling on a message: nothing larger can come from sqsd, nothing larger fits the DLQ.
SQS_MAX_MESSAGE_BYTES = 1024 * 1024


class SettingsError(ValueError):
    """An environment variable is missing or impossible; the message names it."""


# The CloudWatch namespace of the worker's EMF metrics (the alarms read it too).
WORKER_METRICS = "Sluice/Worker"


@dataclass(frozen=True)
class Settings:
    """What the web process needs to know, read once at start-up."""

    env: str
    # Workflow name -> the ARN of its `live` alias (durable functions are invoked only qualified).
    workflow_aliases: Mapping[str, str]
    events_dlq_url: str
    max_body_bytes: int = MAX_BODY_BYTES
    http_path: str = "/"
    metrics_namespace: str = WORKER_METRICS
    # Connect + read budget of one Invoke; kept far below sqsd's InactivityTimeout.
    invoke_timeout_s: float = 10.0
    # Seconds between PutMetricData flushes of the aggregated counts; 0 = only the EMF log lines.
    publish_metrics_s: float = 0.0
    # The media bucket, where a dead letter too large for the DLQ is kept (under
    # catalog.DEAD_LETTER_PREFIX) while the DLQ gets a pointer. Empty: such a dead letter goes to
    # the DLQ truncated, with a `body_truncated` attribute.
    claim_check_bucket: str = ""
    extra: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not self.env:
            raise SettingsError(f"{ENV_NAME}: must name the environment")
        if not self.events_dlq_url.startswith(("https://", "http://")):
            raise SettingsError(
                f"{EVENTS_DLQ_URL}: must be the events DLQ's URL, got {self.events_dlq_url!r}"
            )
        if not 1024 <= self.max_body_bytes <= SQS_MAX_MESSAGE_BYTES:
            raise SettingsError(
                f"{MAX_BODY}: must be between 1024 and {SQS_MAX_MESSAGE_BYTES}, "
                f"got {self.max_body_bytes}"
            )
        if not self.http_path.startswith("/"):
            raise SettingsError(f"{HTTP_PATH}: must start with '/', got {self.http_path!r}")
        if self.http_path == "/health":
            raise SettingsError(f"{HTTP_PATH}: /health is the health check, not the sqsd path")
        for name, arn in self.workflow_aliases.items():
            if not (isinstance(arn, str) and arn.startswith("arn:") and ":function:" in arn):
                raise SettingsError(
                    f"{naming.alias_variable(name)}: must be a Lambda alias ARN, got {arn!r}"
                )
        if not (self.publish_metrics_s == 0 or 10 <= self.publish_metrics_s <= 300):
            raise SettingsError(
                f"{PUBLISH_METRICS_S}: must be 0 (off) or 10..300 s, got {self.publish_metrics_s}"
            )
        if not 0 < self.invoke_timeout_s <= 60:
            raise SettingsError(
                f"{INVOKE_TIMEOUT}: must be in (0, 60] s, got {self.invoke_timeout_s}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            env=env.get(ENV_NAME, ""),
            workflow_aliases=MappingProxyType(naming.aliases_from(env)),
            events_dlq_url=env.get(EVENTS_DLQ_URL, ""),
            max_body_bytes=_number(env, MAX_BODY, MAX_BODY_BYTES, int),
            http_path=env.get(HTTP_PATH, "/"),
            metrics_namespace=env.get(METRICS_NAMESPACE, WORKER_METRICS),
            invoke_timeout_s=_number(env, INVOKE_TIMEOUT, 10.0, float),
            publish_metrics_s=_number(env, PUBLISH_METRICS_S, 0.0, float),
            claim_check_bucket=env.get(CLAIM_CHECK_BUCKET, ""),
        )


def _number(env: Mapping[str, str], name: str, default: Any, kind: Callable[[str], Any]) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{name}: must be a number, got {raw!r}") from None
