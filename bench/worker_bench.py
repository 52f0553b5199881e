"""Benchmark of the worker's web process: events/s and worker CPU time per event.

gunicorn serves worker.app exactly as the Procfile says; a load generator POSTs sqsd-shaped
requests (sqsd's headers, one distinct valid event each) over `--connections` keep-alive
connections; Lambda's Invoke is answered at once by devtools.lambda_fake in its own process (its
CPU is not counted). CPU per event is the user+system time of gunicorn's master and workers
during a run, divided by the events handled; of `--repeat` runs the best is reported (all are
listed). `--floor` measures gunicorn's own cost per request (GET /health on the same server).
Target (issue 4): at most 1 ms per event.

    make bench            # or: .venv/bin/python bench/worker_bench.py --events 5000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.local.processes import procfile  # noqa: E402
from devtools.ports import free_port  # noqa: E402
from sluice import naming  # noqa: E402
from sluice.envelope import Event  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out.extend(int(k) for k in kids)
    return out


def wait_healthy(url: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback http
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"not healthy: {url}")


def load(
    port: int, bodies: list[bytes], connections: int, *, floor: bool = False
) -> tuple[float, list[float], dict]:
    """POST every body; (elapsed s, latencies ms, status counts)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    index = iter(range(len(bodies)))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine, codes = [], {}
        for i in index:
            headers = {
                "User-Agent": "aws-sqsd/3.0.4",
                "Content-Type": "application/json",
                "X-Aws-Sqsd-Msgid": f"bench-{i}",
                "X-Aws-Sqsd-Queue": "Sluice-bench-events",
                "X-Aws-Sqsd-First-Received-At": "2026-11-23T10:00:00Z",
                "X-Aws-Sqsd-Receive-Count": "1",
            }
            began = time.perf_counter()
            if floor:  # gunicorn + WSGI only: GET /health, no event handled
                conn.request("GET", "/health", headers=headers)
            else:
                conn.request("POST", "/", bodies[i], headers)
            answer = conn.getresponse()
            answer.read()
            mine.append((time.perf_counter() - began) * 1000)
            codes[answer.status] = codes.get(answer.status, 0) + 1
        conn.close()
        with lock:
            latencies.extend(mine)
            for k, v in codes.items():
                statuses[k] = statuses.get(k, 0) + v

    threads = [threading.Thread(target=client) for _ in range(connections)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - began, latencies, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3, help="runs on the same server; best kept")
    parser.add_argument("--connections", type=int, default=10, help="like sqsd HttpConnections")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--worker-class", default="gthread", help="gunicorn worker class")
    parser.add_argument(
        "--floor", action="store_true", help="GET /health instead: the HTTP serving floor"
    )
    args = parser.parse_args()

    lambda_port, web_port = free_port(), free_port()
    python = sys.executable
    fake = subprocess.Popen(
        [python, "-m", "devtools.lambda_fake", "--port", str(lambda_port), "--no-record"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    web_cmd = procfile("web")
    if web_cmd is None:
        raise SystemExit("worker/Procfile has no web process")
    env = {
        **os.environ,
        "PATH": f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "PORT": str(web_port),
        "WEB_CONCURRENCY": str(args.workers),
        "SLUICE_WEB_THREADS": str(args.threads),
        "SLUICE_WEB_WORKER_CLASS": args.worker_class,
        "SLUICE_ENV": "bench",
        **naming.alias_variables(
            {"transcribe_audio": "arn:aws:lambda:eu-west-1:123456789012:function:t:live"}
        ),
        "SLUICE_EVENTS_DLQ_URL": "http://127.0.0.1:9/dlq",
        "AWS_ENDPOINT_URL_LAMBDA": f"http://127.0.0.1:{lambda_port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    web = subprocess.Popen(  # noqa: S602 - the Procfile line is a shell command, as on EB
        f"exec {web_cmd}", shell=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL
    )
    try:
        wait_healthy(f"http://127.0.0.1:{web_port}/health")
        time.sleep(0.5)  # every worker process booted
        pids = [web.pid, *children(web.pid)]

        def bodies(n: int, tag: str) -> list[bytes]:
            return [
                Event(
                    name="media/transcription.requested",
                    data={"bucket": "media", "key": f"uploads/{tag}-{i}.mp3"},
                )
                .to_json()
                .encode()
                for i in range(n)
            ]

        load(web_port, bodies(args.warmup, "warm"), args.connections)  # clients, pools, caches
        runs = []
        for r in range(args.repeat):
            work = bodies(args.events, f"run{r}")
            cpu_before = cpu_seconds(pids)
            elapsed, latencies, statuses = load(web_port, work, args.connections, floor=args.floor)
            runs.append((cpu_seconds(pids) - cpu_before, elapsed, latencies, statuses))
    finally:
        web.terminate()
        fake.terminate()
        web.wait(timeout=15)
        fake.wait(timeout=15)

    # The best run is the least disturbed by other work on the machine; all runs are listed.
    cpu, elapsed, latencies, statuses = min(runs, key=lambda run: run[0])
    latencies.sort()
    result = {
        "events": args.events,
        "mode": "GET /health (floor)" if args.floor else "POST event -> Invoke",
        "connections": args.connections,
        "gunicorn_workers": args.workers,
        "threads_per_worker": args.threads,
        "worker_class": args.worker_class,
        "statuses": statuses,
        "events_per_s": round(args.events / elapsed, 1),
        "worker_cpu_ms_per_event": round(cpu * 1000 / args.events, 3),
        "latency_ms_p50": round(statistics.median(latencies), 2),
        "latency_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1], 2),
        "cores": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "all_runs_cpu_ms_per_event": [round(r[0] * 1000 / args.events, 3) for r in runs],
        "all_runs_events_per_s": [round(args.events / r[1], 1) for r in runs],
    }
    print(json.dumps(result, indent=1))
    if any(r[3] != {200: args.events} for r in runs):
        raise SystemExit("some requests were not answered 200")


if __name__ == "__main__":
    main()
