"""The worker's lean DynamoDB client (worker/invoke.py `DynamoDB`) answers flow control's calls
exactly as boto3's client does: the same items, the same condition failures (with the item and
the cancellation reasons), against moto's server; and it signs as botocore does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from adapters.flow import FlowStore
from devtools.moto_server import moto_server
from sluice.flowstate import Waiter, partition
from tests.lambdas.conftest import REGION, create_coordination_table
from worker.invoke import DynamoDB
from worker.scheduler.ledger import Claim, Claimed, TableLedger

CREDS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


def story(client: Any, table: str) -> list[Any]:
    """Every call flow control makes, with their outcomes, in one sequence."""
    clock = 1_800_000_000.0
    store = FlowStore(client, table, clock=lambda: clock)
    pk = partition("wf", "throttle", "c1")
    out: list[Any] = [
        store.claim(partition("wf", "idempotency", "k"), "e1", key="k", window_s=60),
        store.claim(partition("wf", "idempotency", "k"), "e2", key="k", window_s=60),
        store.claim(partition("wf", "idempotency", "k"), "e1", key="k", window_s=60),
    ]
    for event in ("e1", "e2", "e3", "e1"):
        out.append(
            store.admit(pk, event, limit=2, window_start=1000, period_s=60, unless_waiting=True)
        )
    waiter = Waiter(pk, "wf", "c1", "e3", '{"id": "e3"}', 4, 1_800_000_000_000)
    store.hold(waiter)
    store.hold(waiter)  # a redelivery: counted once
    out.append(store.read(pk))
    out.append(store.held(pk))
    out.append(store.admit(pk, "e4", limit=5, window_start=1000, period_s=60, unless_waiting=True))
    store.release(waiter)
    store.release(waiter)
    out.append(store.read(pk))
    store.woken(pk, 1060)
    out.append(store.read(pk))
    dpk = partition("wf", "debounce", "c1")
    latest = Waiter(dpk, "wf", "c1", "d2", '{"id": "d2"}', 0, 1_800_000_001_000)
    out.append(
        store.note(
            Waiter(dpk, "wf", "c1", "d1", "{}", 0, 1_800_000_000_000),
            ts="2026-12-02T08:00:00Z",
            now_ms=1_800_000_000_000,
        )
    )
    out.append(store.note(latest, ts="2026-12-02T08:00:02Z", now_ms=1_800_000_001_000))
    out.append(store.note(latest, ts="2026-12-02T08:00:01Z", now_ms=1_800_000_002_000))
    found, _ = store.debounced(dpk)
    out.append(found)
    out.append(store.close(latest, 1))  # something arrived since: not closed
    assert found is not None
    out.append(store.close(found[0], found[1]))
    out.append(store.debounced(dpk))
    store.started(found[0])
    out.append(store.debounced(dpk))
    bpk = partition("wf", "batch", "c1")
    members = [Waiter(bpk, "wf", "c1", f"b{n}", "{}", 0, 1_800_000_000_000 + n) for n in range(3)]
    out.extend(store.join(m, size=2) for m in members)
    out.append(store.join(members[0], size=2))
    found = store.batches(bpk)
    out.append((found.open, found.done, sorted(found.members)))
    assert found.open is not None
    out.append(store.close_batch(bpk, found.open[0], found.open[2]))
    out.append(store.close_batch(bpk, found.open[0], found.open[2]))
    store.forget_batch(bpk, found.open[0], found.open[2])
    out.append(store.join(members[1], size=2))  # a started member joins no other batch
    found = store.batches(bpk)
    out.append((found.open, found.done, sorted(found.members)))
    try:
        client.update_item(
            TableName=table,
            Key={"pk": {"S": pk}, "sk": {"S": "window"}},
            UpdateExpression="SET x = :x",
            ConditionExpression="attribute_not_exists(pk)",
            ExpressionAttributeValues={":x": {"S": "y"}},
        )
    except ClientError as exc:
        out.append(exc.response["Error"]["Code"])
    return out


@pytest.fixture
def clients(endpoint: str) -> tuple[Any, DynamoDB]:
    """boto3's DynamoDB client and the lean one, both on moto's server."""
    boto = boto3.client(
        "dynamodb",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="k",
        aws_secret_access_key="s",
    )
    return boto, DynamoDB(region=REGION, credentials=CREDS, endpoint_url=endpoint)


def test_the_lean_client_and_boto3_see_the_same_story(clients, monkeypatch):
    boto, lean = clients
    create_coordination_table(boto, "boto3-table")
    create_coordination_table(boto, "lean-table")
    expected = story(boto, "boto3-table")
    assert story(lean, "lean-table") == expected
    assert expected[:3] == [None, "e1", None]
    assert expected[3:7] == [True, True, False, True]
    held = expected[7]
    assert (held.window_start, held.admitted, held.waiting) == (1000, frozenset({"e1", "e2"}), 1)
    assert [w.event_id for w in expected[8]] == ["e3"]
    assert expected[9] is False  # an event waits: a newcomer does not pass it
    assert expected[10].waiting == 0
    assert expected[11].wake_due == 1060
    assert expected[12:15] == [1_800_000_000_000, 1_800_000_000_000, None]
    found, last_ms = expected[15]
    assert (found.event_id, found.arrival_ms, last_ms) == (
        "d2",
        1_800_000_000_000,
        1_800_000_001_000,
    )
    assert expected[16:18] == [False, True]
    assert expected[18][0] is None and [w.event_id for w in expected[18][1]] == ["d2"]
    assert expected[19] == (None, [])
    assert expected[20:24] == ["joined", "joined", "full", "already"]
    assert expected[24] == (
        ("b0", 1_800_000_000_000, frozenset({"b0", "b1"})),
        [],
        ["b0", "b1"],
    )
    assert expected[25:28] == [True, False, "already"]
    assert expected[28] == (None, [], [])
    assert expected[29] == "ConditionalCheckFailedException"


def test_the_lean_client_signs_as_botocore_does():
    client = DynamoDB(region=REGION, credentials=CREDS)
    headers = {
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": "DynamoDB_20120810.UpdateItem",
    }
    payload = b'{"TableName": "t"}'
    ours = client.sign("/", headers, payload, "20261202T080000Z")
    request = AWSRequest(
        method="POST",
        url=f"https://dynamodb.{REGION}.amazonaws.com/",
        data=payload,
        headers={
            **headers,
            "X-Amz-Date": "20261202T080000Z",
            "X-Amz-Security-Token": "session-token",
        },
    )
    request.context["timestamp"] = "20261202T080000Z"
    auth = SigV4Auth(CREDS, "dynamodb", REGION)
    expected = auth.signature(
        auth.string_to_sign(request, auth.canonical_request(request)), request
    )
    assert ours["Authorization"].endswith(f"Signature={expected}")
    assert f"/{REGION}/dynamodb/aws4_request" in ours["Authorization"]


def ledger_story(ledger: TableLedger) -> list[Any]:
    """The tick ledger's calls (worker/scheduler/ledger.py), each rule of it once."""
    return [
        ledger.read("t"),  # nothing claimed yet
        ledger.claim("t", 1000, 1000, 1000, "a"),
        ledger.claim("t", 1200, 1500, 1000, "b"),  # a live claim excludes a later tick
        ledger.renew("t", 1, 3000),
        ledger.renew("t", 2, 3000),  # not its fence
        ledger.finish("t", 1, "retry"),
        ledger.claim("t", 1000, 1600, 1000, "a"),  # a retry re-claims its own tick
        ledger.finish("t", 2, "done"),
        ledger.finish("t", 2, "done"),  # finished already
        ledger.claim("t", 1000, 9000, 1000, "b"),  # never the same tick again
        ledger.claim("t", 2200, 9000, 1000, "b"),
        ledger.read("t"),
    ]


def test_the_tick_ledger_sees_the_same_through_the_lean_client_and_boto3(clients) -> None:
    boto, lean = clients
    create_coordination_table(boto, "ledger-boto3")
    create_coordination_table(boto, "ledger-lean")
    expected = ledger_story(TableLedger(boto, "ledger-boto3", "p"))
    assert ledger_story(TableLedger(lean, "ledger-lean", "p")) == expected
    assert expected[0] is None
    assert expected[1] == Claimed(1, None)
    assert expected[2:6] == [None, True, False, True]
    assert expected[6] == Claimed(2, Claim(1000, 1, 3000, "retry", "a"))
    assert expected[7:10] == [True, False, None]
    assert expected[10] == Claimed(3, Claim(1000, 2, 2600, "done", "a"))
    assert expected[11] == Claim(2200, 3, 10_000, "running", "b")
