"""Heavy steps: the workflows whose work runs on the worker (transcode, embed), and the grants
and settings the worker's `tasks` process needs to run them.

The workflows only send a task and wait for its callback, so they need the tasks queue and
nothing of the media bucket; the worker instance role reads the inputs, writes the outputs and
answers the callbacks of exactly these two workflows.
"""

from __future__ import annotations

from aws_cdk import Aws
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from sluice import catalog
from sluice.settings import LambdaSettings, TasksSettings
from stacks import grants
from stacks.config import EnvConfig
from stacks.media_store import TRANSCRIPTS, UPLOADS, Media, media_objects_arn
from stacks.queues import QueuePair
from stacks.workflows import EXECUTIONS_REASON, DurableWorkflow, Workflows

# Where the worker writes (sluice.catalog names the same prefixes for the runtime code).
# The worker heartbeats each callback this often (and re-extends the message's visibility).
KEEPALIVE_S = 60
# A callback's heartbeat clock starts when the task is queued: it must outlast the wait in the
# queue (alarmed at alarms.tasks_queue_age_s) plus one redelivery after a worker crash.
CALLBACK_ACTIONS = [
    "lambda:SendDurableExecutionCallbackSuccess",
    "lambda:SendDurableExecutionCallbackFailure",
    "lambda:SendDurableExecutionCallbackHeartbeat",
]


def heavy_timeout_s(config: EnvConfig) -> int:
    """The longest one attempt of a heavy step may run: as long as the longest audio allowed,
    several times over."""
    return max(3600, 2 * config.workflows.max_audio_seconds)


def heartbeat_timeout_s(config: EnvConfig) -> int:
    return config.alarms.tasks_queue_age_s + 2 * config.tasks_queue.visibility_timeout_s


class HeavySteps(Construct):
    """`workflows` (the declared ones that use the tasks queue) with `aliases`; `grant_heavy_steps(role)`
    and `worker_environment` for the worker's tasks process."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        workflows: Workflows,
        media: Media,
        tasks: QueuePair,
        events: QueuePair,
        key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self._config, self._media, self._tasks, self._key = config, media, tasks, key
        env = LambdaSettings.render(
            media_bucket=media.bucket_name,
            tasks_queue_url=tasks.queue.queue_url,
            heavy_heartbeat_timeout_s=heartbeat_timeout_s(config),
            heavy_timeout_s=heavy_timeout_s(config),
            # The fan-in join (lambdas/common/join.py): the item's job record, media/ready.
            jobs_table=media.table.table_name,
            events_queue_url=events.queue.queue_url,
        )
        self.workflows: dict[str, DurableWorkflow] = {}
        for name, decl in workflows.declarations.items():
            if "tasks_queue" not in decl.uses:
                continue
            wf = workflows.workflow(decl, config=config, key=key, scope=self, environment=env)
            # The tasks it sends, and the fan-in join (lambdas/common/join.py): the item's job
            # record and media/ready on the events queue.
            wf.allow(["sqs:SendMessage"], [tasks.queue.queue_arn, events.queue.queue_arn])
            wf.allow(["dynamodb:UpdateItem"], [media.table.table_arn])
            if key is not None:  # the queues and the jobs table are encrypted with the data key
                wf.allow(["kms:Decrypt", "kms:GenerateDataKey"], [key.key_arn])
            self.workflows[name] = wf
        self.aliases: dict[str, lambda_.IAlias] = {n: wf.alias for n, wf in self.workflows.items()}
        # What the tasks process reads (sluice.settings.TasksSettings).
        self.worker_environment: dict[str, str] = TasksSettings.render(
            queue_url=tasks.queue.queue_url,
            concurrency=config.worker.tasks_concurrency,
            visibility_timeout_s=config.tasks_queue.visibility_timeout_s,
            keepalive_s=KEEPALIVE_S,
            max_audio_seconds=config.workflows.max_audio_seconds,
            # On a deploy or scale-in: how long running tasks may finish before they are handed
            # back; systemd's stop timeout (set by the .platform hook) leaves it its cleanup after that.
            grace_s=config.worker.drain_s,
            stop_timeout_s=config.worker.tasks_stop_timeout_s,
            # Scale-in protection while a task runs, never past one attempt's longest run.
            scale_in_protection=True,
            protection_max_s=heavy_timeout_s(config),
        )

    def grant_heavy_steps(self, role: iam.IRole) -> iam.ManagedPolicy:
        """Give the worker instance role exactly what the tasks process needs, in one policy."""
        config, bucket_name = self._config, self._media.bucket_name
        bucket_arn = f"arn:{Aws.PARTITION}:s3:::{bucket_name}"
        policy = iam.ManagedPolicy(
            self,
            "WorkerPolicy",
            description=f"{config.prefix} worker tasks process: tasks queue, media, callbacks",
            roles=[role],
        )
        task_messages = ["sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:DeleteMessage"]
        grants.allow(
            policy,
            [*task_messages, "sqs:GetQueueAttributes"],
            [self._tasks.queue.queue_arn],
            sid="TasksQueue",
        )
        reads = {
            media_objects_arn(config, UPLOADS): "Uploaded audio to transcode, read-only.",
            media_objects_arn(config, TRANSCRIPTS): "Transcripts to embed, read-only.",
        }
        writes = {
            media_objects_arn(config, catalog.HLS_PREFIX): "HLS renditions the worker writes, "
            "under hls/ only.",
            media_objects_arn(config, catalog.EMBEDDINGS_PREFIX): "Transcript vectors the "
            "worker writes, under embeddings/ only.",
        }
        grants.allow(
            policy,
            ["s3:GetObject", "s3:GetObjectVersion"],
            list(reads),
            reason=reads,
            sid="ReadInputs",
        )
        # Without ListBucket a missing key reads as 403 instead of 404; only these prefixes.
        grants.allow(
            policy,
            ["s3:ListBucket"],
            [bucket_arn],
            sid="FindInputs",
            conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in (UPLOADS, TRANSCRIPTS)]}},
        )
        grants.allow(
            policy,
            ["s3:PutObject", "s3:AbortMultipartUpload"],
            list(writes),
            reason=writes,
            sid="WriteOutputs",
        )
        # A resumable transcode reads back and finally deletes its chunk manifests, nothing else
        # of hls/ (worker/heavy/transcode.py).
        manifests = f"{catalog.HLS_PREFIX}*/{catalog.TRANSCODE_RESUME_DIR}"
        grants.allow(
            policy,
            ["s3:GetObject", "s3:DeleteObject"],
            [media_objects_arn(config, manifests)],
            reason="Chunk manifests of resumable transcodes, one directory per output prefix.",
            sid="ResumeTranscodes",
        )
        grants.allow(
            policy,
            ["s3:ListBucket"],
            [bucket_arn],
            sid="FindTranscodeChunks",
            conditions={"StringLike": {"s3:prefix": [f"{manifests}*"]}},
        )
        grants.allow(
            policy,
            CALLBACK_ACTIONS,
            [wf.executions_arn for wf in self.workflows.values()],
            sid="AnswerCallbacks",
            reason=EXECUTIONS_REASON,
        )
        if self._key is not None:
            grants.allow(
                policy, ["kms:Decrypt", "kms:GenerateDataKey"], [self._key.key_arn], sid="DataKey"
            )
        return policy
