"""The jobs table (moto's DynamoDB): a record comes back as it was written."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from adapters.jobs import JobsTable
from sluice.errors import BusinessError


@pytest.fixture
def jobs(aws) -> JobsTable:
    return JobsTable(aws.ddb, aws.table, ttl_days=2)


def test_numbers_come_back_exact_never_as_floats(jobs):
    # Given numbers of every kind a step records (a float duration, an int count, a Decimal)
    jobs.update("job-n", duration_s=12.345, word_count=3, ratio=Decimal("0.1"), big=10**20)
    # When the record is read back
    record = jobs.get("job-n")
    # Then integers are int, the others Decimal equal to what was written: no float anywhere
    assert record is not None
    assert (record["word_count"], record["big"]) == (3, 10**20)
    assert type(record["word_count"]) is int
    assert (record["duration_s"], record["ratio"]) == (Decimal("12.345"), Decimal("0.1"))
    assert not [k for k, v in record.items() if isinstance(v, float)]


def test_an_integral_number_in_exponent_form_comes_back_as_an_int(aws, jobs):
    # Given a number another writer stored in exponent form (DynamoDB keeps what it is given)
    aws.ddb.put_item(TableName=aws.table, Item={"job_id": {"S": "job-e"}, "polls": {"N": "1E+2"}})
    # When read, Then it is the integer 100, not the float 100.0
    record = jobs.get("job-e")
    assert record is not None and record["polls"] == 100 and type(record["polls"]) is int


def test_none_inside_lists_and_maps_stays_none(jobs):
    # Given None inside a list and inside a map
    jobs.update("job-l", tags=["a", None, 3], error={"step": "x", "detail": None})
    # When read, Then None is None, not the string "None", and the map keeps its key
    record = jobs.get("job-l")
    assert record is not None
    assert record["tags"] == ["a", None, 3]
    assert record["error"] == {"step": "x", "detail": None}


def test_a_top_level_none_sets_nothing(jobs):
    jobs.update("job-t", status="RUNNING", language="en-US")
    jobs.update("job-t", status="COMPLETED", language=None)
    record = jobs.get("job-t")
    assert record is not None and (record["status"], record["language"]) == ("COMPLETED", "en-US")


def test_a_number_dynamodb_cannot_hold_is_a_business_error(jobs):
    with pytest.raises(BusinessError) as err:
        jobs.update("job-x", ratio=float("nan"))
    assert err.value.code == "bad_record"


def test_the_first_execution_owns_the_job_and_its_record_expires(jobs):
    assert jobs.claim("job-4", execution_arn="arn:a", fields={"n": 1}) == {"claimed": True}
    assert jobs.claim("job-4", execution_arn="arn:a", fields={}) == {"claimed": True}
    other = jobs.claim("job-4", execution_arn="arn:b", fields={})
    assert other == {"claimed": False, "owner": "arn:a", "status": "RUNNING"}
    record = jobs.get("job-4")
    assert record is not None
    assert 2 * 86_400 - 60 < record["expires_at"] - time.time() <= 2 * 86_400


def test_an_unknown_job_is_none(jobs):
    assert jobs.get("nope") is None
