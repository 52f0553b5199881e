"""`sluice dlq peek|redrive|purge`: look at a dead-letter queue, send it back, or empty it.

No command here loses a message by accident: peek hands every message back at once, redrive
sends a copy before it deletes the original (or lets SQS's own move task do it), and purge runs
only with `--yes`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click
from botocore.exceptions import ClientError

from sluice_cli.aws import QUEUES, Aws, friendly_errors

BATCH = 10  # SQS's most messages per receive / send batch / delete batch
# How SQS (or an emulator) says it has no message move tasks: then redrive copies by itself.
UNSUPPORTED_CODES = frozenset(
    {
        "NotImplemented",
        "InvalidAction",
        "UnsupportedOperation",
        "AWS.SimpleQueueService.UnsupportedOperation",
        "UnknownOperationException",
        "404",
        "501",
    }
)
MOVE_DONE = {"COMPLETED"}
MOVE_FAILED = {"FAILED", "CANCELLING", "CANCELLED"}


def queue_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--queue",
        "queue",
        type=click.Choice(QUEUES),
        required=True,
        help="Which DLQ: the events queue's or the tasks queue's.",
    )(fn)


@click.group()
def dlq() -> None:
    """Look at, redrive or purge a dead-letter queue."""


# -- peek -----------------------------------------------------------------------------------------


def receive(sqs: Any, url: str, count: int, *, hold_s: int) -> list[dict[str, Any]]:
    """Up to `count` messages of `url` with all their attributes, hidden for `hold_s`; no wait."""
    got: list[dict[str, Any]] = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=count,
        VisibilityTimeout=hold_s,
        WaitTimeSeconds=0,
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
    ).get("Messages", [])
    return got


def peek_messages(sqs: Any, url: str, *, limit: int, hold_s: int) -> list[dict[str, Any]]:
    """Up to `limit` messages of `url`, each made visible again before this returns.

    Messages are held invisible for at most `hold_s` while they are read (so one is not read
    twice), then released at once; a crash in between only delays them by `hold_s`.
    """
    seen: dict[str, dict[str, Any]] = {}
    handles: list[str] = []
    try:
        empty = 0
        while len(seen) < limit and empty < 2:
            got = receive(sqs, url, min(BATCH, limit - len(seen)), hold_s=hold_s)
            empty = empty + 1 if not got else 0
            for message in got:
                handles.append(message["ReceiptHandle"])
                seen.setdefault(message["MessageId"], message)
    finally:
        release(sqs, url, handles)
    return list(seen.values())


def release(sqs: Any, url: str, handles: list[str]) -> None:
    """Make received messages visible again now (visibility timeout 0)."""
    for start in range(0, len(handles), BATCH):
        chunk = handles[start : start + BATCH]
        sqs.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
                for i, h in enumerate(chunk)
            ],
        )


def _attribute(message: dict[str, Any], name: str) -> str:
    value = message.get("MessageAttributes", {}).get(name, {})
    return str(value.get("StringValue", ""))


def _sent_at(message: dict[str, Any]) -> str:
    raw = message.get("Attributes", {}).get("SentTimestamp")
    if not raw:
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(raw) / 1000))


@dlq.command()
@queue_option
@click.option("--max", "limit", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--hold",
    "hold_s",
    default=30,
    show_default=True,
    type=click.IntRange(1, 43200),
    help="Seconds the messages stay hidden at most if peek is killed mid-way.",
)
@click.option("--full", is_flag=True, help="Print whole bodies (else the first 200 characters).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document per message.")
@click.pass_obj
@friendly_errors
def peek(aws: Aws, queue: str, limit: int, hold_s: int, full: bool, as_json: bool) -> None:
    """Show messages of the DLQ without consuming them (they are released at once)."""
    url = aws.queue_url(queue, dlq=True)
    messages = peek_messages(aws.client("sqs"), url, limit=limit, hold_s=hold_s)
    if as_json:
        for m in messages:
            click.echo(
                json.dumps(
                    {
                        "message_id": m["MessageId"],
                        "receive_count": int(
                            m.get("Attributes", {}).get("ApproximateReceiveCount", 0)
                        ),
                        "sent_at": _sent_at(m),
                        "reason": _attribute(m, "reason") or None,
                        "detail": _attribute(m, "detail") or None,
                        "body": m["Body"],
                    },
                    sort_keys=True,
                )
            )
        return
    click.echo(f"{len(messages)} message(s) in {url.rsplit('/', 1)[-1]} (none consumed)")
    for m in messages:
        body = m["Body"] if full or len(m["Body"]) <= 200 else m["Body"][:200] + "…"
        reason = _attribute(m, "reason") or "(none: moved by the redrive policy after retries)"
        click.echo("")
        click.echo(f"message  {m['MessageId']}")
        click.echo(f"sent     {_sent_at(m)}")
        click.echo(f"receives {m.get('Attributes', {}).get('ApproximateReceiveCount', '?')}")
        click.echo(f"reason   {reason}")
        if _attribute(m, "detail"):
            click.echo(f"detail   {_attribute(m, 'detail')}")
        click.echo(f"body     {body}")


# -- redrive --------------------------------------------------------------------------------------


@dataclass
class Moved:
    """What a redrive did: moved messages, and any it could not move (still in the DLQ)."""

    moved: int = 0
    method: str = ""
    failures: list[str] = field(default_factory=list)


def _unsupported(exc: Exception) -> bool:
    if isinstance(exc, NotImplementedError):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return (
            str(error.get("Code")) in UNSUPPORTED_CODES
            or status in (404, 501)
            or "not been implemented" in str(error.get("Message", "")).lower()
            or "not yet implemented" in str(error.get("Message", "")).lower()
        )
    return False


def move_task(
    sqs: Any,
    *,
    dlq_arn: str,
    source_arn: str,
    rate: int | None,
    progress: Callable[[int, int], None],
    poll_s: float = 2.0,
) -> Moved:
    """SQS's message move task from the DLQ to its source; reports (moved, to_move) as it goes.

    Raises NotImplementedError when the endpoint has no move tasks (then copy instead).
    """
    args: dict[str, Any] = {"SourceArn": dlq_arn, "DestinationArn": source_arn}
    if rate:
        args["MaxNumberOfMessagesPerSecond"] = rate
    try:
        handle = sqs.start_message_move_task(**args)["TaskHandle"]
    except Exception as exc:
        if _unsupported(exc):
            raise NotImplementedError(str(exc)) from exc
        raise
    while True:
        tasks = sqs.list_message_move_tasks(SourceArn=dlq_arn, MaxResults=10).get("Results", [])
        # Only a running task carries its handle; the newest entry is ours once it has ended.
        ours = [t for t in tasks if t.get("TaskHandle") == handle] or tasks[:1]
        if not ours:
            raise click.ClickException(f"the message move task {handle} disappeared")
        task = ours[0]
        moved = int(task.get("ApproximateNumberOfMessagesMoved", 0))
        progress(moved, int(task.get("ApproximateNumberOfMessagesToMove", moved)))
        status = task.get("Status")
        if status in MOVE_DONE:
            return Moved(moved=moved, method="move-task")
        if status in MOVE_FAILED:
            reason = task.get("FailureReason") or status
            raise click.ClickException(
                f"the message move task ended {status} after {moved} message(s): {reason}; "
                "the rest are still in the DLQ"
            )
        time.sleep(poll_s)


def _attributes_to_send(message: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in message.get("MessageAttributes", {}).items():
        kept = {"DataType": value["DataType"]}
        for key in ("StringValue", "BinaryValue"):
            if key in value:
                kept[key] = value[key]
        out[name] = kept
    return out


def copy_back(
    sqs: Any,
    *,
    dlq_url: str,
    source_url: str,
    limit: int | None,
    hold_s: int,
    progress: Callable[[int, int], None],
) -> Moved:
    """Receive from the DLQ, send to the source, and only then delete from the DLQ.

    A message whose send fails stays in the DLQ (hidden for `hold_s`, then visible again); a
    crash between send and delete leaves a duplicate, which the event id makes harmless.
    """
    result = Moved(method="copy")
    empty = 0
    while (limit is None or result.moved < limit) and empty < 2:
        want = BATCH if limit is None else min(BATCH, limit - result.moved)
        got = receive(sqs, dlq_url, want, hold_s=hold_s)
        empty = empty + 1 if not got else 0
        if not got:
            continue
        by_id = {str(i): m for i, m in enumerate(got)}
        sent = sqs.send_message_batch(
            QueueUrl=source_url,
            Entries=[
                {
                    "Id": i,
                    "MessageBody": m["Body"],
                    "MessageAttributes": _attributes_to_send(m),
                }
                for i, m in by_id.items()
            ],
        )
        for failed in sent.get("Failed", []):
            message = by_id[failed["Id"]]
            result.failures.append(
                f"{message['MessageId']}: {failed.get('Code')}: {failed.get('Message', '')}"
            )
        ok = [by_id[s["Id"]] for s in sent.get("Successful", [])]
        if ok:
            deleted = sqs.delete_message_batch(
                QueueUrl=dlq_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(ok)
                ],
            )
            for failed in deleted.get("Failed", []):
                result.failures.append(
                    f"{ok[int(failed['Id'])]['MessageId']}: sent, but not deleted from the DLQ "
                    f"({failed.get('Code')}): it will be redriven again (a harmless duplicate)"
                )
        result.moved += len(ok)
        progress(result.moved, 0)
    return result


def approximate_count(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs.get("ApproximateNumberOfMessages", 0)) + int(
        attrs.get("ApproximateNumberOfMessagesNotVisible", 0)
    )


class _Bar:
    """A click progress bar driven by absolute counts (what SQS reports)."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def __call__(self, done: int, total: int) -> None:
        if total > self.bar.length:
            self.bar.length = total
        if done > self.bar.pos:
            self.bar.update(done - self.bar.pos)


@dlq.command()
@queue_option
@click.option(
    "--method",
    type=click.Choice(["auto", "move-task", "copy"]),
    default="auto",
    show_default=True,
    help="auto: SQS's message move task where the endpoint has it, else copy then delete.",
)
@click.option("--max", "limit", type=click.IntRange(min=1), help="Copy at most this many.")
@click.option("--rate", type=click.IntRange(1, 500), help="Move task: messages per second.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
@friendly_errors
def redrive(
    aws: Aws, queue: str, method: str, limit: int | None, rate: int | None, yes: bool
) -> None:
    """Send the DLQ's messages back to their queue (events are idempotent by id)."""
    sqs = aws.client("sqs")
    dlq_url = aws.queue_url(queue, dlq=True)
    source_url = aws.queue_url(queue)
    count = approximate_count(sqs, dlq_url)
    dlq_name, source_name = dlq_url.rsplit("/", 1)[-1], source_url.rsplit("/", 1)[-1]
    if count == 0:
        click.echo(f"{dlq_name} is empty: nothing to redrive")
        return
    if limit is not None and method == "move-task":
        raise click.UsageError("--max works only with --method copy (a move task moves them all)")
    if not yes:
        click.confirm(
            f"Move about {count} message(s) from {dlq_name} back to {source_name}?",
            abort=True,
        )
    result: Moved | None = None
    with click.progressbar(length=min(count, limit or count), label="redriving") as bar:
        if method in ("auto", "move-task") and limit is None:
            try:
                result = move_task(
                    sqs,
                    dlq_arn=aws.queue_arn(dlq_url),
                    source_arn=aws.queue_arn(source_url),
                    rate=rate,
                    progress=_Bar(bar),
                )
            except NotImplementedError as exc:
                if method == "move-task":
                    raise click.ClickException(
                        f"{aws.where} has no SQS message move tasks ({exc}); use --method copy"
                    ) from None
        if result is None:
            result = copy_back(
                sqs,
                dlq_url=dlq_url,
                source_url=source_url,
                limit=limit,
                hold_s=60,
                progress=_Bar(bar),
            )
    click.echo(f"moved {result.moved} message(s) to {source_name} ({result.method})")
    for failure in result.failures:
        click.echo(f"not moved: {failure}", err=True)
    if result.failures:
        raise click.ClickException(
            f"{len(result.failures)} message(s) had a problem (listed above); the rest moved"
        )


# -- purge ----------------------------------------------------------------------------------------


@dlq.command()
@queue_option
@click.option("--yes", is_flag=True, help="Required: purge deletes every message for good.")
@click.pass_obj
@friendly_errors
def purge(aws: Aws, queue: str, yes: bool) -> None:
    """Delete every message of the DLQ (needs --yes)."""
    sqs = aws.client("sqs")
    url = aws.queue_url(queue, dlq=True)
    name = url.rsplit("/", 1)[-1]
    count = approximate_count(sqs, url)
    if not yes:
        raise click.UsageError(
            f"purge deletes all {count} message(s) of {name} for good: peek or redrive them "
            "first, then re-run with --yes"
        )
    click.echo(f"purging {count} message(s) from {name}")
    try:
        sqs.purge_queue(QueueUrl=url)
    except ClientError as exc:
        if "PurgeQueueInProgress" in str(exc.response.get("Error", {}).get("Code", "")):
            raise click.ClickException(
                f"a purge of {name} already runs (SQS allows one per 60 s): try again in a minute"
            ) from None
        raise
    click.echo(f"purged {name}")
