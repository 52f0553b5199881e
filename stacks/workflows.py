"""Durable workflows and their step handler Lambdas, packaged without Docker.

`StepFunction`: one Lambda per step with its own role, sizing and `live` alias.
`DurableWorkflow`: a durable function (checkpoint/replay) with a `live` alias that invokes steps,
built from its declaration (lambdas/workflows/<name>/workflow.toml, sluice.workflows).
`Workflows`: the declared workflows (but those whose work runs on the worker: stacks/heavy_steps)
and every step Lambda any declared workflow invokes, wired to the media store and the events queue.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aws_cdk import Acknowledgment, AssetHashType, Aws, Duration, Validations
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from sluice import catalog, naming
from sluice.settings import LambdaSettings
from sluice.workflows import Declaration
from stacks import grants
from stacks.bundling import ROOT, stage_bundle
from stacks.compliance import GUARD
from stacks.config import EnvConfig, FunctionConfig
from stacks.declarations import (
    ROUTES_PATH,
    STEPS_ROOT,
    WORKFLOWS_ROOT,
    declared,
    routes_file,
    step_names,
)
from stacks.lifecycle import removal_policy
from stacks.media_store import TRANSCRIPTS, UPLOADS, Media, media_objects_arn
from stacks.queues import QueuePair

LAMBDAS = ROOT / "lambdas"
DEPS = ROOT / "build" / "lambda-deps"
REQUIREMENTS = LAMBDAS / "requirements.txt"
RUNTIME = lambda_.Runtime.PYTHON_3_14
ARCH = lambda_.Architecture.ARM_64
TRANSCRIBE_OUTPUT = catalog.TRANSCRIBE_OUTPUT_PREFIX
# What Lambda calls with a VPC function's role to manage its network interfaces: the EC2 actions
# of AWS's AWSLambdaVPCAccessExecutionRole.
ENI_ACTIONS = [
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
]


def deps_layer(scope: Construct, construct_id: str) -> lambda_.LayerVersion:
    """The third-party packages every function imports (built by `make lambda-deps`)."""
    if not (DEPS / "python").is_dir():
        raise FileNotFoundError(
            f"{DEPS / 'python'} is missing: run `make lambda-deps` (synth never downloads)"
        )
    # Hash what determines the layer (the pins and the target platform), not the files pip
    # wrote, so the same pins give the same asset hash on every machine.
    digest = hashlib.sha256(REQUIREMENTS.read_bytes() + b"|cp314|manylinux2014_aarch64")
    return lambda_.LayerVersion(
        scope,
        construct_id,
        code=lambda_.Code.from_asset(
            str(DEPS),
            exclude=[".installed"],
            asset_hash_type=AssetHashType.CUSTOM,
            asset_hash=digest.hexdigest(),
        ),
        compatible_runtimes=[RUNTIME],
        compatible_architectures=[ARCH],
        description="Sluice Lambda dependencies (lambdas/requirements.txt)",
    )


def function_bundle(
    kind: str, name: str, *, source: Path | None = None, routes: Path | None = None
) -> Path:
    """The function's package (`source`, default lambdas/<kind>/<name>), the shared runtime
    helpers, the AWS adapters and the sluice contracts with the declared routes, staged."""
    return stage_bundle(
        f"{kind}-{name}",
        {
            "lambdas/__init__.py": LAMBDAS / "__init__.py",
            "lambdas/common": LAMBDAS / "common",
            f"lambdas/{kind}/__init__.py": LAMBDAS / kind / "__init__.py",
            f"lambdas/{kind}/{name}": source or LAMBDAS / kind / name,
            "adapters": ROOT / "adapters",
            "sluice": ROOT / "sluice",
            ROUTES_PATH: routes or routes_file(declared()),
        },
    )


def code_bundle(
    kind: str, name: str, *, source: Path | None = None, routes: Path | None = None
) -> lambda_.Code:
    return lambda_.Code.from_asset(str(function_bundle(kind, name, source=source, routes=routes)))


def _acknowledge_compute(fn: lambda_.Function) -> None:
    """Findings that do not apply to a function invoked only by a durable workflow."""
    acks = [
        Acknowledgment(
            id="NIST.800.53.R5-LambdaDLQ",
            reason="Invoked synchronously by a durable execution, which records the failure and "
            "retries or runs on_failure: a DLQ would never receive anything.",
        ),
        Acknowledgment(
            id="HIPAA.Security-LambdaDLQ",
            reason="Invoked synchronously by a durable execution, which records the failure and "
            "retries or runs on_failure: a DLQ would never receive anything.",
        ),
        Acknowledgment(
            id="NIST.800.53.R5-LambdaInsideVPC",
            reason="Reaches only AWS APIs (S3, DynamoDB, SNS, SQS, Transcribe) with IAM "
            "authorization and TLS; no VPC resource is used.",
        ),
        Acknowledgment(
            id="HIPAA.Security-LambdaInsideVPC",
            reason="Reaches only AWS APIs (S3, DynamoDB, SNS, SQS, Transcribe) with IAM "
            "authorization and TLS; no VPC resource is used.",
        ),
    ]
    for ack in acks:
        Validations.of(fn).acknowledge(ack)


class _Function(Construct):
    """A Lambda (lambdas/<package>/<name>) with its own role and one customer-managed policy, its
    named log group and X-Ray tracing; with `security_group`, in the VPC's private subnets."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        kind: str,
        name: str,
        package: str,
        config: EnvConfig,
        sizing: FunctionConfig,
        setting: str,
        layer: lambda_.ILayerVersion | None,
        environment: Mapping[str, str],
        key: kms.IKey | None,
        execution_timeout_s: int | None = None,
        source: Path | None = None,
        routes: Path | None = None,
        vpc: ec2.IVpc | None = None,
        security_group: ec2.ISecurityGroup | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.name = name
        removal = removal_policy(config)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"{config.prefix} {kind} {name}",
        )
        # Every permission of the function lives in this one customer-managed policy (no inline
        # policies: NIST/HIPAA IAMNoInlinePolicy). It names the role, not the other way round,
        # so it may reference the function itself without a dependency cycle.
        self.policy = iam.ManagedPolicy(
            self,
            "Policy",
            description=f"{config.prefix} {kind} {name}: what it touches, nothing more",
            roles=[self.role],
        )
        self.allow(
            ["xray:PutTraceSegments", "xray:PutTelemetryRecords"],
            ["*"],
            reason="X-Ray tracing (xray:PutTraceSegments, xray:PutTelemetryRecords): these "
            "actions have no resource-level permissions.",
        )
        if vpc is not None:
            # In this policy rather than AWS's managed one: the role keeps one policy of ours.
            self.allow(
                ENI_ACTIONS,
                ["*"],
                reason="The function's VPC network interfaces (the EC2 actions of AWS's "
                "AWSLambdaVPCAccessExecutionRole): Lambda creates and deletes them with this "
                "role, so no id exists to name in advance; the Describe actions have no "
                "resource type.",
            )
        # Named, so that the CLI and the runbook find a job's logs (sluice.naming).
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            log_group_name=naming.lambda_log_group(config.name, name),
            removal_policy=removal,
            encryption_key=key,
        )
        if key is not None:
            Validations.of(self.log_group).acknowledge(
                Acknowledgment(
                    id=f"{GUARD}::cloudwatch_log_group_encrypted_check",
                    reason="Encrypted with the environment's data key, which lives in the "
                    "stateful stack: KmsKeyId is its ARN built around an SSM parameter, which "
                    "the rule cannot follow (tests/infra/test_catalogues.py checks every log "
                    "group's key policy).",
                )
            )
        # RetentionDays is a name enum in Python; the config holds days CloudWatch accepts.
        cfn_group = self.log_group.node.default_child
        assert isinstance(cfn_group, logs.CfnLogGroup)
        cfn_group.retention_in_days = config.log_retention_days
        durable_config = (
            lambda_.DurableConfig(
                execution_timeout=Duration.seconds(execution_timeout_s),
                retention_period=Duration.days(config.workflows.retention_days),
            )
            if execution_timeout_s is not None
            else None
        )
        self.function = lambda_.Function(
            self,
            "Function",
            description=f"Sluice {config.name}: {kind} {name}",
            runtime=RUNTIME,
            architecture=ARCH,
            handler=f"lambdas.{package}.{name}.handler.handler",
            code=code_bundle(package, name, source=source, routes=routes),
            layers=[layer] if layer is not None else None,
            # Immutable here: CDK would otherwise add an inline policy (tracing's X-Ray statement).
            role=self.role.without_policy_updates(),
            memory_size=sizing.memory_mb,
            timeout=Duration.seconds(sizing.timeout_s),
            reserved_concurrent_executions=sizing.reserved_concurrency,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            durable_config=durable_config,
            vpc=vpc,
            vpc_subnets=(
                ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS) if vpc else None
            ),
            security_groups=[security_group] if security_group is not None else None,
            environment={
                "POWERTOOLS_SERVICE_NAME": f"sluice-{name}",
                "POWERTOOLS_METRICS_NAMESPACE": "Sluice",
                "SLUICE_ENV": config.name,
                **environment,
            },
        )
        # Writing its own log streams (the role is ours: no AWS-managed basic execution policy).
        self.allow(["logs:CreateLogStream", "logs:PutLogEvents"], [self.log_group.log_group_arn])
        # The function must not exist before its permissions do (first invocations would fail).
        self.function.node.add_dependency(self.policy)
        if sizing.reserved_concurrency is None:
            for pack in ("NIST.800.53.R5", "HIPAA.Security"):
                Validations.of(self.function).acknowledge(
                    Acknowledgment(
                        id=f"{pack}-LambdaConcurrency",
                        reason=f"No concurrency is reserved for this {kind} in {config.name} "
                        f"({setting}.reserved_concurrency is None): every reservation comes out "
                        "of the account's concurrency quota, so an environment reserves only "
                        "where its steps must be protected from each other (prod's steps).",
                    )
                )

    def allow(
        self, actions: Sequence[str], resources: Sequence[str], *, reason: str | None = None
    ) -> None:
        """Allow `actions` on `resources` in the function's policy; a wildcard resource needs
        `reason`, which becomes its cdk-nag acknowledgement (stacks/grants.py)."""
        grants.allow(self.policy, actions, resources, reason=reason)


# Why a grant names the executions of a durable function with wildcards.
EXECUTIONS_REASON = (
    "Durable executions of this function only, of every version: an execution's ARN carries "
    "the version it started on (which changes with each deployment) and its name and id."
)


class _WorkflowFunction(_Function):
    """A function a durable execution runs, through its `live` alias, outside the VPC."""

    def __init__(self, scope: Construct, construct_id: str, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.alias = self.function.add_alias(catalog.WORKFLOW_ALIAS)
        _acknowledge_compute(self.function)

    @property
    def executions_arn(self) -> str:
        """Every durable execution of this function, as IAM's catalogue names the resource of
        the durable-execution actions (checkpoints, reads, stops, callbacks):
        `<function>:<version>/durable-execution/<name>/<id>`."""
        return f"{self.function.function_arn}:*/durable-execution/*"


class StepFunction(_WorkflowFunction):
    """One step handler Lambda (lambdas/steps/<name>), sized by `config.workflows.step(name)`."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name: str,
        config: EnvConfig,
        layer: lambda_.ILayerVersion,
        environment: Mapping[str, str],
        key: kms.IKey | None = None,
        routes: Path | None = None,
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            kind="step",
            name=name,
            package="steps",
            config=config,
            sizing=config.workflows.step(name),
            setting=f"workflows.steps.{name}",
            layer=layer,
            environment=environment,
            key=key,
            source=STEPS_ROOT / name,
            routes=routes,
        )


class DurableWorkflow(_WorkflowFunction):
    """The durable function `declaration` declares (its package under `root`): its ExecutionTimeout
    is the declared timeout and the failure handler's grace; it invokes the step Lambdas the
    declaration names (failure handler included), of `steps`, through their aliases."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        declaration: Declaration,
        config: EnvConfig,
        layer: lambda_.ILayerVersion,
        steps: Mapping[str, StepFunction],
        environment: Mapping[str, str],
        key: kms.IKey | None = None,
        root: Path = WORKFLOWS_ROOT,
        routes: Path | None = None,
    ) -> None:
        name = declaration.id
        steps = {s: steps[s] for s in declaration.lambdas}
        super().__init__(
            scope,
            construct_id,
            kind="workflow",
            name=name,
            package="workflows",
            config=config,
            sizing=config.workflows.orchestrator,
            setting="workflows.orchestrator",
            layer=layer,
            environment={
                **environment,
                # The SDK invokes steps through a qualified ARN (durable invokes need one).
                **{naming.step_variable(s): step.alias.function_arn for s, step in steps.items()},
            },
            key=key,
            execution_timeout_s=declaration.execution_timeout_s,
            source=root / name,
            routes=routes,
        )
        self.declaration = declaration
        self.steps = dict(steps)
        # Checkpoints are authorized on the execution ARN, `<function>:<version>/durable-execution/…`:
        # only a qualifier wildcard matches.
        # A policy of its own: it references the function, which depends on the main policy.
        self.checkpoints = iam.ManagedPolicy(
            self,
            "Checkpoints",
            description=f"{config.prefix} workflow {name}: its durable execution checkpoints",
            roles=[self.role],
        )
        grants.allow(
            self.checkpoints,
            ["lambda:CheckpointDurableExecution", "lambda:GetDurableExecutionState"],
            [self.executions_arn],
            reason=EXECUTIONS_REASON,
        )
        self.allow(["lambda:InvokeFunction"], [step.alias.function_arn for step in steps.values()])


class Workflows(Construct):
    """The workflows declared under `root` (but those that use the tasks queue: HeavySteps builds
    them) and every step Lambda any of them invokes; `aliases[name]` is what the worker invokes.
    `declarations` and `routes` (the routes document every bundle ships) are the root's."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        media: Media,
        events: QueuePair,
        key: kms.IKey | None = None,
        root: Path = WORKFLOWS_ROOT,
    ) -> None:
        super().__init__(scope, construct_id)
        self.root = root
        self.declarations = declared(root)
        self.routes = routes_file(self.declarations)
        self.layer = deps_layer(self, "Deps")
        table, topic = media.table, media.notifications
        # What the workflows and steps read (sluice.settings.LambdaSettings).
        env = LambdaSettings.render(
            media_bucket=media.bucket_name,
            jobs_table=table.table_name,
            notifications_topic=topic.topic_arn,
            events_queue_url=events.queue.queue_url,
            max_audio_seconds=config.workflows.max_audio_seconds,
            **({"media_key_arn": key.key_arn} if key is not None else {}),
        )
        transcription_jobs = (
            f"arn:{Aws.PARTITION}:transcribe:{config.region}:{Aws.ACCOUNT_ID}:"
            "transcription-job/sluice-*"
        )

        reasons = {
            UPLOADS: "Uploaded audio: any object under uploads/ (keys are user file names).",
            TRANSCRIBE_OUTPUT: "Transcribe's raw output of this pipeline's jobs, under "
            "tmp/transcribe/ only.",
            TRANSCRIPTS: "Transcript outputs, under transcripts/ only.",
        }

        def objects(fn: StepFunction, actions: list[str], prefix: str) -> None:
            """Allow `actions` on the media objects under `prefix`, and say why it is a wildcard."""
            fn.allow(actions, [media_objects_arn(config, prefix)], reason=reasons[prefix])

        def transcribe(fn: StepFunction, actions: list[str]) -> None:
            fn.allow(
                actions,
                [transcription_jobs],
                reason="Transcription jobs this pipeline names (sluice-<job id>) only.",
            )

        def step(name: str) -> StepFunction:
            return StepFunction(
                self,
                _camel(name),
                name=name,
                config=config,
                layer=self.layer,
                environment=env,
                key=key,
                routes=self.routes,
            )

        self.environment = env
        self.steps: dict[str, StepFunction] = {
            name: step(name) for name in step_names(self.declarations)
        }
        self._grant_media_steps(
            objects=objects,
            transcribe=transcribe,
            config=config,
            media=media,
            events=events,
            key=key,
        )
        s = self.steps
        if "on_failure" in s:  # the default failure handler: the job record and a notification
            s["on_failure"].allow(["dynamodb:UpdateItem"], [table.table_arn])
            s["on_failure"].allow(["sns:Publish"], [topic.topic_arn])
        # Steps that touch no data (e.g. post_webhook, check_transcription) need no key.
        touch_data = set(s) - {"check_transcription", "post_webhook"}
        if key is not None:
            # Bucket, table, topic and queue share the data key.
            for name in sorted(touch_data):
                s[name].allow(["kms:Decrypt", "kms:GenerateDataKey"], [key.key_arn])
            if "start_transcription" in s:
                # Transcribe writes its output encrypted with the key named in the request, with
                # the caller's permissions: "the role making the request must have permission to
                # use the specified KMS key" (StartTranscriptionJob, OutputEncryptionKMSKeyId),
                # and the guide names kms:Encrypt for that use; reading SSE-KMS input takes
                # kms:Decrypt (granted above), writing the SSE-KMS object kms:GenerateDataKey.
                s["start_transcription"].allow(["kms:Encrypt"], [key.key_arn])

        self.workflows: dict[str, DurableWorkflow] = {}
        for name, decl in self.declarations.items():
            if "tasks_queue" in decl.uses:
                continue  # stacks/heavy_steps.py builds it, with the worker's grants
            wf = self.workflow(decl, config=config, key=key)
            if "jobs_table" in decl.uses:
                wf.allow(["dynamodb:PutItem", "dynamodb:GetItem"], [table.table_arn])
            if key is not None:
                wf.allow(["kms:Decrypt", "kms:GenerateDataKey"], [key.key_arn])
            self.workflows[name] = wf
        self.aliases: dict[str, lambda_.IAlias] = {
            name: wf.alias for name, wf in self.workflows.items()
        }

    def workflow(
        self,
        decl: Declaration,
        *,
        config: EnvConfig,
        key: kms.IKey | None,
        scope: Construct | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> DurableWorkflow:
        """The durable workflow `decl` declares, invoking this construct's step Lambdas."""
        return DurableWorkflow(
            scope or self,
            _camel(decl.id),
            declaration=decl,
            config=config,
            layer=self.layer,
            steps=self.steps,
            environment=environment if environment is not None else self.environment,
            key=key,
            root=self.root,
            routes=self.routes,
        )

    def _grant_media_steps(
        self,
        *,
        objects: Any,
        transcribe: Any,
        config: EnvConfig,
        media: Media,
        events: QueuePair,
        key: kms.IKey | None,
    ) -> None:
        """What the media pipeline's steps touch, for those of them some workflow invokes."""
        s = self.steps
        if not {"fetch_audio_metadata", "start_transcription"} <= set(s):
            return
        objects(s["fetch_audio_metadata"], ["s3:GetObject", "s3:GetObjectVersion"], UPLOADS)
        # Transcribe reads the media and writes its output with the caller's permissions.
        transcribe(s["start_transcription"], ["transcribe:GetTranscriptionJob"])
        self._allow_transcription_start(
            s["start_transcription"], config=config, media=media, key=key
        )
        objects(s["start_transcription"], ["s3:GetObject", "s3:GetObjectVersion"], UPLOADS)
        objects(s["start_transcription"], ["s3:PutObject"], TRANSCRIBE_OUTPUT)
        transcribe(s["check_transcription"], ["transcribe:GetTranscriptionJob"])
        objects(s["parse_save_transcription"], ["s3:GetObject"], TRANSCRIBE_OUTPUT)
        objects(s["parse_save_transcription"], ["s3:PutObject"], TRANSCRIPTS)
        s["parse_save_transcription"].allow(["dynamodb:UpdateItem"], [media.table.table_arn])
        s["notify_user"].allow(["sns:Publish"], [media.notifications.topic_arn])
        s["notify_user"].allow(["sqs:SendMessage"], [events.queue.queue_arn])

    @staticmethod
    def _allow_transcription_start(
        fn: StepFunction, *, config: EnvConfig, media: Media, key: kms.IKey | None
    ) -> None:
        """StartTranscriptionJob has no resource type (IAM's catalogue): it is allowed on `*`,
        narrowed by its condition keys to output in the media bucket (with the data key)."""
        conditions: dict[str, str] = {"transcribe:OutputBucketName": media.bucket_name}
        if key is not None:
            conditions["transcribe:OutputEncryptionKMSKeyId"] = key.key_arn
        policy = iam.ManagedPolicy(
            fn,
            "TranscriptionStart",
            description=f"{config.prefix} step {fn.name}: start transcription jobs",
            roles=[fn.role],
        )
        grants.allow(
            policy,
            ["transcribe:StartTranscriptionJob"],
            ["*"],
            conditions={"StringEquals": conditions},
            reason="transcribe:StartTranscriptionJob has no resource-level permissions (IAM "
            "service authorization reference); the statement is limited by its condition "
            "keys to output in this environment's media bucket, encrypted with its data key.",
        )
        fn.function.node.add_dependency(policy)


def _camel(name: str) -> str:
    return "".join(part.title() for part in name.split("_"))
