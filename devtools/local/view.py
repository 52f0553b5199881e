"""What a local run shows while it runs: a live table in a terminal, one line per change otherwise.

`snapshot` reads the state of the run (durable executions and their history, the bucket's
outputs, the job record, the DLQ, the scheduler's tokens); `watch` shows it until the job ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sluice import catalog

if TYPE_CHECKING:
    from devtools.local.run import Pipeline

# The workflows an uploaded sermon goes through (the run is done when each has succeeded).
WORKFLOWS = ("transcribe_audio", "transcode_audio", "embed_transcript")


@dataclass
class Snapshot:
    """The state of the run, as the live view shows it and the report records it."""

    executions: list[dict[str, Any]]
    outputs: dict[str, list[str]]
    job: dict[str, Any] | None
    events_handled: int
    dead_letters: int
    # task -> (tokens in its hatchery, in its processor queue); None: no broker in this run
    tokens: dict[str, tuple[int, int]] | None = None
    ticks: int = 0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [e for e in self.executions if e["status"] in ("FAILED", "TIMED_OUT", "STOPPED")]

    @property
    def complete(self) -> bool:
        done = {e["workflow"] for e in self.executions if e["status"] == "SUCCEEDED"}
        tokens_ok = self.tokens is None or all(sum(t) == 1 for t in self.tokens.values())
        return done >= set(WORKFLOWS) and all(self.outputs.values()) and tokens_ok


OUTPUT_PREFIXES = {
    "transcript": (catalog.TRANSCRIPTS_PREFIX, (".json",)),
    "captions": (catalog.TRANSCRIPTS_PREFIX, (".vtt",)),
    "hls": (catalog.HLS_PREFIX, (".m3u8",)),
    "vectors": (catalog.EMBEDDINGS_PREFIX, ("",)),
}


def snapshot(p: Pipeline) -> Snapshot:
    assert p.res is not None
    executions = []
    for workflow, name, arn in p.durable.executions():
        history = p.durable.history(arn)
        ops = []
        for event in history:
            kind = str(event.get("EventType", ""))
            if kind.startswith("Execution") or kind == "InvocationCompleted":
                continue
            ops.append((str(event.get("Name") or kind), kind))
        executions.append(
            {
                "workflow": workflow,
                "name": name,
                "arn": arn,
                "status": p.durable.status(arn),
                "operations": ops,
            }
        )
    s3 = p.res.client("s3")
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=p.res.bucket)
        for o in page.get("Contents", [])
    ]
    outputs = {
        name: [k for k in keys if k.startswith(prefix) and k.endswith(ends)]
        for name, (prefix, ends) in OUTPUT_PREFIXES.items()
    }
    job = None
    first = next((e for e in executions if e["workflow"] == "transcribe_audio"), None)
    if first:
        item = p.res.client("dynamodb").get_item(
            TableName=p.res.table, Key={"job_id": {"S": first["name"]}}
        )
        if "Item" in item:
            from boto3.dynamodb.types import TypeDeserializer

            plain = TypeDeserializer()
            job = {k: plain.deserialize(v) for k, v in item["Item"].items()}
    dlq = p.res.client("sqs").get_queue_attributes(
        QueueUrl=p.res.urls["events-dlq"], AttributeNames=["ApproximateNumberOfMessages"]
    )
    tokens, ticks = None, 0
    if p.broker_url:
        from sluice.scheduling.registry import REGISTRY
        from sluice_cli.schedules import token_counts

        tokens = token_counts(p.broker_url, list(REGISTRY.names))
        ticks = heartbeats((p.workdir / "scheduler.log").read_text(errors="replace"))
    return Snapshot(
        executions=executions,
        outputs=outputs,
        job=job,
        events_handled=p.driver.stats.deleted if p.driver else 0,
        dead_letters=int(dlq["Attributes"]["ApproximateNumberOfMessages"]),
        tokens=tokens,
        ticks=ticks,
    )


def heartbeats(log_text: str) -> int:
    """The scheduler's heartbeat ticks in its log (one JSON line each, the message an object)."""
    count = 0
    for line in log_text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        message = doc.get("message") if isinstance(doc, dict) else None
        count += isinstance(message, dict) and message.get("scheduler") == "heartbeat"
    return count


def render(snap: Snapshot, elapsed: float, upload: str) -> Any:
    from rich.table import Table

    table = Table(title=f"Sluice, local — {upload} — {elapsed:5.1f} s", expand=False)
    table.add_column("what")
    table.add_column("status")
    table.add_column("progress", overflow="fold")
    table.add_row(
        "events (sqsd → worker)", f"{snap.events_handled} handled", f"DLQ {snap.dead_letters}"
    )
    colors = {"SUCCEEDED": "green", "RUNNING": "yellow", "FAILED": "red", "TIMED_OUT": "red"}
    for e in snap.executions:
        done = [name for name, kind in e["operations"] if kind.endswith("Succeeded")]
        last = e["operations"][-1] if e["operations"] else ("started", "")
        status = f"[{colors.get(e['status'], 'white')}]{e['status']}[/]"
        table.add_row(
            f"workflow {e['workflow']}",
            status,
            f"{len(done)} done, now: {last[0]} ({last[1] or '…'})",
        )
    for task, (hatchery, processor) in (snap.tokens or {}).items():
        held = hatchery + processor
        table.add_row(
            f"scheduler {task}",
            "[green]token held[/]" if held == 1 else "[yellow]seeding…[/]",
            f"hatchery {max(hatchery, 0)}, processor {max(processor, 0)}, ticks {snap.ticks}",
        )
    for name, keys in snap.outputs.items():
        table.add_row(
            f"output {name}",
            "[green]ready[/]" if keys else "[dim]waiting[/]",
            # Keys end in <job id>/<file>: the file is what tells the outputs apart.
            ", ".join("…/" + "/".join(k.split("/")[2:]) for k in keys[:3])
            + (" …" if len(keys) > 3 else ""),
        )
    return table


def watch(p: Pipeline, upload: str, *, timeout_s: float, live: bool) -> Snapshot:
    """Show the job advancing until it completes, fails or times out."""
    start = time.monotonic()
    snap = snapshot(p)

    def step() -> Iterator[Snapshot]:
        nonlocal snap
        while time.monotonic() - start < timeout_s:
            assert p.procs is not None
            p.procs.check()
            snap = snapshot(p)
            yield snap
            if snap.complete or snap.failed:
                return
            time.sleep(0.5)

    if live:
        from rich.console import Console
        from rich.live import Live

        with Live(render(snap, 0, upload), console=Console(), refresh_per_second=4) as view:
            for s in step():
                view.update(render(s, time.monotonic() - start, upload))
    else:
        seen: set[str] = set()
        for s in step():
            for line in progress_lines(s):
                if line not in seen:
                    seen.add(line)
                    print(f"[{time.monotonic() - start:6.1f}s] {line}", flush=True)
    return snap


def progress_lines(s: Snapshot) -> list[str]:
    """One line per thing that happened (the view when stdout is not a terminal)."""
    lines = []
    for e in s.executions:
        lines.append(f"workflow {e['workflow']} started ({e['name']})")
        lines.extend(f"workflow {e['workflow']}: {name} {kind}" for name, kind in e["operations"])
        if e["status"] != "RUNNING":
            lines.append(f"workflow {e['workflow']} {e['status']}")
    lines.extend(f"output {name}: {k}" for name, keys in s.outputs.items() for k in keys)
    lines.extend(
        f"scheduler {task}: token held" for task, t in (s.tokens or {}).items() if sum(t) == 1
    )
    return lines
