"""Render every per-environment setting as the README's configuration table (kept true by a test).

`python -m stacks.config_doc --write README.md` (`make docs`) rewrites the table between the
README's config-table markers; without arguments it prints the table.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from stacks.config import ENVIRONMENTS, FunctionConfig

BEGIN = "<!-- config-table:begin -->"
END = "<!-- config-table:end -->"

DOCS: Mapping[str, str] = {
    "region": "AWS region of both stacks",
    "account": "AWS account (None: the CLI's current account)",
    "retain_data": "RETAIN stateful resources on stack deletion (else DESTROY)",
    "termination_protection": "CloudFormation termination protection on both stacks",
    "account_concurrency_quota": "the account's Lambda concurrency quota; reservations must "
    "leave 100 of it unreserved (checked at synth)",
    "log_retention_days": "retention of every log group (Lambda, worker, flow logs default)",
    "compliance_packs": "cdk-nag packs run at synth; any finding fails synth",
    "events_queue": "events queue and its DLQ",
    "tasks_queue": "tasks queue (heavy steps) and its DLQ",
    "max_receive_count": "receives before a message moves to the DLQ",
    "visibility_timeout_s": "queue visibility timeout (>= worker.processing_timeout_s)",
    "retention_s": "how long the queue keeps a message",
    "dlq_retention_s": "how long the DLQ keeps a message (>= retention_s)",
    "customer_managed_key": "encrypt with the environment's KMS key (else SQS-managed SSE)",
    "network": "the worker's VPC",
    "max_azs": "availability zones used",
    "nat_gateways": "NAT gateways (1 in dev; one per AZ in prod)",
    "flow_log_retention_days": "VPC flow log retention",
    "worker": "Elastic Beanstalk worker environment and sqsd",
    "instance_type": "instance type",
    "min_instances": "auto scaling lower bound",
    "max_instances": "auto scaling upper bound",
    "platform_branch": "EB platform branch; each deploy that creates the environment takes its "
    "recommended version, managed updates keep it current",
    "http_path": "sqsd HttpPath the messages are POSTed to",
    "http_connections": "sqsd HttpConnections (concurrent POSTs per instance)",
    "processing_timeout_s": "sqsd InactivityTimeout: longest one POST may take",
    "error_visibility_timeout_s": "sqsd ErrorVisibilityTimeout: delay before a failed message returns",
    "backlog_per_instance": "target events backlog per instance for scaling",
    "tasks_concurrency": "heavy tasks run at once per instance",
    "max_body_bytes": "largest message body the worker accepts (else DLQ, reason oversize)",
    "workflows": "durable workflows and step handler Lambdas",
    "execution_timeout_days": "durable execution timeout",
    "retention_days": "durable execution history retention",
    "max_audio_seconds": "longest audio accepted (business error beyond)",
    "orchestrator": "workflow functions: memory / timeout / reserved concurrency",
    "steps": "step handler: memory / timeout / reserved concurrency",
    "broker": "Amazon MQ for RabbitMQ (None: no broker, cron.yaml drives periodic tasks)",
    "engine_version": "RabbitMQ engine version",
    "deployment_mode": "SINGLE_INSTANCE or CLUSTER_MULTI_AZ",
    "maintenance_day": "broker maintenance window: day (UTC)",
    "maintenance_time_utc": "broker maintenance window: start time HH:MM (UTC)",
    "admin_username": "broker admin user (its password is generated in Secrets Manager)",
    "memory_alarm_pct": "broker memory used as % of RabbitMQ's limit that alarms",
    "disk_free_alarm_ratio": "broker free disk as a multiple of RabbitMQ's limit that alarms",
    "provisioner": "deploy-time Lambda making the scheduler's broker user: memory / timeout / "
    "reserved concurrency",
    "scheduler_password_revision": "raise after a new password is put in the scheduler user's "
    "secret: the next deploy sets it on the broker",
    "alarms": "alarm e-mail and thresholds",
    "email": "address subscribed to the alarm topic",
    "queue_age_s": "events queue: oldest message age that alarms",
    "tasks_queue_age_s": "tasks queue: oldest message age that alarms",
    "failed_executions": "failed or timed-out durable executions per 5 min that alarm",
    "running_utilization_pct": "running durable executions as % of quota that alarms",
    "step_errors": "step handler errors per 5 min that alarm",
    "dispatch_failures": "worker 503 answers (could not start a workflow) per 5 min that alarm",
    "duration_pct_of_timeout": "step duration (p99) as % of its timeout that alarms",
}


def _fmt(value: Any) -> str:
    if isinstance(value, FunctionConfig):
        reserved = value.reserved_concurrency if value.reserved_concurrency else "none"
        return f"{value.memory_mb} MB / {value.timeout_s} s / {reserved}"
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "—"
    if value is None:
        return "—"
    return str(value)


def _flatten(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if dataclasses.is_dataclass(value) and not isinstance(value, FunctionConfig | type):
        for f in dataclasses.fields(value):
            yield from _flatten(getattr(value, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(value, Mapping):
        for key in sorted(value):
            yield from _flatten(value[key], f"{path}.{key}")
    else:
        yield path, value


def rows() -> list[tuple[str, str, list[str]]]:
    """(setting, description, value per environment) for every setting of any environment."""
    per_env = {name: dict(_flatten(cfg, "")) for name, cfg in ENVIRONMENTS.items()}
    per_env = {
        name: {k: v for k, v in values.items() if k != "name"} for name, values in per_env.items()
    }
    # A section may be None in one environment (e.g. broker): show it as one "—" row there.
    settings: list[str] = []
    for values in reversed(per_env.values()):  # prod, the most complete, sets the order
        settings.extend(k for k in values if k not in settings)
    out = []
    for setting in settings:
        leaf = setting.rsplit(".", 1)[-1]
        section = setting.split(".", 1)[0]
        doc = DOCS.get(leaf) if leaf in DOCS and leaf != section else DOCS.get(section)
        if setting.startswith("workflows.steps."):
            doc = DOCS["steps"]
        if doc is None:
            raise KeyError(f"stacks/config_doc.py: document the setting {setting!r} in DOCS")
        cells = []
        for values in per_env.values():
            if setting in values and values[setting] is None and setting in DOCS:
                cells.append("off")  # an optional section the environment leaves out
            elif setting in values:
                cells.append(_fmt(values[setting]))
            elif section in values:
                cells.append(_fmt(values[section]))
            else:
                cells.append("on")
        out.append((setting, doc, cells))
    return out


def table() -> str:
    envs = list(ENVIRONMENTS)
    lines = [
        "| setting | meaning | " + " | ".join(envs) + " |",
        "|---|---|" + "---|" * len(envs),
    ]
    for setting, doc, cells in rows():
        lines.append(f"| `{setting}` | {doc} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(path: Path) -> None:
    """Replace the table between `path`'s config-table markers with the current one."""
    text = path.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    path.write_text(text[:start] + "\n" + table() + "\n" + text[end:])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        write(Path(sys.argv[2]))
    else:
        print(table())
