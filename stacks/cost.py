"""What an environment costs: its standing monthly cost, read from the synthesized templates, and
the marginal cost of 1,000 reference jobs, next to the same pipeline on Step Functions.

The prices, the way each resource type is charged and every assumption are data
(`stacks/prices.toml`: each price with its unit, date and source). A resource type in a template
that the table neither prices nor lists as free fails (`UnpricedResource`), so a new kind of
resource cannot slip into the templates without a price. docs/cost.md is this module's output.

`python -m stacks.cost --env dev cdk.out` (`make cost ENV=dev`) prints the tables of the
environment synthesized into `cdk.out`; `--markdown` prints them as docs/cost.md holds them.
"""

from __future__ import annotations

import argparse
import math
import sys
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sluice.workflows import Declaration
from stacks import config
from stacks.declarations import declared
from stacks.summary import templates as read_templates

PRICES = Path(__file__).with_name("prices.toml")
# Step Functions Express runs at most five minutes (AWS Step Functions quotas).
EXPRESS_MAX_S = 300
# Express bills memory in 64 MB chunks and duration in 100 ms increments.
EXPRESS_MEMORY_GB = 64 / 1024
EXPRESS_INCREMENT_MS = 100
# A service call the state machine makes itself (a DynamoDB claim, an SQS send): assumed 50 ms.
DIRECT_TASK_S = 0.05


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Price(_Data):
    """One list price with its unit, the date its source stated it and the source."""

    usd: float = Field(ge=0)
    unit: str = Field(min_length=1)
    date: date
    source: str = Field(min_length=10)
    assumption: bool = False


class ResourceType(_Data):
    """How a CloudFormation resource type is charged."""

    kind: Literal["fixed", "usage", "free"]
    reason: str = Field(min_length=3)


class Assumptions(_Data):
    """Volumes no template states."""

    log_gb_per_month: float = Field(ge=0)
    flow_log_gb_per_month: float = Field(ge=0)
    flow_log_reject_fraction: float = Field(ge=0, le=1)
    nat_gb_per_month: float = Field(ge=0)
    root_volume_gb: int = Field(ge=1)
    long_poll_wait_s: int = Field(ge=1, le=20)
    queues_polled_per_instance: int = Field(ge=0)


class Job(_Data):
    """The reference job (a sermon through transcribe, transcode and embed)."""

    audio_minutes: float = Field(gt=0)
    audio_mb_per_minute: float = Field(gt=0)
    transcribe_ratio: float = Field(gt=0)
    polled_step: str
    first_poll_s: int = Field(ge=1)
    poll_factor: float = Field(ge=1)
    max_poll_s: int = Field(ge=1)
    hls_segment_s: int = Field(ge=1)
    hls_bitrates_kbps: tuple[int, ...] = Field(min_length=1)
    words_per_minute: float = Field(gt=0)
    chunk_words: int = Field(ge=1)
    transcode_audio_s_per_cpu_s: float = Field(gt=0)
    embed_chunks_per_cpu_s: float = Field(gt=0)
    instance_vcpus: int = Field(ge=1)
    events_per_job: int = Field(ge=0)
    tasks_per_job: int = Field(ge=0)
    sqs_requests_per_message: int = Field(ge=1)
    step_ms: int = Field(ge=1)
    slow_steps: dict[str, int] = {}
    replay_ms: int = Field(ge=1)
    wrapper_operations: int = Field(ge=0)
    kb_per_operation: float = Field(ge=0)
    s3_other_puts: int = Field(ge=0)
    s3_gets: int = Field(ge=0)
    dynamodb_writes: int = Field(ge=0)
    dynamodb_reads: int = Field(ge=0)
    kms_requests: int = Field(ge=0)
    nat_mb_per_job: float = Field(ge=0)
    transfer_out_mb_per_job: float = Field(ge=0)

    @property
    def audio_s(self) -> float:
        return self.audio_minutes * 60

    def polls(self) -> int:
        """Polls of the polled step until Transcribe is done (its backoff schedule)."""
        needed = self.audio_s * self.transcribe_ratio
        waited, delay, polls = 0.0, float(self.first_poll_s), 0
        while True:
            waited += int(delay)
            polls += 1
            if waited >= needed:
                return polls
            delay = min(delay * self.poll_factor, self.max_poll_s)

    def step_s(self, step: str) -> float:
        return self.slow_steps.get(step, self.step_ms) / 1000


class PriceTable(_Data):
    region: str
    currency: Literal["USD"]
    hours_per_month: float = Field(gt=0)
    prices: dict[str, Price]
    resource_types: dict[str, ResourceType]
    assumptions: Assumptions
    job: Job

    def price(self, name: str) -> Price:
        try:
            return self.prices[name]
        except KeyError:
            raise UnpricedResource(f"{PRICES.name}: no price {name!r}") from None

    def with_changes(self, *, job: Mapping[str, Any] = {}, **assumptions: Any) -> PriceTable:
        """A copy with other job settings or assumptions (validated again)."""
        doc = self.model_dump()
        doc["job"].update(job)
        doc["assumptions"].update({k: v for k, v in assumptions.items() if v is not None})
        return PriceTable.model_validate(doc)


class UnpricedResource(ValueError):
    """A resource type (or a price a resource needs) is missing from the price table."""


def load_table(path: Path = PRICES) -> PriceTable:
    return PriceTable.model_validate(tomllib.loads(path.read_text()))


@dataclass(frozen=True)
class Line:
    """One line of a cost table: what, how much of it, at what price, what it costs."""

    item: str
    quantity: float
    unit: str
    usd: float
    price: str = ""
    note: str = ""


def _line(table: PriceTable, item: str, quantity: float, price: str, note: str = "") -> Line:
    p = table.price(price)
    if p.assumption:
        note = f"{note}; price assumed" if note else "price assumed"
    return Line(item, quantity, p.unit, quantity * p.usd, price, note)


# -- the templates -----------------------------------------------------------------------------

Resource = tuple[str, Mapping[str, Any]]  # (type, properties)


def resources(stacks: Mapping[str, Mapping[str, Any]]) -> list[Resource]:
    """(type, properties) of every resource of every stack."""
    return [
        (r["Type"], r.get("Properties", {}))
        for template in stacks.values()
        for r in template.get("Resources", {}).values()
    ]


def check_priced(table: PriceTable, found: Iterable[Resource]) -> None:
    """UnpricedResource naming every type the table does not list, or a fixed type without a
    calculator here."""
    kinds = Counter(kind for kind, _ in found)
    unknown = sorted(set(kinds) - set(table.resource_types))
    if unknown:
        raise UnpricedResource(
            f"resource types without a price or a reason they are free: {', '.join(unknown)}; "
            f"list each in {PRICES.name} [resource_types] (fixed, usage or free, with the reason)"
        )
    uncalculated = sorted(
        k for k, t in table.resource_types.items() if t.kind == "fixed" and k not in FIXED
    )
    if uncalculated:
        raise UnpricedResource(f"fixed resource types without a calculator: {uncalculated}")


def _options(props: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    return {(o["Namespace"], o["OptionName"]): o["Value"] for o in props.get("OptionSettings", [])}


def _worker(table: PriceTable, found: list[Mapping[str, Any]]) -> list[Line]:
    lines = []
    a = table.assumptions
    hours = table.hours_per_month
    for props in found:
        options = _options(props)
        instance_type = options[("aws:ec2:instances", "InstanceTypes")].split(",")[0]
        count = int(options[("aws:autoscaling:asg", "MinSize")])
        note = f"{count} x {instance_type} (MinSize), on demand"
        lines.append(_line(table, "worker instances", count * hours, f"ec2.{instance_type}", note))
        lines.append(
            _line(
                table,
                "worker root volumes",
                count * a.root_volume_gb,
                "ebs.gp3",
                f"{count} x {a.root_volume_gb} GB (assumed size)",
            )
        )
        receives = count * a.queues_polled_per_instance * hours * 3600 / a.long_poll_wait_s
        lines.append(
            _line(
                table,
                "idle queue polling",
                receives,
                "sqs.request",
                f"{count} instance(s) x {a.queues_polled_per_instance} queues, a receive per "
                f"{a.long_poll_wait_s} s",
            )
        )
    return lines


def _count(item: str, price: str, note: str = "") -> Callable[[PriceTable, list[Any]], list[Line]]:
    def lines(table: PriceTable, found: list[Mapping[str, Any]]) -> list[Line]:
        return [_line(table, item, len(found), price, note)]

    return lines


def _hourly(item: str, price: str) -> Callable[[PriceTable, list[Any]], list[Line]]:
    def lines(table: PriceTable, found: list[Mapping[str, Any]]) -> list[Line]:
        n = len(found)
        return [_line(table, item, n * table.hours_per_month, price, f"{n} x 730 h")]

    return lines


def _nat(table: PriceTable, found: list[Mapping[str, Any]]) -> list[Line]:
    n, gb = len(found), table.assumptions.nat_gb_per_month
    return [
        _line(table, "NAT gateways", n * table.hours_per_month, "nat.hour", f"{n} x 730 h"),
        _line(table, "NAT data processed", gb, "nat.gb", f"{gb:g} GB a month (assumed)"),
    ]


def _broker(table: PriceTable, found: list[Mapping[str, Any]]) -> list[Line]:
    lines = []
    for props in found:
        nodes = 3 if props.get("DeploymentMode") == "CLUSTER_MULTI_AZ" else 1
        kind = props["HostInstanceType"]
        note = f"{nodes} x {kind} ({props.get('DeploymentMode', 'SINGLE_INSTANCE')})"
        lines.append(
            _line(table, "Amazon MQ broker", nodes * table.hours_per_month, f"mq.{kind}", note)
        )
    return lines


def _logs(table: PriceTable, found: list[Mapping[str, Any]]) -> list[Line]:
    gb = table.assumptions.log_gb_per_month
    days = [int(p.get("RetentionInDays", 30)) for p in found] or [30]
    months = sum(days) / len(days) / 30  # a month's logs kept this long, on average
    note = f"{len(found)} log groups, {gb:g} GB a month (assumed)"
    return [
        _line(table, "log ingestion", gb, "logs.ingest", note),
        _line(
            table,
            "log archive",
            gb * months,
            "logs.storage",
            f"kept {months * 30:.0f} days on average",
        ),
    ]


def _flow_logs(table: PriceTable, found: list[Mapping[str, Any]]) -> list[Line]:
    a = table.assumptions
    lines = []
    for props in found:
        traffic = props.get("TrafficType", "ALL")
        gb = a.flow_log_gb_per_month * (a.flow_log_reject_fraction if traffic == "REJECT" else 1)
        lines.append(
            _line(table, "VPC flow logs", gb, "logs.vended", f"TrafficType {traffic} (assumed GB)")
        )
    return lines


def _endpoints(table: PriceTable, found: list[Mapping[str, Any]]) -> list[Line]:
    interface = [p for p in found if p.get("VpcEndpointType", "Gateway") == "Interface"]
    gateways = len(found) - len(interface)
    lines = [Line("gateway endpoints", gateways, "endpoint", 0.0, note="free (S3, DynamoDB)")]
    if interface:
        zones = sum(len(p.get("SubnetIds", [])) or 1 for p in interface)
        lines.append(
            _line(
                table,
                "interface endpoints",
                zones * table.hours_per_month,
                "vpce.interface.hour",
                f"{len(interface)} endpoints in {zones} AZ-subnets",
            )
        )
    return lines


FIXED: dict[str, Callable[[PriceTable, list[Any]], list[Line]]] = {
    "AWS::ElasticBeanstalk::Environment": _worker,
    "AWS::EC2::NatGateway": _nat,
    "AWS::EC2::EIP": _hourly("public IPv4 addresses", "ipv4.hour"),
    "AWS::AmazonMQ::Broker": _broker,
    "AWS::KMS::Key": _count("KMS keys", "kms.key"),
    "AWS::CloudWatch::Alarm": _count("CloudWatch alarms", "cloudwatch.alarm", "free tier ignored"),
    "AWS::CloudWatch::Dashboard": _count("dashboards", "cloudwatch.dashboard", "free tier ignored"),
    "AWS::SecretsManager::Secret": _count("secrets", "secrets.secret"),
    "AWS::Logs::LogGroup": _logs,
    "AWS::EC2::FlowLog": _flow_logs,
    "AWS::EC2::VPCEndpoint": _endpoints,
}


def fixed_monthly(table: PriceTable, found: list[Resource]) -> list[Line]:
    """The environment's standing monthly cost, from its resources."""
    check_priced(table, found)
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for kind, props in found:
        by_type.setdefault(kind, []).append(props)
    lines: list[Line] = []
    for kind, calculate in FIXED.items():
        if kind in by_type:
            lines.extend(calculate(table, by_type[kind]))
    return lines


# -- the reference job -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pipeline:
    """The reference job's workflows, as declared (transcribe, then transcode and embed)."""

    transcribe: Declaration
    heavy: tuple[Declaration, ...]

    @classmethod
    def declared(cls, declarations: Mapping[str, Declaration] | None = None) -> Pipeline:
        d = declarations if declarations is not None else declared()
        return cls(d["transcribe_audio"], (d["transcode_audio"], d["embed_transcript"]))

    @property
    def all(self) -> tuple[Declaration, ...]:
        return (self.transcribe, *self.heavy)

    def step_invocations(self, job: Job) -> dict[str, int]:
        """Step Lambda invocations per job (the polled step once per poll)."""
        calls = {s: 1 for w in self.all for s in w.steps}
        if job.polled_step in calls:
            calls[job.polled_step] = job.polls()
        return calls


def _durable_counts(w: Declaration, job: Job) -> tuple[int, int]:
    """(durable operations, workflow function invocations) of one successful run of `w`."""
    polls = job.polls() if job.polled_step in w.steps else 0
    invokes = len(w.steps) + max(polls - 1, 0)
    waits = polls
    callbacks = 1 if "tasks_queue" in w.uses else 0
    claims = 1 if "jobs_table" in w.uses else 0
    # the start, each step (claim), invoke, wait and callback (with its submitter step)
    operations = 1 + claims + invokes + waits + 2 * callbacks + job.wrapper_operations
    # the first invocation and one more after each suspension (invoke, wait, callback)
    invocations = 1 + invokes + waits + callbacks
    return operations, invocations


def per_thousand_jobs(
    table: PriceTable, cfg: config.EnvConfig, pipeline: Pipeline
) -> tuple[list[Line], list[Line]]:
    """(work, orchestration): the marginal cost of 1,000 reference jobs on Lambda durable
    functions. `work` is what any orchestrator pays; `orchestration` is the durable part."""
    job, n = table.job, 1000
    steps = pipeline.step_invocations(job)
    gbs = sum(
        calls * cfg.workflows.step(s).memory_mb / 1024 * job.step_s(s) for s, calls in steps.items()
    )
    segments = math.ceil(job.audio_s / job.hls_segment_s) * len(job.hls_bitrates_kbps)
    hls_mb = sum(job.hls_bitrates_kbps) * job.audio_s / 8 / 1000
    audio_mb = job.audio_minutes * job.audio_mb_per_minute
    chunks = math.ceil(job.audio_minutes * job.words_per_minute / job.chunk_words)
    cpu_s = job.audio_s / job.transcode_audio_s_per_cpu_s + chunks / job.embed_chunks_per_cpu_s
    instance_h = cpu_s / job.instance_vcpus / 3600
    itype = cfg.worker.instance_type
    messages = job.events_per_job + job.tasks_per_job
    work = [
        _line(table, "SQS requests", n * messages * job.sqs_requests_per_message, "sqs.request",
              f"{messages} messages a job, send + receive + delete"),
        _line(table, "Transcribe", n * job.audio_minutes, "transcribe.minute",
              f"{job.audio_minutes:g} audio minutes a job"),
        _line(table, "step Lambda requests", n * sum(steps.values()), "lambda.request",
              f"{sum(steps.values())} a job ({job.polls()} polls)"),
        _line(table, "step Lambda duration", n * gbs, "lambda.arm.gbs",
              f"{job.step_ms} ms a step (assumed), memory from the config"),
        _line(table, "worker CPU (transcode, embed)", n * instance_h, f"ec2.{itype}",
              f"{cpu_s:.0f} CPU-s a job on {job.instance_vcpus} vCPUs (measured rates)"),
        _line(table, "S3 PUT", n * (segments + job.s3_other_puts), "s3.put",
              f"{segments} HLS segments + {job.s3_other_puts} objects a job"),
        _line(table, "S3 GET", n * job.s3_gets, "s3.get"),
        _line(table, "S3 storage (first month)", n * (audio_mb + hls_mb) / 1024, "s3.storage",
              f"{audio_mb:.0f} MB audio + {hls_mb:.0f} MB renditions a job"),
        _line(table, "DynamoDB writes", n * job.dynamodb_writes, "dynamodb.write"),
        _line(table, "DynamoDB reads", n * job.dynamodb_reads, "dynamodb.read"),
        _line(table, "KMS requests", n * job.kms_requests if cfg.data_key else 0, "kms.request",
              "under the environment's data key" if cfg.data_key else "no customer-managed key"),
        _line(table, "NAT data processed", n * job.nat_mb_per_job / 1024, "nat.gb",
              f"{job.nat_mb_per_job:g} MB of API calls a job"),
        _line(table, "data transfer out", n * job.transfer_out_mb_per_job / 1024, "transfer.out",
              "listeners' streaming not included"),
    ]  # fmt: skip
    ops = inv = 0
    for w in pipeline.all:
        o, i = _durable_counts(w, job)
        ops, inv = ops + o, inv + i
    orchestrator_gb = cfg.workflows.orchestrator.memory_mb / 1024
    written_gb = n * ops * job.kb_per_operation / 1024 / 1024
    retained_months = cfg.workflows.retention_days / 30
    orchestration = [
        _line(table, "durable operations", n * ops, "durable.operation", f"{ops} a job"),
        _line(table, "workflow function requests", n * inv, "lambda.request",
              f"{inv} invocations (replays) a job"),
        _line(table, "workflow function duration", n * inv * orchestrator_gb * job.replay_ms / 1000,
              "lambda.arm.gbs", f"{job.replay_ms} ms a replay (assumed)"),
        _line(table, "durable data written", written_gb, "durable.written",
              f"{job.kb_per_operation:g} KB an operation (assumed)"),
        _line(table, "durable data retained", written_gb * retained_months, "durable.retained",
              f"kept {cfg.workflows.retention_days} days"),
    ]  # fmt: skip
    return work, orchestration


def standard_transitions(w: Declaration, job: Job) -> int:
    """State transitions of one successful run of `w` as a Step Functions Standard workflow:
    a Task per step (a DynamoDB task for the claim, an SQS `.waitForTaskToken` task for heavy
    work), a Wait and a Choice around each poll, and the final Succeed."""
    polls = job.polls() if job.polled_step in w.steps else 0
    tasks = len(w.steps) + max(polls - 1, 0)
    tasks += (1 if "jobs_table" in w.uses else 0) + (1 if "tasks_queue" in w.uses else 0)
    return tasks + 2 * polls + 1


def express_runs(pipeline: Pipeline, job: Job) -> list[tuple[str, float]]:
    """(what, seconds) of each Express execution one job needs: each run ends before anything
    long (Transcribe, a heavy task) and an event starts the next."""
    t = pipeline.transcribe
    polled = job.polled_step
    before = [s for s in t.steps[: t.steps.index(polled)]] if polled in t.steps else list(t.steps)
    after = [s for s in t.steps[t.steps.index(polled) + 1 :]] if polled in t.steps else []
    runs = [
        (f"{t.id}: claim, {', '.join(before)}", DIRECT_TASK_S + sum(job.step_s(s) for s in before)),
        (f"{t.id}: on Transcribe's state change, {', '.join(after)}",
         sum(job.step_s(s) for s in after)),
    ]  # fmt: skip
    for w in pipeline.heavy:
        runs.append((f"{w.id}: send the task", DIRECT_TASK_S))
        runs.append((f"{w.id}: on the task's result, record it", DIRECT_TASK_S))
    return runs


def step_functions(
    table: PriceTable, pipeline: Pipeline
) -> tuple[list[Line], list[Line], list[tuple[str, float]]]:
    """(Standard, Express, Express runs): the orchestration of 1,000 jobs on Step Functions."""
    job, n = table.job, 1000
    transitions = sum(standard_transitions(w, job) for w in pipeline.all)
    standard = [
        _line(table, "state transitions", n * transitions, "sfn.standard.transition",
              f"{transitions} a job"),
    ]  # fmt: skip
    runs = express_runs(pipeline, job)
    billed_s = sum(
        math.ceil(s * 1000 / EXPRESS_INCREMENT_MS) * EXPRESS_INCREMENT_MS / 1000 for _, s in runs
    )
    express = [
        _line(table, "Express executions", n * len(runs), "sfn.express.request",
              f"{len(runs)} a job"),
        _line(table, "Express duration", n * billed_s * EXPRESS_MEMORY_GB, "sfn.express.gbs",
              f"{billed_s:.1f} s a job at 64 MB"),
    ]  # fmt: skip
    return standard, express, runs


# -- output ------------------------------------------------------------------------------------


def total(lines: Iterable[Line]) -> float:
    return sum(line.usd for line in lines)


def _table(lines: list[Line], total_label: str) -> list[str]:
    out = ["| item | quantity | unit | USD | note |", "|---|---:|---|---:|---|"]
    for line in lines:
        out.append(
            f"| {line.item} | {line.quantity:,.2f} | {line.unit} | {line.usd:,.2f} | {line.note} |"
        )
    out.append(f"| **{total_label}** | | | **{total(lines):,.2f}** | |")
    return out


def report(table: PriceTable, cfg: config.EnvConfig, found: list[Resource]) -> str:
    """The environment's cost tables as Markdown (docs/cost.md's section for it)."""
    pipeline = Pipeline.declared()
    fixed = fixed_monthly(table, found)
    work, durable = per_thousand_jobs(table, cfg, pipeline)
    standard, express, runs = step_functions(table, pipeline)
    job = table.job
    out = [
        f"### {cfg.name} ({cfg.region}; priced at {table.region} list prices)",
        "",
        "Fixed, a month:",
        "",
        *_table(fixed, "fixed a month"),
        "",
        f"Per 1,000 jobs ({job.audio_minutes:g}-minute sermon, {job.polls()} polls of "
        f"`{job.polled_step}`), the work any orchestrator pays:",
        "",
        *_table(work, "work per 1,000 jobs"),
        "",
        "Orchestration per 1,000 jobs, side by side (the work above is the same for each):",
        "",
        "| orchestrator | orchestration | total per 1,000 jobs |",
        "|---|---:|---:|",
        *(
            f"| {name} | {total(lines):,.2f} | {total(work) + total(lines):,.2f} |"
            for name, lines in (
                ("Lambda durable functions (today)", durable),
                ("Step Functions Standard", standard),
                (f"Step Functions Express, split into {len(runs)} runs", express),
            )
        ),
        "",
        "Lambda durable functions:",
        "",
        *_table(durable, "durable functions per 1,000 jobs"),
        "",
        "Step Functions Standard:",
        "",
        *_table(standard, "Standard per 1,000 jobs"),
        "",
        "Step Functions Express (" + "; ".join(f"{what}: {s:.2f} s" for what, s in runs) + "):",
        "",
        *_table(express, "Express per 1,000 jobs"),
    ]
    every = [*fixed, *work, *durable, *standard, *express]
    assumed = sorted({ln.price for ln in every if ln.price and table.price(ln.price).assumption})
    if assumed:
        out += ["", f"Prices assumed (no source confirmed them): {', '.join(assumed)}."]
    return "\n".join(out)


def markers(env: str) -> tuple[str, str]:
    """The lines around an environment's section of docs/cost.md."""
    return f"<!-- cost:{env}:begin -->", f"<!-- cost:{env}:end -->"


def section(text: str, env: str) -> str:
    """The environment's generated section of docs/cost.md (without its markers)."""
    begin, end = markers(env)
    if begin not in text or end not in text:
        raise ValueError(f"docs/cost.md has no {begin} ... {end} section")
    return text.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def replace_section(text: str, env: str, body: str) -> str:
    begin, end = markers(env)
    section(text, env)  # ValueError when the markers are missing
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    return f"{head}{begin}\n{body}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path, help="the cdk.out of one synthesized environment")
    parser.add_argument("--env", default="dev")
    parser.add_argument("--audio-minutes", type=float, help="the reference job's audio length")
    parser.add_argument("--log-gb", type=float, help="log GB ingested a month")
    parser.add_argument("--nat-gb", type=float, help="GB through the NAT gateways a month")
    parser.add_argument(
        "--write", type=Path, help="replace the environment's section of this file (docs/cost.md)"
    )
    args = parser.parse_args(argv)
    cfg = config.load(args.env)
    table = load_table()
    job = {"audio_minutes": args.audio_minutes} if args.audio_minutes else {}
    table = table.with_changes(job=job, log_gb_per_month=args.log_gb, nat_gb_per_month=args.nat_gb)
    stacks = read_templates(args.outdir)
    if not stacks:
        print(f"no stacks found under {args.outdir}", file=sys.stderr)
        return 1
    try:
        text = report(table, cfg, resources(stacks))
    except UnpricedResource as exc:
        print(f"sluice cost: {exc}", file=sys.stderr)
        return 1
    if args.write:
        args.write.write_text(replace_section(args.write.read_text(), cfg.name, text))
        print(f"wrote {cfg.name}'s tables to {args.write}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
