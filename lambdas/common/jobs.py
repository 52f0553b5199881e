"""The job record in the jobs table: one item per durable execution, keyed by `job_id`."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from lambdas.common.runtime import clients, env

TTL_ATTRIBUTE = "expires_at"
DEFAULT_TTL_DAYS = 400


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table() -> Any:
    return clients("dynamodb"), env("JOBS_TABLE")


def _ttl() -> int:
    days = int(os.environ.get("JOB_TTL_DAYS", DEFAULT_TTL_DAYS))
    return int(time.time()) + days * 86_400


def _attr(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return {"N": repr(value) if isinstance(value, float) else str(value)}
    if isinstance(value, Mapping):
        return {"M": {k: _attr(v) for k, v in value.items() if v is not None}}
    if isinstance(value, list | tuple):
        return {"L": [_attr(v) for v in value]}
    return {"S": str(value)}


def _plain(attr: Mapping[str, Any]) -> Any:
    (kind, value), *_ = attr.items()
    if kind == "N":
        return float(value) if "." in value or "e" in value.lower() else int(value)
    if kind == "M":
        return {k: _plain(v) for k, v in value.items()}
    if kind == "L":
        return [_plain(v) for v in value]
    return value


def claim(job_id: str, *, execution_arn: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Create the job record for this execution, unless another execution owns the job id.

    Returns {"claimed": True} for the owner (also on a retry of the same execution), else
    {"claimed": False, "owner": <its execution>, "status": <its status>}.
    """
    ddb, table = _table()
    item = {
        "job_id": job_id,
        "execution_arn": execution_arn,
        "status": "RUNNING",
        "created_at": now_iso(),
        TTL_ATTRIBUTE: _ttl(),
        **fields,
    }
    try:
        ddb.put_item(
            TableName=table,
            Item={k: _attr(v) for k, v in item.items() if v is not None},
            ConditionExpression="attribute_not_exists(job_id) OR execution_arn = :me",
            ExpressionAttributeValues={":me": {"S": execution_arn}},
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        current = get(job_id) or {}
        return {
            "claimed": False,
            "owner": current.get("execution_arn"),
            "status": current.get("status"),
        }
    return {"claimed": True}


def update(job_id: str, **fields: Any) -> None:
    """Set `fields` (and updated_at) on the job record, creating it if it is missing."""
    ddb, table = _table()
    fields = {k: v for k, v in fields.items() if v is not None}
    fields["updated_at"] = now_iso()
    names = {f"#f{i}": k for i, k in enumerate(fields)}
    values = {f":v{i}": _attr(v) for i, v in enumerate(fields.values())}
    ddb.update_item(
        TableName=table,
        Key={"job_id": {"S": job_id}},
        UpdateExpression="SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields))),
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
    )


def get(job_id: str) -> dict[str, Any] | None:
    ddb, table = _table()
    item = ddb.get_item(TableName=table, Key={"job_id": {"S": job_id}}, ConsistentRead=True)
    raw = item.get("Item")
    return None if raw is None else {k: _plain(v) for k, v in raw.items()}
