"""Benchmark: Sluice's drift-free scheduler vs the naive hatchery cycle, side by side.

Both run at the same time against the same private RabbitMQ node (Debian's rabbitmq-server):
- sluice: worker.scheduler (token due at t0 + n*period, whatever the run takes);
- naive: the classic cycle: a token waits `period` in a TTL queue, is dead-lettered to a processor
  queue, the consumer runs the task and only then re-publishes the token with TTL `period`.

Phase 1 (fidelity): period P, each run takes `work` (default 60 % of P), N cycles. Reports
ticks/s per consumer, lateness p50/p99 against the ideal grid (first tick + n*P) and the drift
after N cycles ((start_N - start_0) - N*P).
Phase 2 (rate): a 1 ms period with no work for a few seconds: the most ticks/s one consumer gets.
Phase 3 (many): N tasks at period P on one consumer (one scheduler process; the naive cycle on
one connection), their ticks all due at once or spread over the period (`--many 1000x1,1000x1s`),
each side in its own process: ticks/s, lateness p50/p99 against each tick's slot, CPU per tick
(the process's user + system time over the window), the broker's CPU over the same window, spare
tokens seeded; `--ledger-run` once more with the DynamoDB ledger (TableLedger) on moto's server,
so the claim's cost shows.

    make bench-scheduler      # or: .venv/bin/python bench/scheduler_bench.py --cycles 200
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402

from devtools.moto_server import moto_server  # noqa: E402
from devtools.rabbitmq import RabbitNode  # noqa: E402
from devtools.stats import percentile  # noqa: E402
from sluice.scheduling.names import STATUS_SUCCESS_EVERY_S, Names, expiration_ms  # noqa: E402
from sluice.scheduling.registry import PeriodicTask, Registry, Tick  # noqa: E402
from sluice.scheduling.schedule import Every  # noqa: E402
from worker.scheduler.broker_metrics import Lifecycle  # noqa: E402
from worker.scheduler.runner import Scheduler, freeze_heap  # noqa: E402


def run_sluice(
    url: str, period: float, work: float, cycles: int, out: list[tuple[float, float]]
) -> None:
    done = threading.Event()

    def action(tick: Tick) -> None:
        if len(out) >= cycles:
            done.set()
            return
        out.append((tick.due, time.time()))
        if work:
            time.sleep(work)

    names = Names(f"bench-sluice-{time.time_ns()}")
    registry = Registry([PeriodicTask("bench", Every(period), action=action)])
    with Scheduler(registry, url, names=names):
        done.wait(cycles * (period + work) * 3 + 30)


def run_naive(
    url: str, period: float, work: float, cycles: int, out: list[tuple[float, float]]
) -> None:
    prefix = f"bench-naive-{time.time_ns()}"
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare(f"{prefix}.processor", "direct", durable=True)
    quorum = {"x-queue-type": "quorum"}
    ch.queue_declare(
        f"{prefix}.hatchery",
        durable=True,
        arguments={
            **quorum,
            "x-dead-letter-exchange": f"{prefix}.processor",
            "x-dead-letter-routing-key": "bench",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    ch.queue_declare(f"{prefix}.run", durable=True, arguments=quorum)
    ch.queue_bind(f"{prefix}.run", f"{prefix}.processor", "bench")
    ch.confirm_delivery()
    ch.basic_qos(prefetch_count=1)
    props = pika.BasicProperties(delivery_mode=2, expiration=expiration_ms(period))
    ch.basic_publish("", f"{prefix}.hatchery", b"token", props)
    for method, _, _ in ch.consume(f"{prefix}.run", inactivity_timeout=30):
        if method is None or len(out) >= cycles:
            break
        now = time.time()
        # The naive cycle has no schedule of its own: its ideal is first tick + n * period.
        out.append((out[0][0] + len(out) * period if out else now, now))
        if work:
            time.sleep(work)
        # The naive cycle: the next tick counts from the end of this run.
        ch.basic_publish("", f"{prefix}.hatchery", b"token", props)
        ch.basic_ack(method.delivery_tag)
    conn.close()


def summarize(runs: list[tuple[float, float]], period: float) -> dict[str, float]:
    """`runs`: (slot the tick belongs to, time it started) for each run, in order."""
    if len(runs) < 2:
        return {"cycles": len(runs)}
    late = [(start - slot) * 1000 for slot, start in runs]
    elapsed = runs[-1][1] - runs[0][1]
    slots = round((runs[-1][0] - runs[0][0]) / period)
    return {
        "cycles": len(runs),
        "ticks_per_s_per_consumer": round((len(runs) - 1) / elapsed, 2),
        "lateness_p50_ms": round(percentile(late, 50), 2),
        "lateness_p99_ms": round(percentile(late, 99), 2),
        # How far the N-th tick slid from where the first tick's schedule put it.
        "drift_after_n_ms": round(late[-1] - late[0], 2),
        "missed_slots": slots - len({slot for slot, _ in runs[1:]}),
        # Slots run more than once (a spare token must never cause one: the tick ledger).
        "run_twice": len(runs) - len({slot for slot, _ in runs}),
    }


def side_by_side(url: str, period: float, work: float, cycles: int) -> dict[str, dict]:
    results: dict[str, list[tuple[float, float]]] = {"sluice": [], "naive": []}
    threads = [
        threading.Thread(target=run_sluice, args=(url, period, work, cycles, results["sluice"])),
        threading.Thread(target=run_naive, args=(url, period, work, cycles, results["naive"])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {name: summarize(starts, period) for name, starts in results.items()}


# --- Phase 3 (many tasks on one consumer) ------------------------------------------------------
# Each side runs in its own process, so its CPU time (user + system, all threads) is its own.


class _Counting(Lifecycle):
    """Lifecycle counts plus a tally of every event (reseeded, duplicate, …) for the report."""

    def __init__(self) -> None:
        super().__init__()
        self.events: Counter[str] = Counter()

    def record(self, task: str, event: str, fields: Any) -> None:
        super().record(task, event, fields)
        self.events[event] += 1


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _user_s() -> float:
    """This process's user CPU seconds: its Python, which runs on one core at a time (the GIL),
    where system time (the sockets, the threads' wake-ups) does not hold it."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def _proc_cpu_s(pid: int | None) -> float:
    """Another process's user + system CPU seconds (the broker's Erlang VM), from /proc."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu_s() -> dict[str, float]:
    """This process's CPU seconds by thread role (the scheduler's threads are named: see
    Scheduler._spawn and the Consumer's pools), from /proc/self/task: where a tick's CPU goes."""
    roles: Counter[str] = Counter()
    tick = os.sysconf("SC_CLK_TCK")
    for thread in threading.enumerate():
        with contextlib.suppress(OSError, TypeError):
            fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
            utime, stime = fields.rsplit(")", 1)[1].split()[11:13]
            role = thread.name.split("_")[0].rstrip("0123456789-")
            roles[role] += (int(utime) + int(stime)) / tick
    return dict(roles)


def _broker_pid(node: RabbitNode) -> int | None:
    """The node's Erlang VM (rabbitmq-server writes its pid where RABBITMQ_PID_FILE says)."""
    with contextlib.suppress(OSError, ValueError):
        return int(Path(node.env["RABBITMQ_PID_FILE"]).read_text().strip())
    return None


def _window(
    runs: list[tuple[str, float, float]], start: float, end: float, cpu_s: float
) -> dict[str, Any]:
    """Ticks that started in [start, end): rate, lateness against their slot, CPU per tick."""
    inside = [(task, slot, at) for task, slot, at in runs if start <= at < end]
    late = [(at - slot) * 1000 for _, slot, at in inside]
    keys = [(task, round(slot * 1000)) for task, slot, _ in runs]
    n = len(inside)
    return {
        "ticks": n,
        "ticks_per_s": round(n / (end - start), 1),
        "lateness_p50_ms": round(percentile(late, 50), 2) if late else None,
        "lateness_p99_ms": round(percentile(late, 99), 2) if late else None,
        "cpu_ms_per_tick": round(cpu_s * 1000 / n, 3) if n else None,
        "cpu_pct": round(cpu_s / (end - start) * 100, 1),
        "run_twice": len(keys) - len(set(keys)),
    }


def _count_gaps(counted: list[tuple[float, str]], start: float, end: float) -> dict[str, Any]:
    """The reconciler's counts in [start, end): per second, and the seconds between two counts of
    one task (p50, max): a token lost from its hatchery is seen only at its task's next count."""
    last: dict[str, float] = {}
    gaps, n = [], 0
    for at, name in sorted(counted):
        if start <= at < end:
            n += 1
            if name in last:
                gaps.append(at - last[name])
        last[name] = at
    return {
        "counts_per_s": round(n / (end - start), 1),
        "count_gap_p50_s": round(percentile(gaps, 50), 3) if gaps else None,
        "count_gap_max_s": round(max(gaps), 3) if gaps else None,
    }


def _offset(i: int, tasks: int, period: float, spread: bool) -> float:
    """Task i's place in the period: all at 0 (aligned: every task's tick falls due at the same
    instant, a burst) or spread evenly over the period."""
    return round(period * i / tasks, 6) if spread else 0.0


def many_sluice(
    url: str,
    tasks: int,
    period: float,
    seconds: float,
    warmup: float,
    ledger_url: str | None,
    spread: bool,
    broker_pid: int | None = None,
    ledger_client: str = "lean",
    hold_s: float = 0.0,
) -> dict[str, Any]:
    runs: list[tuple[str, float, float]] = []
    # When the Consumer's I/O thread last handed each task's token to a handler, and for each
    # run (start, due, delivered): a tick's lateness is the broker's part (due -> delivered) plus
    # the consumer's (delivered -> action started).
    delivered: dict[str, float] = {}
    hops: list[tuple[float, float, float]] = []

    def action(tick: Tick) -> None:
        now = time.time()
        runs.append((tick.task, tick.due, now))
        hops.append((now, tick.due, delivered.get(tick.task, now)))

    names = Names(f"bench-many-{time.time_ns()}")
    registry = Registry(
        [
            PeriodicTask(
                f"t{i:05d}", Every(period, _offset(i, tasks, period, spread)), action=action
            )
            for i in range(tasks)
        ]
    )
    ledger = None
    if ledger_url:
        ledger = _table_ledger(ledger_url, names.prefix, ledger_client)
    scheduler = Scheduler(registry, url, names=names, ledger=ledger, hold_s=hold_s)
    counting = _Counting()
    for part in (*scheduler.runners, scheduler.reconciler):
        part.lifecycle = counting
    # When each task's tokens were counted (the reconciler's passive declares): how often, and
    # how far apart for one task (a lost token is seen at the next count).
    counted: list[tuple[float, str]] = []
    inventories = scheduler.reconciler.inventories

    def counting_inventories(names: list[str]) -> dict[str, int]:
        at = time.time()
        counted.extend((at, name) for name in names)
        return inventories(names)

    scheduler.reconciler.inventories = counting_inventories  # type: ignore[method-assign]
    handlers = scheduler.consumer.handlers
    submit = handlers.submit

    def noting_submit(fn: Any, runner: Any, *args: Any) -> Any:
        delivered[runner.task.name] = time.time()
        return submit(fn, runner, *args)

    handlers.submit = noting_submit  # type: ignore[method-assign]
    began = time.monotonic()
    with scheduler:
        freeze_heap()  # as the scheduler's process does once started (worker/scheduler/__main__.py)
        # Until every task ticked once (its first token seeded), then the warm-up.
        while len({task for task, _, _ in runs}) < tasks and time.monotonic() - began < 600:
            time.sleep(0.2)
        ready = time.monotonic() - began
        time.sleep(warmup)
        seeded = dict(counting.events)
        threads0 = _thread_cpu_s()
        start, cpu0, broker0, user0 = time.time(), _cpu_s(), _proc_cpu_s(broker_pid), _user_s()
        time.sleep(seconds)
        end, cpu1, broker1, user1 = time.time(), _cpu_s(), _proc_cpu_s(broker_pid), _user_s()
        threads1 = _thread_cpu_s()
        during = counting.events.copy()
        during.subtract(seeded)
    result = _window(list(runs), start, end, cpu1 - cpu0)
    result["startup_s"] = round(ready, 1)
    inside = [(due, at, now) for now, due, at in hops if start <= now < end]
    for part, spans in (
        ("broker", [(at - due) * 1000 for due, at, _ in inside]),
        ("consumer", [(now - at) * 1000 for _, at, now in inside]),
    ):
        if spans:
            result[f"{part}_part_p50_ms"] = round(percentile(spans, 50), 2)
            result[f"{part}_part_p99_ms"] = round(percentile(spans, 99), 2)
    result.update(_count_gaps(list(counted), start, end))
    if result["ticks"]:
        result["user_ms_per_tick"] = round((user1 - user0) * 1000 / result["ticks"], 3)
        result["cpu_ms_per_tick_by_thread"] = {
            role: round((cpu - threads0.get(role, 0.0)) * 1000 / result["ticks"], 3)
            for role, cpu in sorted(threads1.items())
        }
    # The broker serves both sides at once: its CPU over Sluice's window, not Sluice's alone.
    result["broker_cpu_pct"] = round((broker1 - broker0) / (end - start) * 100, 1)
    result["events"] = {k: v for k, v in during.items() if v}
    result["reseeded"] = during["reseeded"]
    return result


# boto3's clients; worker/invoke.py's lean ones (the scheduler's)
CLIENTS = ("boto3", "lean")


def _on_moto(service: str, endpoint: str, kind: str) -> tuple[Any, Any]:
    """boto3's client of `service` on moto's server at `endpoint` (it sets things up), and the
    client of `kind` (CLIENTS) that the measured calls go through."""
    import boto3
    from botocore.credentials import Credentials

    from devtools.local.resources import REGION
    from worker.invoke import SQS, DynamoDB

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(var, "moto")  # moto takes any; never real credentials
    boto = boto3.client(service, region_name=REGION, endpoint_url=endpoint)
    if kind == "boto3":
        return boto, boto
    lean = {"dynamodb": DynamoDB, "sqs": SQS}[service]
    return boto, lean(region=REGION, credentials=Credentials("moto", "moto"), endpoint_url=endpoint)


def _table_ledger(endpoint: str, prefix: str, kind: str) -> Any:
    """The DynamoDB ledger (TableLedger) in the coordination table on moto's server at
    `endpoint`, as a local run names it (each run's items apart by their prefix), through the
    `kind` of client (CLIENTS)."""
    from botocore.exceptions import ClientError

    from devtools.local.resources import ENV, create_coordination_table
    from sluice import naming
    from worker.scheduler.ledger import TableLedger

    boto, client = _on_moto("dynamodb", endpoint, kind)
    table = naming.coordination_table(ENV)
    with contextlib.suppress(ClientError):  # made by an earlier run on the same server
        create_coordination_table(boto, table)
    return TableLedger(client, table, prefix)


def _sender(endpoint: str, kind: str) -> Any:
    """An event task's send (sluice/producer.py's send_event) to a new queue on moto's server,
    through the `kind` of SQS client (CLIENTS)."""
    from sluice.producer import send_event

    boto, client = _on_moto("sqs", endpoint, kind)
    url = boto.create_queue(QueueName=f"bench-send-{kind}-{time.time_ns()}")["QueueUrl"]
    return lambda event: send_event(client, url, event)


def client_calls(n: int) -> dict[str, Any]:
    """What a tick's AWS calls cost the scheduler's calling thread through each of CLIENTS,
    against moto's server, over `n` ticks: the tick ledger's two writes (claim, finish; every
    tick) and an event task's send (SendMessage; every event tick). The thread's own CPU
    (time.thread_time, so not moto's, which runs in other threads) and the wall time, per tick."""
    from sluice.catalog import ROUTES
    from sluice.envelope import Event

    name = next(iter(ROUTES))  # an event a workflow takes, as a task's tick sends
    out: dict[str, Any] = {"ticks": n, "ledger": {}, "send": {}}
    with moto_server() as endpoint:
        for kind in CLIENTS:
            ledger = _table_ledger(endpoint, f"bench-ledger-{time.time_ns()}", kind)
            send = _sender(endpoint, kind)

            def tick(i: int, ledger: Any = ledger) -> None:
                claimed = ledger.claim("t", 1000 * (i + 1), 1000 * (i + 1), 10_000, "bench")
                assert claimed is not None and ledger.finish("t", claimed.fence, "done")

            def event(i: int, send: Any = send) -> None:
                send(Event(name=name, data={"i": i}, id=f"tick-bench-{i}"))

            for part, call in (("ledger", tick), ("send", event)):
                for i in range(50):  # connections, signing keys, botocore's loaders
                    call(i)
                cpu0, wall0 = time.thread_time(), time.perf_counter()
                for i in range(50, 50 + n):
                    call(i)
                cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
                out[part][kind] = {
                    "cpu_ms_per_tick": round(cpu * 1000 / n, 3),
                    "wall_ms_per_tick": round(wall * 1000 / n, 3),
                }
    return out


def many_naive(url: str, tasks: int, period: float, seconds: float, warmup: float) -> dict:
    """The classic cycle for `tasks` tasks on one consumer: each token waits `period` in its own
    TTL queue, then the consumer runs it and publishes the next one (confirmed), then acks."""
    prefix = f"bench-naive-many-{time.time_ns()}"
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare(f"{prefix}.processor", "direct", durable=True)
    quorum = {"x-queue-type": "quorum"}
    props = pika.BasicProperties(delivery_mode=2, expiration=expiration_ms(period))
    runs: list[tuple[str, float, float]] = []
    first: dict[str, float] = {}
    count: Counter[str] = Counter()
    for i in range(tasks):
        task = f"t{i:05d}"
        ch.queue_declare(
            f"{prefix}.hatchery.{task}",
            durable=True,
            arguments={
                **quorum,
                "x-dead-letter-exchange": f"{prefix}.processor",
                "x-dead-letter-routing-key": task,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        ch.queue_declare(f"{prefix}.run.{task}", durable=True, arguments=quorum)
        ch.queue_bind(f"{prefix}.run.{task}", f"{prefix}.processor", task)
    ch.confirm_delivery()
    ch.basic_qos(prefetch_count=1)

    def on_token(channel: Any, method: Any, _props: Any, body: bytes) -> None:
        task = body.decode()
        now = time.time()
        # The naive cycle has no schedule of its own: its ideal is first tick + n * period.
        slot = first.setdefault(task, now) + count[task] * period
        count[task] += 1
        runs.append((task, slot, now))
        # The next tick counts from the end of this run.
        channel.basic_publish("", f"{prefix}.hatchery.{task}", body, props)
        channel.basic_ack(method.delivery_tag)

    for i in range(tasks):
        task = f"t{i:05d}"
        ch.basic_publish("", f"{prefix}.hatchery.{task}", task.encode(), props)
        ch.basic_consume(f"{prefix}.run.{task}", on_message_callback=on_token)
    began = time.monotonic()
    while len(first) < tasks and time.monotonic() - began < 600:
        conn.process_data_events(time_limit=0.2)
    deadline = time.monotonic() + warmup
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.2)
    start, cpu0 = time.time(), _cpu_s()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.2)
    end, cpu1 = time.time(), _cpu_s()
    conn.close()
    return _window(runs, start, end, cpu1 - cpu0)


def _child(target: Any, args: tuple[Any, ...], out: Any) -> None:
    try:
        out.put(target(*args))
    except Exception as exc:  # the report says which side failed, the other still counts
        out.put({"error": repr(exc)})


def many_side_by_side(
    url: str,
    tasks: int,
    period: float,
    seconds: float,
    warmup: float,
    ledger_url: str | None = None,
    naive: bool = True,
    spread: bool = False,
    broker_pid: int | None = None,
    ledger_client: str = "lean",
    hold_s: float = 0.0,
) -> dict[str, Any]:
    """Sluice and (optionally) the naive cycle, each `tasks` tasks at `period` on one consumer,
    at the same time, each in its own process (CPU per tick is that process's alone)."""
    ctx = multiprocessing.get_context("spawn")
    jobs: dict[str, tuple[Any, tuple[Any, ...]]] = {
        "sluice": (
            many_sluice,
            (
                url,
                tasks,
                period,
                seconds,
                warmup,
                ledger_url,
                spread,
                broker_pid,
                ledger_client,
                hold_s,
            ),
        )
    }
    if naive:
        jobs["naive"] = (many_naive, (url, tasks, period, seconds, warmup))
    procs, queues = {}, {}
    for name, (target, args) in jobs.items():
        queues[name] = ctx.Queue()
        procs[name] = ctx.Process(target=_child, args=(target, args, queues[name]), daemon=True)
        procs[name].start()
    results = {name: queues[name].get() for name in jobs}
    for proc in procs.values():
        proc.join()
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return results


OPS_IDLE_S = 5.0  # the broker's idle CPU rate is read over this long before each operation
OPS_SETTLE_S = 5.0  # the new topology's queues settle this long before the idle rate with them
OPS_FOLLOW_UP_S = 1.0  # the broker's own follow-up of a run of operations (quorum log writes)


def _idle_rate(pid: int | None) -> float:
    """The broker's CPU (cores) while nothing is asked of it, read over OPS_IDLE_S."""
    before = _proc_cpu_s(pid)
    time.sleep(OPS_IDLE_S)
    return (_proc_cpu_s(pid) - before) / OPS_IDLE_S


def _per_op_ms(pid: int | None, n: int, run: Any) -> float:
    """The broker's CPU per operation, in ms: its Erlang VM's CPU while `run` does n operations
    (and until the broker has finished them), less its idle rate read just before."""
    idle = _idle_rate(pid)
    began, cpu0 = time.monotonic(), _proc_cpu_s(pid)
    run()
    time.sleep(OPS_FOLLOW_UP_S)  # the broker's own follow-up (quorum log writes, dead-lettering)
    return (_proc_cpu_s(pid) - cpu0 - idle * (time.monotonic() - began)) * 1000 / n


def broker_ops(url: str, pid: int | None, tasks: int, n: int) -> dict[str, Any]:
    """What each broker operation of a tick costs the broker, on the scheduler's own topology
    (worker/scheduler/topology.py) for `tasks` tasks: the token's path (a confirmed persistent
    publish into its quorum hatchery, the TTL's at-least-once dead-lettering into the quorum
    processor queue, the delivery and the ack), a lifecycle event by where it is routed, the
    reconciler's count (a passive declare), and the topology's idle cost."""
    from worker.scheduler.runner import HANDLERS, LISTENED_EVENTS, event_properties, token_route
    from worker.scheduler.topology import declare

    names = Names(f"bench-ops-{time.time_ns()}")
    specs = [PeriodicTask(f"t{i:05d}", Every(1.0), action=lambda tick: None) for i in range(tasks)]
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    out: dict[str, Any] = {"tasks": tasks, "operations": n}
    out["idle_cpu_pct_before"] = round(_idle_rate(pid) * 100, 1)
    declare(channel, names, specs)
    time.sleep(OPS_SETTLE_S)
    out["idle_cpu_pct_topology"] = round(_idle_rate(pid) * 100, 1)
    # The reconciler's listener, bound as Reconciler._lead binds it, consumed with auto-ack.
    listen = names.listener("bench")
    channel.queue_declare(listen, exclusive=True, auto_delete=True)
    for event in sorted(LISTENED_EVENTS):
        channel.queue_bind(listen, names.control_exchange, routing_key=f"*.{event}")
    heard = [0]
    channel.basic_consume(listen, lambda *_: heard.__setitem__(0, heard[0] + 1), auto_ack=True)
    body = json.dumps({"task": "t", "event": "e", "at": 1.0, "due": 1.0}).encode()

    def events(key: str, wait_heard: bool, *, kept: bool = False) -> Any:
        # kept: with the task's status key in its BCC, as a runner sends an outcome its status
        # queue keeps
        def run() -> None:
            heard[0] = 0
            for i in range(n):
                task = f"t{i % tasks:05d}"
                props = event_properties(names.status_key(task) if kept else None)
                channel.basic_publish(names.control_exchange, f"{task}.{key}", body, props)
            while wait_heard and heard[0] < n:
                connection.process_data_events(time_limit=0.1)
            channel.queue_declare(names.dead_queue, passive=True)  # after every publish

        return run

    out["event_routed_nowhere_ms"] = _per_op_ms(pid, n, events("late", False))
    # `scheduled`: a tick's event the reconciler's listener is bound to (LISTENED_EVENTS); one
    # it is not bound to would never be heard, and this would wait for it for ever.
    out["event_to_listener_ms"] = _per_op_ms(pid, n, events("scheduled", True))
    out["event_to_status_queue_ms"] = _per_op_ms(pid, n, events("succeeded", False, kept=True))

    def counts() -> None:
        for i in range(n):
            channel.queue_declare(names.hatchery(f"t{i % tasks:05d}"), passive=True)

    out["count_ms"] = _per_op_ms(pid, n, counts)

    # Confirms pipelined as the Consumer's are: up to HANDLERS tokens awaiting theirs at once.
    work = connection.channel()._impl
    confirmed = [0]
    work.confirm_delivery(lambda frame: confirmed.__setitem__(0, frame.method.delivery_tag))
    consume = connection.channel()
    consume.basic_qos(prefetch_count=tasks)
    got = [0]

    def on_token(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
        got[0] += 1
        ch.basic_ack(method.delivery_tag)

    for spec in specs:
        consume.basic_consume(names.processor(spec.name), on_token)

    published = [0]  # the channel's confirm numbering

    def tokens(delay: float) -> Any:
        # delay > 0: through the hatchery, as every tick's token; 0: straight to the processor
        # queue (a retry due now), which leaves out the hatchery's write and the dead-lettering.
        exchange, props = token_route(names, delay)

        def run() -> None:
            got[0] = 0
            for i in range(n):
                while published[0] - confirmed[0] >= HANDLERS:
                    connection.process_data_events(time_limit=0.01)
                work.basic_publish(exchange, f"t{i % tasks:05d}", b"{}", props, mandatory=True)
                published[0] += 1
            while got[0] < n:
                connection.process_data_events(time_limit=0.1)

        return run

    out["token_path_ms"] = _per_op_ms(pid, n, tokens(0.001))
    out["token_without_hatchery_ms"] = _per_op_ms(pid, n, tokens(0))
    connection.close()
    for key in [k for k in out if k.endswith("_ms")]:
        out[key] = round(out[key], 3)
    # A tick of a task at 1 s: its token's path, `scheduled` to the listener, `started` routed
    # nowhere, its success kept by the status queue once in STATUS_SUCCESS_EVERY_S ticks and
    # routed nowhere the other times; the counts are paced by the reconciler, not by ticks (see
    # the many runs).
    kept = 1.0 / STATUS_SUCCESS_EVERY_S
    tick = (
        out["token_path_ms"]
        + out["event_to_listener_ms"]
        + (2 - kept) * out["event_routed_nowhere_ms"]
        + kept * out["event_to_status_queue_ms"]
    )
    out["tick_ms"] = round(tick, 3)
    out["cores_for_2000_ticks_per_s"] = round(
        tick * 2 + out["idle_cpu_pct_topology"] / 100 - out["idle_cpu_pct_before"] / 100, 2
    )
    return out


def _many_spec(spec: str) -> tuple[int, float, bool]:
    """TASKSxPERIOD, with a trailing `s`: the tasks' ticks spread over the period (offsets)."""
    spread = spec.endswith("s")
    tasks, _, period = spec.rstrip("s").partition("x")
    return int(tasks), float(period), spread


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--period", type=float, default=0.1)
    parser.add_argument("--work-pct", type=float, default=60.0)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--rate-seconds", type=float, default=5.0)
    parser.add_argument(
        "--phases",
        default="fidelity,rate,many,ops,clients",
        help="which phases: fidelity, rate, many, ops (what each broker operation costs), "
        "clients (what a tick's AWS calls cost the scheduler, per client)",
    )
    parser.add_argument("--client-ticks", type=int, default=2000, help="ticks (clients)")
    parser.add_argument("--ops", type=int, default=5000, help="operations of each kind (ops)")
    parser.add_argument("--ops-tasks", type=int, default=1000, help="tasks' topology (ops)")
    parser.add_argument(
        "--many",
        default="1000x1s,1000x0.5s,200x1s,200x1",
        help="many-task runs, TASKSxPERIOD_S[s], comma-separated, each side by side with the "
        "naive cycle; a trailing s spreads the tasks' ticks over the period (else all at once)",
    )
    parser.add_argument(
        "--naive-up-to",
        type=int,
        default=200,
        help="run the naive cycle beside Sluice only up to this many tasks (at 1,000, beside "
        "Sluice's, it had not seen every task tick once after ten minutes on a 2-vCPU machine)",
    )
    parser.add_argument(
        "--hold",
        default="0,30",
        help="the runners' SLUICE_SCHEDULER_HOLD_S, comma-separated: each many-task run once "
        "with each (0: every tick's token through the hatchery)",
    )
    parser.add_argument("--many-seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument(
        "--ledger-run",
        default="1000x1s",
        help="two more many-task runs with the DynamoDB ledger (TableLedger) on moto's server, "
        "through boto3's client and the scheduler's lean one; empty: none",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    # A `timeout` or Ctrl-C still stops the private node (the finally below) and the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    phases = set(args.phases.split(","))
    work = args.period * args.work_pct / 100
    report: dict[str, Any] = {"broker": "rabbitmq-server (Debian), private node on loopback"}
    with tempfile.TemporaryDirectory(prefix="sched-bench-") as tmp:
        node = RabbitNode(Path(tmp)).start()
        try:
            if "fidelity" in phases:
                fidelity = side_by_side(node.url, args.period, work, args.cycles)
                report["fidelity"] = {
                    "period_s": args.period,
                    "work_s": work,
                    "cycles": args.cycles,
                    **fidelity,
                }
            if "rate" in phases:
                rate_cycles = int(args.rate_seconds / 0.001)
                rate = side_by_side(node.url, 0.001, 0.0, rate_cycles)
                report["rate"] = {"period_s": 0.001, "work_s": 0.0, **rate}
            if "many" in phases:
                report["many"] = []
                # (spec, the ledger's client: None keeps it in memory); the ledger runs one after
                # the other in the same session, on moto's server: boto3's client, the scheduler's.
                holds = [float(h) for h in args.hold.split(",")]
                runs: list[tuple[str, str | None, float]] = [
                    (spec, None, hold)
                    for spec in filter(None, args.many.split(","))
                    for hold in holds
                ]
                runs += [(args.ledger_run, c, holds[0]) for c in CLIENTS if args.ledger_run]
                for spec, client, hold in runs:
                    tasks, period, spread = _many_spec(spec)
                    with moto_server() if client else contextlib.nullcontext() as endpoint:
                        run = many_side_by_side(
                            node.url,
                            tasks,
                            period,
                            args.many_seconds,
                            args.warmup,
                            ledger_url=endpoint,
                            naive=client is None and tasks <= args.naive_up_to,
                            spread=spread,
                            broker_pid=_broker_pid(node),
                            ledger_client=client or "lean",
                            hold_s=hold,
                        )
                    entry = {
                        "tasks": tasks,
                        "period_s": period,
                        "spread": spread,
                        "hold_s": hold,
                        **run,
                    }
                    if client:
                        entry["ledger"] = f"moto's server, {client} client"
                    report["many"].append(entry)
                    _print({"many": report["many"][-1:]})  # each run as it ends
            if "ops" in phases:
                report["ops"] = broker_ops(node.url, _broker_pid(node), args.ops_tasks, args.ops)
            if "clients" in phases:
                report["clients"] = client_calls(args.client_ticks)
        finally:
            node.stop()
    _print({k: v for k, v in report.items() if k != "many"})
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def _print(report: dict[str, Any]) -> None:
    if "fidelity" in report:
        f = report["fidelity"]
        print(
            f"\nfidelity: period {f['period_s'] * 1000:.0f} ms, work {f['work_s'] * 1000:.0f} ms, "
            f"{f['cycles']} cycles"
        )
        print(
            f"{'':8} {'ticks/s':>9} {'p50 late ms':>12} {'p99 late ms':>12} {'drift ms':>10} "
            f"{'missed':>7} {'twice':>6}"
        )
        for name in ("sluice", "naive"):
            r = f[name]
            print(
                f"{name:8} {r.get('ticks_per_s_per_consumer', 0):>9}"
                f" {r.get('lateness_p50_ms', 0):>12} {r.get('lateness_p99_ms', 0):>12}"
                f" {r.get('drift_after_n_ms', 0):>10} {r.get('missed_slots', 0):>7}"
                f" {r.get('run_twice', 0):>6}"
            )
    if "rate" in report:
        print("rate (1 ms period, no work): ticks/s per consumer, slots run twice")
        for name in ("sluice", "naive"):
            r = report["rate"][name]
            print(f"{name:8} {r.get('ticks_per_s_per_consumer', 0):>9} {r.get('run_twice', 0):>6}")
    if "ops" in report:
        ops = report["ops"]
        print(
            f"broker CPU per operation, ms ({ops['tasks']} tasks' topology, {ops['operations']}"
            " of each; Erlang VM CPU less its idle rate)"
        )
        for key, value in ops.items():
            print(f"  {key:<32} {value}")
    if "clients" in report:
        calls = report["clients"]
        print(f"a tick's AWS calls on moto's server, {calls['ticks']} ticks, per tick:")
        for name, what in (("ledger", "tick ledger (claim + finish)"), ("send", "event send")):
            for kind in CLIENTS:
                r = calls[name][kind]
                print(
                    f"  {what:<28} {kind:<6} client: {r['cpu_ms_per_tick']} ms of the thread's"
                    f" CPU, {r['wall_ms_per_tick']} ms of wall time"
                )
    for run in report.get("many", []):
        ledger = f", ledger {run['ledger']}" if "ledger" in run else ", ledger in memory"
        ticks = "spread over the period" if run["spread"] else "all due at once"
        hold = run.get("hold_s") or 0
        kept = f", tokens kept up to {hold:g} s" if hold else ", every token through the hatchery"
        print(
            f"many: {run['tasks']} tasks at {run['period_s']} s ({ticks}) on one consumer{ledger}"
            f"{kept} (load average {run['load_average']})"
        )
        print(
            f"{'':8} {'ticks/s':>9} {'p50 late ms':>12} {'p99 late ms':>12} {'CPU ms/tick':>12}"
            f" {'CPU %':>6} {'twice':>6} {'reseeded':>9}"
        )
        for name in ("sluice", "naive"):
            r = run.get(name)
            if r is None:
                continue
            if "error" in r:
                print(f"{name:8} failed: {r['error']}")
                continue
            print(
                f"{name:8} {r['ticks_per_s']:>9} {r['lateness_p50_ms']!s:>12}"
                f" {r['lateness_p99_ms']!s:>12} {r['cpu_ms_per_tick']!s:>12} {r['cpu_pct']:>6}"
                f" {r['run_twice']:>6} {r.get('reseeded', '-')!s:>9}"
            )
        sluice = run.get("sluice") or {}
        if "broker_cpu_pct" in sluice:
            print(f"broker (both sides) CPU % over the window: {sluice['broker_cpu_pct']}")
        if "counts_per_s" in sluice:
            print(
                f"reconciler's token counts: {sluice['counts_per_s']} a second, one task's counts"
                f" {sluice['count_gap_p50_s']} s apart (p50), {sluice['count_gap_max_s']} s at most"
            )
        if "broker_part_p50_ms" in sluice:
            print(
                "lateness, the broker's part (due -> delivered to the consumer, or a kept token's"
                " timer fired) p50/p99 ms:"
                f" {sluice['broker_part_p50_ms']} / {sluice['broker_part_p99_ms']}; the"
                f" consumer's (delivered -> action started): {sluice['consumer_part_p50_ms']}"
                f" / {sluice['consumer_part_p99_ms']}"
            )
        if sluice.get("user_ms_per_tick"):
            user = sluice["user_ms_per_tick"]
            print(
                f"user time {user} ms a tick (the Python, which one process runs on one core at a"
                f" time): at most {1000 / user:,.0f} ticks/s for this process, cores to spare"
            )
        if "cpu_ms_per_tick_by_thread" in sluice:
            split = sluice["cpu_ms_per_tick_by_thread"]
            print(
                "scheduler CPU ms/tick by thread: "
                + ", ".join(f"{k} {v}" for k, v in split.items())
            )


if __name__ == "__main__":
    raise SystemExit(main())
