"""The Procfile `scheduler` process: runs with a broker, idles cleanly without one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pika
import pytest

from sluice.scheduling.names import Names
from sluice.scheduling.oneoff import sweeper_queue
from tests.conftest import ROOT
from worker.scheduler.runner import STOP_GRACE_S


def start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_BROKER")}
    return subprocess.Popen(
        [sys.executable, "-m", "worker.scheduler", *args],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_without_a_broker_the_process_idles_and_stops_cleanly_on_sigterm():
    # Given no broker settings
    proc = start({})
    try:
        # When it has started (it says why it idles)
        assert proc.stdout is not None
        assert b"no broker configured" in proc.stdout.readline()
        time.sleep(0.5)
        # Then it keeps running (exiting would make EB's supervisor restart it in a loop)
        assert proc.poll() is None
        # and SIGTERM stops it with status 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_with_a_broker_the_process_declares_the_registry_and_stops_cleanly(rabbit):
    # Given a broker URL
    names = Names(f"p{uuid.uuid4().hex[:8]}")
    proc = start({"SLUICE_BROKER_URL": rabbit.url}, "--prefix", names.prefix)
    try:
        # When it runs, Then the registry's task queues appear
        deadline = time.monotonic() + 20
        while True:
            conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
            try:
                conn.channel().queue_declare(names.processor("heartbeat"), passive=True)
                break
            except pika.exceptions.ChannelClosedByBroker:
                if time.monotonic() > deadline:
                    pytest.fail("the scheduler did not declare its topology")
                time.sleep(0.1)
            finally:
                if conn.is_open:
                    conn.close()
        # and SIGTERM stops it with status 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cron_yaml_command_prints_what_the_registry_generates():
    from sluice.scheduling.registry import REGISTRY, cron_yaml

    out = subprocess.run(
        [sys.executable, "-m", "worker.scheduler", "--cron-yaml"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        check=True,
    )
    assert out.stdout.decode() == cron_yaml(REGISTRY)


@pytest.mark.slow
def test_sigterm_stops_the_process_within_its_grace_while_it_leads_the_reconciler_and_the_sweep(
    rabbit, ledger_env
):
    # Given the Procfile process with the tick ledger's table (so it also sweeps one-offs), its
    # registry's tasks an hour apart or more (the reconciler's loop then waits seconds between
    # its passes), leading both the reconciler and the one-off sweep
    names = Names(f"p{uuid.uuid4().hex[:8]}")
    proc = start({"SLUICE_BROKER_URL": rabbit.url, **ledger_env}, "--prefix", names.prefix)
    try:
        deadline = time.monotonic() + 20
        while not (
            _exists(rabbit.url, names.leader_queue) and _exists(rabbit.url, sweeper_queue(names))
        ):
            assert time.monotonic() < deadline, "the process did not take both leads"
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
        time.sleep(0.5)  # into their loops' waits
        # When it is sent SIGTERM (as EB's supervisor stops it on a deploy)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        took = time.monotonic() - began
        # Then it ends with status 0 within the grace its ticks get and a second more: every
        # loop sees the stop, none waits out its own pause
        assert code == 0
        assert took < STOP_GRACE_S + 1.0, took
    finally:
        if proc.poll() is None:
            proc.kill()


def _exists(url: str, queue: str) -> bool:
    """Does `queue` exist? (a passive declaration; an exclusive queue held by another connection
    answers RESOURCE_LOCKED, which says it exists too)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        conn.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code == 405
    finally:
        if conn.is_open:
            conn.close()
