"""`make local` / `make local-up`: the whole pipeline on this machine, no AWS account.

What runs for real: the worker app under gunicorn (its Procfile `web` line) fed by the
sqsd-equivalent driver, the three durable workflows with the real step handlers in AWS's local
durable execution runner (time skipped), the worker's `tasks` process (ffmpeg transcode, ONNX
embedding) answering their callbacks over Lambda's callback API, and the `scheduler` process on a
private RabbitMQ node. What is emulated: every AWS API (moto's server on loopback: S3 with its SQS
notifications, SQS, DynamoDB, SNS, Transcribe; `resources`) and the speech recognition itself
(`transcript`). `view` shows the run, `report` sums it up.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.local.processes import ROOT, Processes, procfile, wait_healthy
from devtools.local.resources import (
    CONFIG,
    ENV,
    REGION,
    THROTTLES,
    Resources,
    create_resources,
    local_aws,
)
from devtools.local.transcript import AUDIO_SECONDS, make_audio, with_emulated_transcript
from devtools.ports import free_port
from sluice import catalog, naming, workflows
from sluice.settings import SchedulerSettings, TasksSettings, WebSettings

UPLOAD_KEY = f"{catalog.UPLOADS_PREFIX}sermon.mp3"
WORKFLOWS = catalog.WORKFLOWS
# Every step Lambda a declared workflow invokes (lambdas/workflows/*/workflow.toml).
DECLARATIONS = workflows.load(catalog.WORKFLOWS_ROOT, known_events=catalog.EVENTS)
STEPS = workflows.step_names(DECLARATIONS)
log = logging.getLogger("sluice.local")


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
            "SLUICE_FAILURE_HANDLERS": json.dumps(
                {w: d.on_failure for w, d in DECLARATIONS.items()}
            ),
        }

    def up(self) -> None:

        # moto's server logs every request at INFO through werkzeug: the live view is the log.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

        from devtools.durable_lambda import DurableService, alias_arn, serve

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
        self.res = create_resources(self.stack.enter_context(local_aws()))
        # Step handlers and workflows run in this process: their boto3 clients go to moto.
        os.environ["AWS_ENDPOINT_URL"] = self.res.endpoint
        os.environ.update(self.res.lambda_env())

        # 2. the durable workflows and their Lambda API
        self.durable = DurableService(self.workflows(), self.steps())
        self.stack.callback(self.durable.close)
        server = serve(self.durable)
        self.stack.callback(server.shutdown)
        self.durable_url = f"http://127.0.0.1:{server.server_address[1]}"
        # The workflows' own Lambda calls (a waiting run asking GetDurableExecution whether a
        # slot's holder still runs) go to it too, not to moto, which does not implement them:
        # a holder stopped while it held a slot was never reclaimed.
        os.environ["AWS_ENDPOINT_URL_LAMBDA"] = self.durable_url
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
        # The web and tasks processes' settings, as stacks/worker_env.py and heavy_steps.py set
        # them from the configuration (local choices: one gunicorn process, fast keepalive,
        # short polls and grace, so that a run and its stop take seconds).
        worker = CONFIG.worker
        self.procs.start(
            "web",
            web,
            {
                **child_env,
                "PORT": str(web_port),
                "WEB_CONCURRENCY": "1",
                **WebSettings.render(
                    web_threads=worker.http_connections,
                    http_path=worker.http_path,
                    max_body_bytes=worker.max_body_bytes,
                    env=ENV,
                    events_dlq_url=self.res.urls["events-dlq"],
                    invoke_timeout_s=10,
                    # Flow control's state and wake-ups (docs/flow-control.md), cancel
                    # registrations (worker/cancels.py).
                    coordination_table=naming.coordination_table(ENV),
                    events_queue_url=self.res.urls["events"],
                    # Short throttle windows, so that held events show in seconds.
                    throttles=json.dumps({w: t.model_dump() for w, t in THROTTLES.items()}),
                ),
                **naming.alias_variables({w: alias_arn(REGION, w) for w in WORKFLOWS}),
                # The failure handlers of the runs a `cancel_on` event stops, as
                # stacks/coordination.py sets them.
                **naming.alias_variables(
                    {
                        w: alias_arn(REGION, DECLARATIONS[w].on_failure)
                        for w in WORKFLOWS
                        if DECLARATIONS[w].cancel_on
                    },
                    prefix=naming.FAILURE_HANDLER_VARIABLE_PREFIX,
                ),
            },
        )
        tasks_env = {
            **child_env,
            **TasksSettings.render(
                queue_url=self.res.urls["tasks"],
                concurrency=worker.tasks_concurrency,
                visibility_timeout_s=CONFIG.tasks_queue.visibility_timeout_s,
                max_audio_seconds=CONFIG.workflows.max_audio_seconds,
                keepalive_s=5,
                receive_wait_s=1,
                grace_s=10,
            ),
        }
        tasks = procfile("tasks") or f"{sys.executable} -m worker.tasks"
        self.procs.start("tasks", tasks, tasks_env)
        self.worker_url = f"http://127.0.0.1:{web_port}"
        wait_healthy(self.worker_url, self.procs)

        # 4. sqsd: events queue -> the web process, with the options the stack gives sqsd
        from devtools.sqsd import SqsdDriver

        self.driver = SqsdDriver(
            self.res.client("sqs"),
            self.res.urls["events"],
            f"{self.worker_url}{worker.http_path}",
            connections=worker.http_connections,
            visibility_timeout_s=CONFIG.events_queue.visibility_timeout_s,
            error_visibility_timeout_s=worker.error_visibility_timeout_s,
            inactivity_timeout_s=worker.processing_timeout_s,
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
        from devtools.durable_lambda import alias_arn
        from devtools.rabbitmq import RabbitMQMissing, RabbitNode

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
                **SchedulerSettings.render(
                    broker_url=node.url,
                    events_queue_url=self.res.urls["events"],
                    coordination_table=naming.coordination_table(ENV),  # the tick ledger
                ),
                # Where an event task's previous run is looked up (no overlap), as on EB, where
                # every Procfile process has the environment's variables.
                **naming.alias_variables({w: alias_arn(REGION, w) for w in WORKFLOWS}),
            },
        )

    def workflows(self) -> dict[str, Any]:
        import importlib

        return {
            name: importlib.import_module(f"lambdas.workflows.{name}.handler").handler
            for name in WORKFLOWS
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
