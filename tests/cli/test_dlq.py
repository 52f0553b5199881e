"""`sluice dlq peek|redrive|purge`: look without consuming, send back without losing, purge only
when told twice."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import boto3
import click
import pytest
from botocore.stub import Stubber

from sluice_cli.dlq import copy_back, move_task
from tests.cli.conftest import REGION, Sqs

SOURCE_ARN = "arn:aws:sqs:eu-west-1:123456789012:Sluice-test-events"
DLQ_ARN = "arn:aws:sqs:eu-west-1:123456789012:Sluice-test-events-dlq"


def fill(sqs: Sqs, n: int, queue: str = "events-dlq") -> list[str]:
    bodies = [json.dumps({"n": i}) for i in range(n)]
    for body in bodies:
        sqs.send(queue, body, reason="schema_violation", detail="data must be a JSON object")
    return bodies


# -- peek -----------------------------------------------------------------------------------------


def test_peek_shows_messages_with_their_reason(sqs: Sqs, run) -> None:
    fill(sqs, 3)
    result = run("dlq", "peek", "--queue", "events")
    assert result.exit_code == 0, result.output
    assert "3 message(s) in Sluice-test-events-dlq (none consumed)" in result.output
    assert result.output.count("reason   schema_violation") == 3
    assert 'body     {"n": 0}' in result.output


def test_peek_consumes_nothing(sqs: Sqs, run) -> None:
    # Given 12 messages in the DLQ (more than one receive batch)
    fill(sqs, 12)
    # When an operator peeks at all of them
    result = run("dlq", "peek", "--queue", "events", "--max", "50")
    # Then every one is visible again at once, none deleted
    assert result.exit_code == 0, result.output
    assert "12 message(s)" in result.output
    assert sqs.visible("events-dlq") == 12


def test_peek_as_json_gives_one_document_per_message(sqs: Sqs, run) -> None:
    fill(sqs, 2, queue="tasks-dlq")
    result = run("dlq", "peek", "--queue", "tasks", "--json")
    docs = [json.loads(line) for line in result.output.splitlines()]
    assert sorted(d["body"] for d in docs) == ['{"n": 0}', '{"n": 1}']
    assert {d["reason"] for d in docs} == {"schema_violation"}


def test_peek_of_an_empty_dlq_says_so(sqs: Sqs, run) -> None:
    result = run("dlq", "peek", "--queue", "events")
    assert result.exit_code == 0
    assert "0 message(s)" in result.output


def test_unknown_queue_choice_is_refused(sqs: Sqs, run) -> None:
    result = run("dlq", "peek", "--queue", "orders")
    assert result.exit_code == 2
    assert "'orders' is not one of 'events', 'tasks'" in result.output


# -- redrive --------------------------------------------------------------------------------------


def test_redrive_moves_every_message_back_with_its_attributes(sqs: Sqs, run) -> None:
    # Given 23 messages in the events DLQ (moto has no message move tasks: redrive copies)
    bodies = fill(sqs, 23)
    # When an operator redrives them and confirms
    result = run("dlq", "redrive", "--queue", "events", input="y\n")
    # Then all are on the events queue, attributes kept, and the DLQ is empty
    assert result.exit_code == 0, result.output
    assert "moved 23 message(s) to Sluice-test-events (copy)" in result.output
    moved = sqs.drain("events")
    assert sorted(m["Body"] for m in moved) == sorted(bodies)
    assert {m["MessageAttributes"]["reason"]["StringValue"] for m in moved} == {"schema_violation"}
    assert sqs.count("events-dlq") == 0


def test_declined_redrive_moves_nothing(sqs: Sqs, run) -> None:
    fill(sqs, 3)
    result = run("dlq", "redrive", "--queue", "events", input="n\n")
    assert result.exit_code == 1
    assert "Aborted" in result.output
    assert sqs.count("events-dlq") == 3 and sqs.count("events") == 0


def test_redrive_max_moves_only_that_many(sqs: Sqs, run) -> None:
    fill(sqs, 8)
    result = run("dlq", "redrive", "--queue", "events", "--max", "5", "--yes")
    assert result.exit_code == 0, result.output
    assert sqs.count("events") == 5
    assert sqs.count("events-dlq") == 3


def test_redrive_of_an_empty_dlq_does_nothing(sqs: Sqs, run) -> None:
    result = run("dlq", "redrive", "--queue", "tasks", "--yes")
    assert result.exit_code == 0
    assert "Sluice-test-tasks-dlq is empty" in result.output


def test_move_task_required_but_missing_is_a_clear_error(sqs: Sqs, run) -> None:
    fill(sqs, 2)
    result = run("dlq", "redrive", "--queue", "events", "--method", "move-task", "--yes")
    assert result.exit_code == 1
    assert "has no SQS message move tasks" in result.output and "--method copy" in result.output
    assert sqs.count("events-dlq") == 2


class FailingSends:
    """moto's SQS, except that SQS refuses the send of every message whose body is in `refuse`."""

    def __init__(self, client: Any, refuse: set[str]) -> None:
        self.client = client
        self.refuse = refuse

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [e for e in Entries if e["MessageBody"] not in self.refuse]
        answer = self.client.send_message_batch(QueueUrl=QueueUrl, Entries=ok) if ok else {}
        failed = [
            {"Id": e["Id"], "Code": "InternalError", "Message": "try later", "SenderFault": False}
            for e in Entries
            if e["MessageBody"] in self.refuse
        ]
        return {"Successful": answer.get("Successful", []), "Failed": failed}


def test_copy_never_deletes_a_message_it_could_not_send(sqs: Sqs) -> None:
    # Given 5 DLQ messages, and SQS refusing to take two of them back
    bodies = fill(sqs, 5)
    refused = {bodies[1], bodies[3]}
    # When the copy fallback runs
    result = copy_back(
        FailingSends(sqs.client, refused),
        dlq_url=sqs.urls["events-dlq"],
        source_url=sqs.urls["events"],
        limit=None,
        hold_s=30,
        progress=lambda done, total: None,
    )
    # Then three moved, the two refused are reported and are still in the DLQ
    assert result.moved == 3 and len(result.failures) == 2
    assert sorted(m["Body"] for m in sqs.drain("events")) == sorted(set(bodies) - refused)
    assert sqs.count("events-dlq") == 2


def _task(status: str, moved: int, **extra: Any) -> dict[str, Any]:
    return {
        "Status": status,
        "SourceArn": DLQ_ARN,
        "DestinationArn": SOURCE_ARN,
        "ApproximateNumberOfMessagesMoved": moved,
        "ApproximateNumberOfMessagesToMove": 40,
        "StartedTimestamp": int(datetime.now(UTC).timestamp() * 1000),
        **extra,
    }


def test_move_task_runs_and_reports_progress_until_completed() -> None:
    # Given an SQS endpoint that has message move tasks (stubbed with its real API shapes)
    client = boto3.client("sqs", region_name=REGION)
    stub = Stubber(client)
    stub.add_response(
        "start_message_move_task",
        {"TaskHandle": "h-1"},
        {"SourceArn": DLQ_ARN, "DestinationArn": SOURCE_ARN, "MaxNumberOfMessagesPerSecond": 50},
    )
    for status, moved in (("RUNNING", 0), ("RUNNING", 25)):
        stub.add_response(
            "list_message_move_tasks",
            {"Results": [_task(status, moved, TaskHandle="h-1")]},
            {"SourceArn": DLQ_ARN, "MaxResults": 10},
        )
    stub.add_response(
        "list_message_move_tasks",
        {"Results": [_task("COMPLETED", 40)]},
        {"SourceArn": DLQ_ARN, "MaxResults": 10},
    )
    seen: list[tuple[int, int]] = []
    # When redrive uses it
    with stub:
        result = move_task(
            client,
            dlq_arn=DLQ_ARN,
            source_arn=SOURCE_ARN,
            rate=50,
            progress=lambda done, total: seen.append((done, total)),
            poll_s=0,
        )
    # Then it reports progress as SQS does and ends with the task's count
    assert seen == [(0, 40), (25, 40), (40, 40)]
    assert (result.moved, result.method) == (40, "move-task")
    stub.assert_no_pending_responses()


def test_failed_move_task_says_why_and_that_the_rest_stayed() -> None:
    client = boto3.client("sqs", region_name=REGION)
    stub = Stubber(client)
    stub.add_response("start_message_move_task", {"TaskHandle": "h-2"})
    stub.add_response(
        "list_message_move_tasks",
        {"Results": [_task("FAILED", 7, FailureReason="AWS.SimpleQueueService.NonExistentQueue")]},
    )
    with (
        stub,
        pytest.raises(
            click.ClickException, match=r"ended FAILED after 7.*NonExistentQueue.*still in"
        ),
    ):
        move_task(
            client, dlq_arn=DLQ_ARN, source_arn=SOURCE_ARN, rate=None, progress=lambda *_: None
        )


# -- purge ----------------------------------------------------------------------------------------


def test_purge_without_yes_refuses_and_deletes_nothing(sqs: Sqs, run) -> None:
    fill(sqs, 4)
    result = run("dlq", "purge", "--queue", "events")
    assert result.exit_code == 2
    assert "deletes all 4 message(s) of Sluice-test-events-dlq" in result.output
    assert "--yes" in result.output
    assert sqs.count("events-dlq") == 4


def test_purge_with_yes_empties_the_dlq_only(sqs: Sqs, run) -> None:
    fill(sqs, 4)
    fill(sqs, 1, queue="events")
    result = run("dlq", "purge", "--queue", "events", "--yes")
    assert result.exit_code == 0, result.output
    assert "purging 4 message(s) from Sluice-test-events-dlq" in result.output
    assert sqs.count("events-dlq") == 0
    assert sqs.count("events") == 1
