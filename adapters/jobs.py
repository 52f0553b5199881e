"""The jobs table: one item per durable execution, keyed by `job_id`.

Values go through boto3's TypeSerializer/TypeDeserializer, so a record comes back as written:
None is NULL (also inside lists and maps), a float is stored as the decimal it prints as, and a
number reads back as an int when it is whole, else as an exact Decimal (never a float).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from adapters.errors import code
from sluice import naming
from sluice.errors import BusinessError

TTL_ATTRIBUTE = naming.TTL_ATTRIBUTE
DEFAULT_TTL_DAYS = 400

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_item(values: Mapping[str, Any]) -> dict[str, Any]:
    """Attribute values of `values` (top-level None fields are left out: nothing to set)."""
    return {k: _serializer.serialize(_storable(v)) for k, v in values.items() if v is not None}


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _plain(_deserializer.deserialize(v)) for k, v in item.items()}


def _storable(value: Any) -> Any:
    """`value` with floats as the Decimal they print as (DynamoDB numbers are decimal)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BusinessError(f"cannot store {value} in the jobs table", code="bad_record")
        return Decimal(repr(value))
    if isinstance(value, Mapping):
        return {k: _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """Whole numbers as int (1E+2 is 100), the others as the exact Decimal read."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class JobsTable:
    """Claim, update and read job records in table `name` through a DynamoDB client."""

    def __init__(self, client: Any, name: str, *, ttl_days: int = DEFAULT_TTL_DAYS) -> None:
        self.client, self.name, self.ttl_days = client, name, ttl_days

    def claim(
        self, job_id: str, *, execution_arn: str, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Create the job record for this execution, unless another execution owns the job id.

        Returns {"claimed": True} for the owner (also on a retry of the same execution), else
        {"claimed": False, "owner": <its execution>, "status": <its status>}.
        """
        item = {
            "job_id": job_id,
            "execution_arn": execution_arn,
            "status": "RUNNING",
            "created_at": now_iso(),
            TTL_ATTRIBUTE: int(time.time()) + self.ttl_days * 86_400,
            **fields,
        }
        try:
            self.client.put_item(
                TableName=self.name,
                Item=to_item(item),
                ConditionExpression="attribute_not_exists(job_id) OR execution_arn = :me",
                ExpressionAttributeValues={":me": {"S": execution_arn}},
            )
        except ClientError as exc:
            if code(exc) != "ConditionalCheckFailedException":
                raise
            current = self.get(job_id) or {}
            return {
                "claimed": False,
                "owner": current.get("execution_arn"),
                "status": current.get("status"),
            }
        return {"claimed": True}

    def update(self, job_id: str, **fields: Any) -> None:
        """Set `fields` (and updated_at) on the job record, creating it if it is missing."""
        values = to_item({**fields, "updated_at": now_iso()})
        names = list(values)
        self.client.update_item(
            TableName=self.name,
            Key={"job_id": {"S": job_id}},
            UpdateExpression="SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(names))),
            ExpressionAttributeNames={f"#f{i}": k for i, k in enumerate(names)},
            ExpressionAttributeValues={f":v{i}": values[k] for i, k in enumerate(names)},
        )

    def get(self, job_id: str) -> dict[str, Any] | None:
        answer = self.client.get_item(
            TableName=self.name, Key={"job_id": {"S": job_id}}, ConsistentRead=True
        )
        item = answer.get("Item")
        return None if item is None else from_item(item)
