"""`make local` / `make local-up`: the whole pipeline on this machine, no AWS account.

What runs for real: the worker app under gunicorn (its Procfile `web` line) fed by the
sqsd-equivalent driver, the three durable workflows with the real step handlers in AWS's local
durable execution runner (time skipped), the worker's `tasks` process (ffmpeg transcode, ONNX
embedding) answering their callbacks over Lambda's callback API. What is emulated: every AWS API
(moto's server on loopback: S3 with its SQS notifications, SQS, DynamoDB, SNS, Transcribe) and the
speech recognition itself (moto's Transcribe writes no transcript: this module writes a canned
one when the job starts, so the transcript's words are not the audio's).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from sluice import catalog, naming

ROOT = Path(__file__).resolve().parent.parent
ENV = "local"
PREFIX = f"Sluice-{ENV}"
REGION = "us-east-1"
BUCKET = "sluice-local-media"
UPLOAD_KEY = f"{catalog.UPLOADS_PREFIX}sermon.mp3"
AUDIO_SECONDS = 24
# What "Transcribe" hears in local mode: the words are canned, their times span the audio.
SCRIPT = (
    "Grace and peace to you from God our Father. Today we read from Psalm twenty three. "
    "The Lord is my shepherd, I shall not want. He makes me lie down in green pastures. "
    "He leads me beside still waters. He restores my soul. Let us pray together."
)
WORKFLOWS = catalog.WORKFLOWS
STEPS = catalog.TRANSCRIBE_STEPS
log = logging.getLogger("sluice.local")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- AWS, emulated --------------------------------------------------------------------------------


@dataclass
class Resources:
    """What the stacks would create, created in moto, named as the stacks name them."""

    endpoint: str
    bucket: str
    table: str
    topic_arn: str
    urls: dict[str, str]

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=REGION, endpoint_url=self.endpoint)


def create_resources(endpoint: str) -> Resources:
    import boto3

    def client(service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=endpoint)

    sqs, s3, ddb, sns = client("sqs"), client("s3"), client("dynamodb"), client("sns")
    urls: dict[str, str] = {}
    for queue, receives in (("events", 5), ("tasks", 3)):
        dlq = sqs.create_queue(QueueName=f"{PREFIX}-{queue}-dlq")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        urls[f"{queue}-dlq"] = dlq
        urls[queue] = sqs.create_queue(
            QueueName=f"{PREFIX}-{queue}",
            Attributes={
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": arn, "maxReceiveCount": receives}
                ),
                "VisibilityTimeout": "120",
            },
        )["QueueUrl"]
    s3.create_bucket(Bucket=BUCKET)
    events_arn = sqs.get_queue_attributes(QueueUrl=urls["events"], AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    # As in AWS: an upload under uploads/ notifies the events queue, and that starts the job.
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": events_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {
                        "Key": {
                            "FilterRules": [{"Name": "prefix", "Value": catalog.UPLOADS_PREFIX}]
                        }
                    },
                }
            ]
        },
    )
    table = f"{PREFIX}-jobs"
    ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    topic = sns.create_topic(Name=f"{PREFIX}-notifications")["TopicArn"]
    return Resources(endpoint, BUCKET, table, topic, urls)


def transcribe_json(duration_s: float, job: str) -> dict[str, Any]:
    """Amazon Transcribe's output format for SCRIPT spread over `duration_s` seconds."""
    tokens: list[str] = []
    for word in SCRIPT.split():
        core = word.rstrip(".,")
        tokens.append(core)
        if word != core:
            tokens.append(word[len(core) :][0])
    spoken = [t for t in tokens if t not in {".", ","}]
    step = max(duration_s - 0.5, 1.0) / len(spoken)
    items, t = [], 0.2
    for token in tokens:
        if token in {".", ","}:
            items.append(
                {"type": "punctuation", "alternatives": [{"confidence": "0.0", "content": token}]}
            )
            continue
        items.append(
            {
                "type": "pronunciation",
                "start_time": f"{t:.3f}",
                "end_time": f"{t + step * 0.8:.3f}",
                "alternatives": [{"confidence": "0.99", "content": token}],
            }
        )
        t += step
    return {
        "jobName": job,
        "accountId": "123456789012",
        "status": "COMPLETED",
        "results": {"transcripts": [{"transcript": SCRIPT}], "items": items},
    }


def with_emulated_transcript(start: Callable[..., Any], duration_s: float) -> Callable[..., Any]:
    """The real start_transcription step, then the transcript moto's Transcribe never writes."""
    from lambdas.common.runtime import clients
    from lambdas.steps.start_transcription.handler import output_key

    def target(event: Any, context: Any) -> Any:
        result = start(event, context)
        clients("s3").put_object(
            Bucket=os.environ["MEDIA_BUCKET"],
            Key=output_key(event["job_id"]),
            Body=json.dumps(transcribe_json(duration_s, result["transcription_job"])).encode(),
            ContentType="application/json",
        )
        return result

    return target


def make_audio(path: Path, seconds: int) -> Path:
    """A short MP3 (two tones), made with the same ffmpeg the worker transcodes with."""
    from worker.heavy.transcode import ffmpeg_exe

    tones = f"sine=frequency=220:duration={seconds}", f"sine=frequency=330:duration={seconds}"
    subprocess.run(
        [
            ffmpeg_exe(),
            *("-hide_banner", "-nostdin", "-v", "error", "-y"),
            *("-f", "lavfi", "-i", tones[0], "-f", "lavfi", "-i", tones[1]),
            *("-filter_complex", "amix=inputs=2", "-ac", "2", "-ar", "44100"),
            *("-c:a", "libmp3lame", "-b:a", "128k", str(path)),
        ],
        check=True,
        timeout=60,
    )
    return path


# -- processes ------------------------------------------------------------------------------------


@dataclass
class Processes:
    """Child processes and their log files (build/local/*.log)."""

    logdir: Path
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, command: str | list[str], env: dict[str, str]) -> None:
        out = (self.logdir / f"{name}.log").open("wb")
        # Procfile lines are shell commands, as on EB.
        self.children[name] = subprocess.Popen(
            command,
            shell=isinstance(command, str),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check(self) -> None:
        for name, proc in self.children.items():
            if proc.poll() is not None:
                tail = (self.logdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the {name} process exited {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.children.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def procfile(name: str) -> str | None:
    for line in (ROOT / "worker" / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    return None


def wait_healthy(url: str, procs: Processes, timeout_s: float = 120) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        procs.check()
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:  # noqa: S310
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the worker did not answer {url}/health in {timeout_s} s")


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Pipeline:
    """Everything of one local run, started by `up()`."""

    workdir: Path
    stack: ExitStack = field(default_factory=ExitStack)
    res: Resources | None = None
    durable: Any = None
    durable_url: str = ""
    worker_url: str = ""
    procs: Processes | None = None
    driver: Any = None
    broker_url: str | None = None
    missing: list[str] = field(default_factory=list)

    def lambda_env(self) -> dict[str, str]:
        assert self.res is not None
        return {
            "MEDIA_BUCKET": self.res.bucket,
            "JOBS_TABLE": self.res.table,
            "NOTIFICATIONS_TOPIC": self.res.topic_arn,
            "EVENTS_QUEUE_URL": self.res.urls["events"],
            "TASKS_QUEUE_URL": self.res.urls["tasks"],
            "MAX_AUDIO_SECONDS": "14400",
            "TRANSCRIBE_LANGUAGE": "en-US",
            "POWERTOOLS_METRICS_NAMESPACE": "SluiceLocal",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }

    def cli_env(self) -> dict[str, str]:
        """What `sluice` needs to work against this run."""
        assert self.res is not None
        return {
            "SLUICE_ENV": ENV,
            "SLUICE_ENDPOINT_URL": self.res.endpoint,
            "AWS_ENDPOINT_URL_LAMBDA": self.durable_url,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "SLUICE_JOBS_TABLE": self.res.table,
            "SLUICE_WORKFLOW_FUNCTIONS": json.dumps({w: w for w in WORKFLOWS}),
        }

    def up(self) -> None:
        from moto.server import ThreadedMotoServer

        # moto's server logs every request at INFO through werkzeug: the live view is the log.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

        from local.durable import DurableService, alias_arn, serve

        self.workdir.mkdir(parents=True, exist_ok=True)
        # Fake credentials and one region for everything: nothing here may ever reach AWS.
        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": "local",
                "AWS_SECRET_ACCESS_KEY": "local",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )
        os.environ.pop("AWS_PROFILE", None)
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ["HF_HUB_OFFLINE"] = "1"

        # 1. AWS on loopback
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
        moto.start()
        self.stack.callback(moto.stop)
        host, port = moto.get_host_and_port()
        self.res = create_resources(f"http://{host}:{port}")
        # Step handlers and workflows run in this process: their boto3 clients go to moto.
        os.environ["AWS_ENDPOINT_URL"] = self.res.endpoint
        os.environ.update(self.lambda_env())

        # 2. the durable workflows and their Lambda API
        self.durable = DurableService(self.workflows(), self.steps())
        self.stack.callback(self.durable.close)
        server = serve(self.durable)
        self.stack.callback(server.shutdown)
        self.durable_url = f"http://127.0.0.1:{server.server_address[1]}"
        for noisy in (
            "aws_durable_execution_sdk_python_testing",
            "aws_durable_execution_sdk_python",
        ):
            logging.getLogger(noisy).setLevel(logging.WARNING)

        # 3. the worker: web (gunicorn, its Procfile line) and tasks processes
        self.procs = Processes(self.workdir)
        self.stack.callback(self.procs.stop)
        child_env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "AWS_ENDPOINT_URL": self.res.endpoint,
            "AWS_ENDPOINT_URL_LAMBDA": self.durable_url,
        }
        web_port = free_port()
        web = procfile("web")
        if web is None:
            raise RuntimeError("worker/Procfile has no web process")
        self.procs.start(
            "web",
            web,
            {
                **child_env,
                "PORT": str(web_port),
                "WEB_CONCURRENCY": "1",
                "SLUICE_WEB_THREADS": "4",
                "SLUICE_ENV": ENV,
                **naming.alias_variables({w: alias_arn(REGION, w) for w in WORKFLOWS}),
                "SLUICE_EVENTS_DLQ_URL": self.res.urls["events-dlq"],
                "SLUICE_INVOKE_TIMEOUT_S": "10",
            },
        )
        tasks_env = {
            **child_env,
            "SLUICE_TASKS_QUEUE_URL": self.res.urls["tasks"],
            "SLUICE_TASKS_CONCURRENCY": "2",
            "SLUICE_TASKS_VISIBILITY_S": "120",
            "SLUICE_TASKS_KEEPALIVE_S": "5",
            "SLUICE_TASKS_RECEIVE_WAIT_S": "1",
            "SLUICE_TASKS_GRACE_S": "10",
        }
        tasks = procfile("tasks") or f"{sys.executable} -m worker.tasks"
        self.procs.start("tasks", tasks, tasks_env)
        self.worker_url = f"http://127.0.0.1:{web_port}"
        wait_healthy(self.worker_url, self.procs)

        # 4. sqsd: events queue -> the web process
        from worker.sqsd_local import SqsdDriver

        self.driver = SqsdDriver(
            self.res.client("sqs"),
            self.res.urls["events"],
            f"{self.worker_url}/",
            connections=4,
            error_visibility_timeout_s=2,
            wait_time_s=1,
        )
        stop = threading.Event()
        thread = threading.Thread(target=self.driver.run, args=(stop,), daemon=True, name="sqsd")
        thread.start()
        self.stack.callback(self.driver.close)
        self.stack.callback(thread.join, 10)
        self.stack.callback(stop.set)
        self.start_scheduler(child_env)

    def start_scheduler(self, child_env: dict[str, str]) -> None:
        """The Procfile `scheduler` process on a private RabbitMQ node, when rabbitmq-server is
        installed (`apt-get install rabbitmq-server`); otherwise the run says it did not run."""
        # The private-node helper lives with the scheduler's integration tests (issue 7).
        from local.rabbitmq_node import RabbitMQMissing, RabbitNode

        command = procfile("scheduler")
        if command is None:
            self.missing.append("scheduler: worker/Procfile has no scheduler process")
            return
        try:
            node = RabbitNode(self.workdir / "rabbitmq", name="sluice-local").start()
        except RabbitMQMissing as exc:
            self.missing.append(f"scheduler: {exc}")
            return
        self.stack.callback(node.stop)
        self.broker_url = node.url
        assert self.procs is not None and self.res is not None
        self.procs.start(
            "scheduler",
            command,
            {
                **child_env,
                "SLUICE_BROKER_URL": node.url,
                "SLUICE_EVENTS_QUEUE_URL": self.res.urls["events"],
            },
        )

    def workflows(self) -> dict[str, Any]:
        from lambdas.workflows.embed_transcript.handler import handler as embed
        from lambdas.workflows.transcode_audio.handler import handler as transcode
        from lambdas.workflows.transcribe_audio.handler import handler as transcribe

        return {
            "transcribe_audio": transcribe,
            "transcode_audio": transcode,
            "embed_transcript": embed,
        }

    def steps(self) -> dict[str, Any]:
        import importlib

        found = {
            name: importlib.import_module(f"lambdas.steps.{name}.handler").handler for name in STEPS
        }
        found["start_transcription"] = with_emulated_transcript(
            found["start_transcription"], AUDIO_SECONDS
        )
        return found

    def upload(self) -> str:
        assert self.res is not None
        audio = make_audio(self.workdir / "sermon.mp3", AUDIO_SECONDS)
        self.res.client("s3").put_object(
            Bucket=self.res.bucket,
            Key=UPLOAD_KEY,
            Body=audio.read_bytes(),
            ContentType="audio/mpeg",
        )
        return f"s3://{self.res.bucket}/{UPLOAD_KEY}"

    def close(self) -> None:
        self.stack.close()


# -- watching -------------------------------------------------------------------------------------


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
        log_text = (p.workdir / "scheduler.log").read_text(errors="replace")
        ticks = log_text.count('"scheduler": "heartbeat"')
    return Snapshot(
        executions=executions,
        outputs=outputs,
        job=job,
        events_handled=p.driver.stats.deleted if p.driver else 0,
        dead_letters=int(dlq["Attributes"]["ApproximateNumberOfMessages"]),
        tokens=tokens,
        ticks=ticks,
    )


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


def report(p: Pipeline, snap: Snapshot, upload: str) -> dict[str, Any]:
    return {
        "upload": upload,
        "complete": snap.complete,
        "executions": [
            {k: e[k] for k in ("workflow", "name", "status")}
            | {"operations": list(dict.fromkeys(n for n, _ in e["operations"]))}
            for e in snap.executions
        ],
        "outputs": snap.outputs,
        "job": json.loads(json.dumps(snap.job, default=_number)) if snap.job else None,
        "events_handled": snap.events_handled,
        "dead_letters": snap.dead_letters,
        "scheduler": None
        if snap.tokens is None
        else {"tokens": {t: list(c) for t, c in snap.tokens.items()}, "ticks": snap.ticks},
        "not_run": p.missing,
    }


def _number(value: Any) -> Any:
    """DynamoDB's Decimals as JSON numbers."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def summary(snap: Snapshot, p: Pipeline) -> str:
    lines = ["", "Sluice local run: " + ("COMPLETE" if snap.complete else "NOT COMPLETE")]
    for e in snap.executions:
        lines.append(f"  {e['workflow']:<18} {e['status']:<10} {e['name']}")
    for name, keys in snap.outputs.items():
        lines.append(f"  {name:<18} {len(keys)} object(s) " + (keys[0] if keys else ""))
    for task, counts in (snap.tokens or {}).items():
        lines.append(f"  scheduler {task:<8} tokens hatchery/processor {counts[0]}/{counts[1]}")
    for note in p.missing:
        lines.append(f"  not run: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local", description=__doc__.splitlines()[0])
    parser.add_argument("--up", action="store_true", help="keep running after the job (local-up)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds the job may take")
    parser.add_argument("--report", type=Path, help="write the end state as JSON here")
    parser.add_argument(
        "--view",
        choices=("auto", "live", "lines"),
        default="auto",
        help="live table (a terminal) or one line per change",
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "local")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    live = args.view == "live" or (args.view == "auto" and sys.stdout.isatty())
    pipeline = Pipeline(workdir=args.workdir)
    try:
        print("starting: moto, durable runner, worker web + tasks, sqsd …", flush=True)
        pipeline.up()
        upload = pipeline.upload()
        print(f"uploaded {upload}: the S3 notification starts the job", flush=True)
        snap = watch(pipeline, upload, timeout_s=args.timeout, live=live)
        print(summary(snap, pipeline), flush=True)
        if args.report:
            args.report.write_text(json.dumps(report(pipeline, snap, upload), indent=2))
        if args.up:
            print("\nstill running (Ctrl-C stops it). Point the CLI at it:", flush=True)
            for key, value in pipeline.cli_env().items():
                print(f"  export {key}='{value}'")
            print("  sluice dlq peek --queue events; sluice jobs show <event-id>", flush=True)
            with _until_interrupted():
                while True:
                    assert pipeline.procs is not None
                    pipeline.procs.check()
                    time.sleep(1)
        return 0 if snap.complete else 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # Say what broke (and where its log is); the report records it for the e2e test.
        print(f"local run failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        print(f"process logs: {args.workdir}/*.log", file=sys.stderr, flush=True)
        if args.report:
            args.report.write_text(
                json.dumps({"complete": False, "error": f"{type(exc).__name__}: {exc}"})
            )
        return 1
    finally:
        pipeline.close()


@contextmanager
def _until_interrupted() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        print("stopping", flush=True)
