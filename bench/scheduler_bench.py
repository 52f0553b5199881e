"""Benchmark: Sluice's drift-free scheduler vs the naive hatchery cycle, side by side.

Both run at the same time against the same private RabbitMQ node (Debian's rabbitmq-server):
- sluice: worker.scheduler (token due at t0 + n*period, whatever the run takes);
- naive: the classic cycle: a token waits `period` in a TTL queue, is dead-lettered to a processor
  queue, the consumer runs the task and only then re-publishes the token with TTL `period`.

Phase 1 (fidelity): period P, each run takes `work` (default 60 % of P), N cycles. Reports
ticks/s per consumer, lateness p50/p99 against the ideal grid (first tick + n*P) and the drift
after N cycles ((start_N - start_0) - N*P).
Phase 2 (rate): a 1 ms period with no work for a few seconds: the most ticks/s one consumer gets.

    make bench-scheduler      # or: .venv/bin/python bench/scheduler_bench.py --cycles 200
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402

from devtools.rabbitmq import RabbitNode  # noqa: E402
from devtools.stats import percentile  # noqa: E402
from sluice.scheduling.names import Names, expiration_ms  # noqa: E402
from sluice.scheduling.registry import PeriodicTask, Registry, Tick  # noqa: E402
from sluice.scheduling.schedule import Every  # noqa: E402
from worker.scheduler.runner import Scheduler  # noqa: E402


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--period", type=float, default=0.1)
    parser.add_argument("--work-pct", type=float, default=60.0)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--rate-seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sched-bench-") as tmp:
        node = RabbitNode(Path(tmp)).start()
        try:
            work = args.period * args.work_pct / 100
            fidelity = side_by_side(node.url, args.period, work, args.cycles)
            rate_cycles = int(args.rate_seconds / 0.001)
            rate = side_by_side(node.url, 0.001, 0.0, rate_cycles)
        finally:
            node.stop()
    report = {
        "broker": "rabbitmq-server (Debian), private node on loopback",
        "fidelity": {"period_s": args.period, "work_s": work, "cycles": args.cycles, **fidelity},
        "rate": {"period_s": 0.001, "work_s": 0.0, **rate},
    }
    print(
        f"\nfidelity: period {args.period * 1000:.0f} ms, work {work * 1000:.0f} ms, "
        f"{args.cycles} cycles"
    )
    print(
        f"{'':8} {'ticks/s':>9} {'p50 late ms':>12} {'p99 late ms':>12} {'drift ms':>10} "
        f"{'missed':>7} {'twice':>6}"
    )
    for name in ("sluice", "naive"):
        r = fidelity[name]
        print(
            f"{name:8} {r.get('ticks_per_s_per_consumer', 0):>9} {r.get('lateness_p50_ms', 0):>12}"
            f" {r.get('lateness_p99_ms', 0):>12} {r.get('drift_after_n_ms', 0):>10}"
            f" {r.get('missed_slots', 0):>7} {r.get('run_twice', 0):>6}"
        )
    print("rate (1 ms period, no work): ticks/s per consumer, slots run twice")
    for name in ("sluice", "naive"):
        r = rate[name]
        print(f"{name:8} {r.get('ticks_per_s_per_consumer', 0):>9} {r.get('run_twice', 0):>6}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
