"""`make local-up` with the `sluice` CLI pointed at it (the exports it prints)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner

from devtools.local.resources import BUCKET, SLOT_CHECK_AFTER_S, THROTTLES
from lambdas.workflows.deliver_webhook.handler import WORKFLOW
from sluice import catalog, naming, workflows
from sluice.envelope import Event, execution_name
from sluice_cli import cli
from sluice_cli.runs import replay_name
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class LocalUp:
    exports: dict[str, str]  # the CLI's environment
    job: str  # the first job's id
    workdir: Path  # the run's logs (web.log: the worker's one EMF line per message)


@pytest.fixture(scope="module")
def local_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalUp]:
    """A running `python -m devtools.local --up`."""
    workdir = tmp_path_factory.mktemp("local-up")
    out = (workdir / "out.txt").open("w")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "devtools.local", "--up", "--view", "lines"),
            *("--workdir", str(workdir)),
        ],
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        text = ""
        deadline = time.monotonic() + 300
        while "sluice dlq peek" not in text:
            assert proc.poll() is None and time.monotonic() < deadline, text[-4000:]
            time.sleep(0.5)
            text = Path(out.name).read_text()
        exports = dict(re.findall(r"^  export (\w+)='(.*)'$", text, re.MULTILINE))
        job = re.search(r"workflow transcribe_audio started \((\S+)\)", text)
        assert job, text
        yield LocalUp(exports, job.group(1), workdir)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def sluice(exports: dict[str, str], monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    for key, value in exports.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_jobs_show_gives_the_record_and_every_durable_step(local_up, monkeypatch) -> None:
    exports, job = local_up.exports, local_up.job
    output = sluice(exports, monkeypatch, "jobs", "show", job)
    assert "status           COMPLETED" in output
    assert "status  SUCCEEDED" in output
    for step in ("fetch_audio_metadata", "start_transcription", "parse_save_transcription"):
        assert f"ChainedInvokeSucceeded {step}" in output


def test_a_sent_event_starts_a_job_the_cli_can_follow(local_up, monkeypatch) -> None:
    exports = local_up.exports
    data = json.dumps({"bucket": BUCKET, "key": "uploads/sermon.mp3"})
    sluice(
        exports, monkeypatch, "send", "media/transcode.requested", "--data", data, "--id", "op-1"
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        output = sluice(exports, monkeypatch, "jobs", "show", "op-1")
        if "status  SUCCEEDED" in output:
            break
        time.sleep(1)
    assert "CallbackSucceeded" in output and "status  SUCCEEDED" in output


def test_the_dlq_is_empty_and_peek_consumes_nothing(local_up, monkeypatch) -> None:
    exports = local_up.exports
    output = sluice(exports, monkeypatch, "dlq", "peek", "--queue", "events")
    assert "0 message(s) in Sluice-local-events-dlq" in output


def test_the_cli_environment_names_only_loopback_endpoints(local_up) -> None:
    exports = local_up.exports
    for key in ("SLUICE_ENDPOINT_URL", "AWS_ENDPOINT_URL_LAMBDA"):
        assert exports[key].startswith("http://127.0.0.1:")
    assert os.environ.get("AWS_PROFILE") is None


class Endpoint(ThreadingHTTPServer):
    """A customer's webhook endpoint on loopback: counts deliveries in flight, overall and per
    customer, while each takes a moment."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Delivery)
        self.lock = threading.Lock()
        self.in_flight: dict[str, int] = {}
        self.most = 0
        self.most_per_customer = 0
        self.delivered: list[str] = []


class _Delivery(BaseHTTPRequestHandler):
    server: Endpoint

    def do_POST(self) -> None:
        # post_webhook's body: {"id", "name", "data": the event's payload}
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["data"]
        customer = body["customer"]
        with self.server.lock:
            flights = self.server.in_flight
            flights[customer] = flights.get(customer, 0) + 1
            self.server.most = max(self.server.most, sum(flights.values()))
            self.server.most_per_customer = max(self.server.most_per_customer, flights[customer])
        time.sleep(0.2)
        with self.server.lock:
            flights[customer] -= 1
            self.server.delivered.append(body["n"])
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_burst_of_webhooks_keeps_the_declared_concurrency_limits(local_up, monkeypatch) -> None:
    # Given deliver_webhook's declaration: at most 10 runs at once, 1 per customer
    decl = workflows.load(catalog.WORKFLOWS_ROOT, known_events=catalog.EVENTS)["deliver_webhook"]
    assert decl.concurrency is not None
    limit, per_customer = decl.concurrency.limit, decl.concurrency.key_limit
    endpoint = Endpoint()
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{endpoint.server_address[1]}/hook"
    exports = local_up.exports
    try:
        # When 50 events for 5 customers arrive at once through the events queue
        for n in range(50):
            customer = f"c{n % 5}"
            data = {"url": url, "customer_id": customer, "payload": {"n": n, "customer": customer}}
            sluice(
                exports,
                monkeypatch,
                "send",
                "webhook/requested",
                "--data",
                json.dumps(data),
                "--id",
                f"burst-{n}",
            )
        # A customer's ten deliveries go through the local throttle (THROTTLES: a few per
        # window, the rest held) and then one at a time. Give up only when deliveries stop
        # coming for 3 min (a stall, not a slow machine: see docs/concurrency.md, "Locally").
        seen, last_progress = 0, time.monotonic()
        while len(endpoint.delivered) < 50 and time.monotonic() - last_progress < 180:
            time.sleep(0.5)
            if len(endpoint.delivered) > seen:
                seen, last_progress = len(endpoint.delivered), time.monotonic()
    finally:
        endpoint.shutdown()
    # Then every event was delivered once, never more than the limits at a time
    assert sorted(endpoint.delivered) == list(range(50))
    assert endpoint.most_per_customer == per_customer
    assert 1 < endpoint.most <= limit
    # And every run succeeded: none failed, none was dropped. The endpoint counts a delivery
    # before its answer reaches the run, which then checkpoints and ends: the last run can still
    # be RUNNING for a moment after the fiftieth delivery (CI saw 49 of 50 listed as SUCCEEDED).
    names = {f"burst-{n}" for n in range(50)}
    deadline = time.monotonic() + 60
    while True:
        listed = sluice(
            exports,
            monkeypatch,
            "runs",
            "list",
            "--workflow",
            "deliver_webhook",
            "--json",
            "--limit",
            "100",
        )
        burst = {r["name"]: r["status"] for r in map(json.loads, listed.splitlines())}
        burst = {name: status for name, status in burst.items() if name in names}
        if "RUNNING" not in burst.values() or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert burst == dict.fromkeys(sorted(names), "SUCCEEDED")


def worker_starts(workdir: Path, workflow: str) -> list[tuple[int, str]]:
    """(epoch ms, event id) of each run of `workflow` the worker started, in the order started:
    from its one EMF line per message (`executions`, in start order; `_aws.Timestamp`, written
    once the message is handled). An event started again (two drains of one key racing, a
    message sent again) is Lambda's idempotent start of the same execution: its first start
    counts."""
    starts: dict[str, int] = {}
    for line in (workdir / "web.log").read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        doc = json.loads(line)
        for run in doc.get("executions", []):
            if run.get("workflow") == workflow and "cancelled_by" not in run:
                starts.setdefault(run["event_id"], doc["_aws"]["Timestamp"])
    return [(ms, event_id) for event_id, ms in starts.items()]


def test_a_burst_a_throttle_holds_starts_in_later_windows_by_priority(local_up, monkeypatch):
    # Given deliver_webhook's throttle as the local run applies it (its declared key and
    # priority; `limit` starts per `period_s` per customer)
    flow = catalog.FLOWS[WORKFLOW]
    throttle, priority = THROTTLES[WORKFLOW], flow.priority
    assert throttle.key == "data.customer_id" and priority is not None
    limit, period_ms = throttle.limit, throttle.period_s * 1000
    endpoint = Endpoint()
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{endpoint.server_address[1]}/hook"
    exports, workdir = local_up.exports, local_up.workdir
    # limit + 5 deliveries of one customer and limit + 2 of another, with mixed priorities
    customers = {"held-a": limit + 5, "held-b": limit + 2}
    events = [
        Event(
            name="webhook/requested",
            data={
                "url": url,
                "customer_id": customer,
                "priority": (0, 9, 3, 0, 5, 9, 3, 0)[i % 8],
                "payload": {"n": f"{customer}-{i}", "customer": customer},
            },
            id=f"{customer}-{i}",
        )
        for customer, count in customers.items()
        for i in range(count)
    ]
    sqs = boto3.client(
        "sqs", endpoint_url=exports["SLUICE_ENDPOINT_URL"], region_name=exports["AWS_REGION"]
    )
    queue = sqs.get_queue_url(QueueName=naming.queue_name(exports["SLUICE_ENV"], "events"))
    # When they arrive at once, at the start of a window (so the burst is decided within one)
    while time.time() * 1000 % period_ms > 300:
        time.sleep(0.05)
    burst_ms = int(time.time() * 1000)
    for first in range(0, len(events), 10):
        sqs.send_message_batch(
            QueueUrl=queue["QueueUrl"],
            Entries=[{"Id": e.id, "MessageBody": e.to_json()} for e in events[first : first + 10]],
        )
    # Then, while they wait, `sluice flow waiting` lists the held ones: key, priority, since when
    listed: dict[str, dict[str, Any]] = {}
    ids = {e.id for e in events}
    deadline = time.monotonic() + 60
    try:
        while len(endpoint.delivered) < len(events) and time.monotonic() < deadline:
            out = sluice(exports, monkeypatch, "flow", "waiting", "--workflow", WORKFLOW, "--json")
            for w in map(json.loads, out.splitlines()):
                if w["event_id"] in ids:
                    listed.setdefault(w["event_id"], w)
            time.sleep(0.2)
    finally:
        endpoint.shutdown()
    starts = [(ms, e) for ms, e in worker_starts(workdir, WORKFLOW) if e in ids]
    # every event started (none lost), each one execution, delivered exactly once (none twice)
    assert sorted(e for _, e in starts) == sorted(ids)
    assert sorted(endpoint.delivered) == sorted(str(e.data["payload"]["n"]) for e in events)
    by_id = {e.id: e for e in events}
    started_at = {e: ms for ms, e in starts}
    arrived = {
        e: int(datetime.fromisoformat(w["since"]).timestamp() * 1000) for e, w in listed.items()
    }
    for customer, count in customers.items():
        mine = [(ms, e) for ms, e in starts if by_id[e].data["customer_id"] == customer]
        # never more than `limit` starts of a customer in one window, `limit` in the burst's
        windows = [ms // period_ms for ms, _ in mine]
        assert max(windows.count(w) for w in set(windows)) <= limit, windows
        assert windows.count(burst_ms // period_ms) == limit, windows
        # the others were held: listed while they waited, under their key, since their arrival
        held = [e for ms, e in mine if ms // period_ms > burst_ms // period_ms]
        assert len(held) == count - limit
        shown = {e for e in listed if listed[e]["key"] == customer}
        assert set(held) <= shown
        # (an event may be held for a moment and still start in the burst's window: its admit
        # lost a race for the window's record, and the drain after its hold started it at once)
        assert all(started_at[e] // period_ms == burst_ms // period_ms for e in shown - set(held))
        for e in held:
            assert (listed[e]["control"], listed[e]["priority"]) == (
                "throttle",
                by_id[e].data["priority"],
            )
            assert burst_ms <= arrived[e] <= started_at[e]
        # and started in the order sluice.workflows.rank gives (none waited long enough to age)
        assert all(started_at[e] - arrived[e] < priority.aging_s * 1000 for e in held)
        first = min(arrived[e] for e in held)
        assert held == sorted(
            held,
            key=lambda e: workflows.rank(priority, listed[e]["priority"], arrived[e], first, e),
        )
    # And every run finished
    succeeded = sluice(
        exports,
        monkeypatch,
        "runs",
        "list",
        "--workflow",
        WORKFLOW,
        "--status",
        "SUCCEEDED",
        "--limit",
        "200",
        "--json",
    )
    names = [json.loads(line)["name"] for line in succeeded.splitlines()]
    assert sorted(n for n in names if n in ids) == sorted(ids)


class _Holding(BaseHTTPRequestHandler):
    """A webhook endpoint that holds each delivery until released (or 20 s)."""

    server: Any

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["data"]
        self.server.arrived.append(body["n"])
        self.server.release.wait(20)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def holding_endpoint() -> tuple[Any, str]:
    """A _Holding endpoint on loopback, serving (its `arrived` list, its `release` event), and
    its URL."""
    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), _Holding)
    endpoint.daemon_threads = True
    endpoint.arrived, endpoint.release = [], threading.Event()  # type: ignore[attr-defined]
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    return endpoint, f"http://127.0.0.1:{endpoint.server_address[1]}/hook"


def test_a_cancel_on_event_stops_exactly_the_matching_runs(local_up, monkeypatch) -> None:
    # Given deliver_webhook cancels on customer/deleted for the same customer, and one delivery
    # of customer "gone" in flight (its endpoint holds it), two more waiting for its turn
    # (one per customer at a time), and one of customer "stays"
    decl = workflows.load(catalog.WORKFLOWS_ROOT, known_events=catalog.EVENTS)["deliver_webhook"]
    assert [(c.event, c.match) for c in decl.cancel_on] == [
        ("customer/deleted", "data.customer_id")
    ]
    endpoint, url = holding_endpoint()
    exports = local_up.exports

    def send(name: str, data: dict[str, Any], event_id: str) -> None:
        sluice(exports, monkeypatch, "send", name, "--data", json.dumps(data), "--id", event_id)

    def runs(*args: str) -> list[dict[str, Any]]:
        out = sluice(exports, monkeypatch, "runs", "list", "--json", "--limit", "100", *args)
        return [json.loads(line) for line in out.splitlines()]

    try:
        for n, customer in enumerate(("gone", "gone", "gone")):
            data = {"url": url, "customer_id": customer, "payload": {"n": n, "customer": customer}}
            send("webhook/requested", data, f"cx-{n}")
        deadline = time.monotonic() + 120
        while endpoint.arrived != [0] and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.2)
        assert endpoint.arrived == [0]  # type: ignore[attr-defined]
        # When the customer is deleted
        send("customer/deleted", {"customer_id": "gone"}, "del-gone")
        # Then its three runs stop, each with the reason, and each is recorded once
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stopped = runs("--workflow", "deliver_webhook", "--status", "STOPPED")
            if len(stopped) >= 3:
                break
            time.sleep(0.5)
        assert sorted(r["name"] for r in stopped) == ["cx-0", "cx-1", "cx-2"]
        recorded = runs("--recorded", "--workflow", "deliver_webhook")
        assert sorted((r["name"], r["status"]) for r in recorded) == [
            ("cx-0", "STOPPED"),
            ("cx-1", "STOPPED"),
            ("cx-2", "STOPPED"),
        ]
        assert all(
            r["error"]["reason"] == "cancelled"
            and r["error"]["message"] == "cancelled by customer/deleted del-gone"
            for r in recorded
        )
        # and each one's failure handler ran: the job records say so
        for name in ("cx-0", "cx-1", "cx-2"):
            assert "status           FAILED" in sluice(exports, monkeypatch, "jobs", "show", name)
        # And a delivery of another customer, sent after, goes through (no slot is left held)
        data = {"url": url, "customer_id": "stays", "payload": {"n": 3, "customer": "stays"}}
        endpoint.release.set()  # type: ignore[attr-defined]
        send("webhook/requested", data, "cx-3")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = runs("--workflow", "deliver_webhook", "--status", "SUCCEEDED")
            if any(r["name"] == "cx-3" for r in done):
                break
            time.sleep(0.5)
        assert any(r["name"] == "cx-3" for r in done)
        # And the deliveries that waited never reached the endpoint
        assert sorted(endpoint.arrived) == [0, 3]  # type: ignore[attr-defined]
    finally:
        endpoint.release.set()  # type: ignore[attr-defined]
        endpoint.shutdown()


def test_the_slot_of_a_run_stopped_while_it_held_it_is_reclaimed(local_up, monkeypatch):
    # Given a delivery stopped by the operator while it held its customer's slot (its endpoint
    # holds it), and the customer's next delivery queued behind it
    endpoint, url = holding_endpoint()
    exports = local_up.exports
    try:
        for n in range(2):
            data = {"url": url, "customer_id": "stuck", "payload": {"n": n, "customer": "stuck"}}
            sluice(
                exports,
                monkeypatch,
                *("send", "webhook/requested", "--data", json.dumps(data), "--id", f"sx-{n}"),
            )
        deadline = time.monotonic() + 60
        while endpoint.arrived != [0] and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.2)
        assert endpoint.arrived == [0]  # type: ignore[attr-defined]
        held_since = time.monotonic()
        sluice(exports, monkeypatch, "runs", "cancel", "sx-0", "--yes")
        endpoint.release.set()  # type: ignore[attr-defined]
        # When the waiting run polls past the age at which a holder is asked about (Lambda's
        # GetDurableExecution: the local durable service's answer, STOPPED)
        # (well under the 60 s the stacks keep: the local setting is what reclaims it)
        deadline = held_since + SLOT_CHECK_AFTER_S + 30
        while 1 not in endpoint.arrived and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.5)
    finally:
        endpoint.release.set()  # type: ignore[attr-defined]
        endpoint.shutdown()
    # Then the stopped run's slot was reclaimed and the next delivery went through
    assert endpoint.arrived == [0, 1]  # type: ignore[attr-defined]


class _Refusing(BaseHTTPRequestHandler):
    """A webhook endpoint that refuses deliveries (410) until fixed."""

    server: Any

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200 if self.server.fixed else 410)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_failed_run_is_listed_shown_replayed_once_fixed_and_succeeds(local_up, monkeypatch):
    # Given a delivery the customer's endpoint refuses (a business error: no retry)
    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    endpoint.daemon_threads = True
    endpoint.fixed = False  # type: ignore[attr-defined]
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{endpoint.server_address[1]}/hook"
    exports = local_up.exports
    data = {"url": url, "customer_id": "c-410", "payload": {"n": 1}}
    try:
        sluice(
            exports,
            monkeypatch,
            "send",
            "webhook/requested",
            "--data",
            json.dumps(data),
            "--id",
            "fail-1",
            "--correlation-id",
            "action-410",
        )
        # When the operator lists the failed runs of that action
        deadline, listed = time.monotonic() + 120, ""
        while "fail-1" not in listed and time.monotonic() < deadline:
            listed = sluice(
                exports,
                monkeypatch,
                "runs",
                "list",
                "--status",
                "FAILED",
                "--correlation-id",
                "action-410",
            )
            time.sleep(0.5)
        assert "fail-1" in listed and "deliver_webhook" in listed
        # Then show gives the failing step with its input and error, and the run's record
        shown = json.loads(sluice(exports, monkeypatch, "runs", "show", "fail-1", "--json"))
        (step,) = [op for op in shown["operations"] if op["name"] == "post_webhook"]
        assert step["status"] == "Failed" and url in json.dumps(step["input"]), step
        assert "410" in step["error"]["message"]
        recorded = sluice(exports, monkeypatch, "runs", "list", "--recorded", "--json")
        assert any(json.loads(line)["name"] == "fail-1" for line in recorded.splitlines())
        # When the cause is removed and it is replayed (twice)
        endpoint.fixed = True  # type: ignore[attr-defined]
        first = sluice(exports, monkeypatch, "runs", "replay", "fail-1")
        again = sluice(exports, monkeypatch, "runs", "replay", "fail-1")
        replay = execution_name(replay_name("fail-1"))
        assert f"fail-1 -> {replay}" in first and f"fail-1 -> {replay}" in again
        # Then one new run, linked to the original, succeeds
        deadline, shown = time.monotonic() + 120, {}
        while shown.get("status") != "SUCCEEDED" and time.monotonic() < deadline:
            time.sleep(0.5)
            shown = json.loads(
                sluice(exports, monkeypatch, "runs", "show", "fail-1~replay1", "--json")
            )
        assert shown["status"] == "SUCCEEDED" and shown["replay_of"] == "fail-1"
        original = json.loads(sluice(exports, monkeypatch, "runs", "show", "fail-1", "--json"))
        assert [r["name"] for r in original["replays"]] == [shown["name"]]
    finally:
        endpoint.shutdown()


def test_ctrl_c_stops_local_up_even_when_started_with_sigint_ignored() -> None:
    # Given a process started as a shell's background job starts (SIGINT ignored: Python keeps
    # that), as `make local` is under a CI script's `cmd &`
    code = (
        "import signal\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "from devtools.local.__main__ import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
    )
    # When devtools.local's main starts
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    # Then Ctrl-C raises KeyboardInterrupt in it again, which stops the run (its e2e teardown
    # timed out in a CI run launched that way: local-up ran on after its SIGINT)
    assert out.stdout.splitlines()[-1] == "True"
