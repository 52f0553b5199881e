"""Test-wide set-up: the venv's Node 24 first on PATH (jsii), no AWS credentials, no real AWS."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")
# Fake credentials and a region so no test can ever sign a request for a real account.
for var, value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_REGION": "eu-west-1",
}.items():
    os.environ[var] = value
os.environ.pop("AWS_PROFILE", None)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _share_botocores_data_between_sessions() -> None:
    """Every botocore session of the test process reads AWS's service data (endpoints,
    partitions, service models: read-only JSON) through one loader per data path.

    moto's `mock_aws` clears boto3's default session, so each test's first client built a new
    session whose new loader parsed endpoints.json again: 0.2-0.3 s per test that uses moto,
    40 of `make unit`'s 75 test-seconds in setups (measured with --durations=0). botocore keeps
    the parsed data per loader (its instance cache), and a session reads it only through the
    `data_loader` component this registers, as botocore's own `_register_data_loader` does."""
    import functools

    import botocore.loaders
    import botocore.session

    loader_for = functools.cache(botocore.loaders.create_loader)

    def register(self: botocore.session.Session) -> None:
        self._components.lazy_register_component(
            "data_loader", lambda: loader_for(self.get_config_variable("data_path"))
        )

    botocore.session.Session._register_data_loader = register  # type: ignore[method-assign]


_share_botocores_data_between_sessions()


# Each test is of one kind (the markers in pyproject.toml), by its folder; a test marks another
# kind itself where it differs from its folder's (the unit folder's test that installs a wheel into
# a venv is an integration test). `make unit` runs the unit kind: in-process, no servers (not
# even on loopback threads), no durable runner, no synth, under a minute. The workflows' tests
# run real durable executions in the SDK's runner: integration.
FOLDER_KIND = {
    "unit": "unit",
    "adapters": "unit",
    "lambdas": "unit",
    "workflows": "integration",
    "flow": "unit",
    "cli": "unit",
    "infra": "infra",
    "worker": "integration",
    "heavy": "integration",
    "integration": "integration",
    "e2e": "e2e",
    "chaos": "chaos",
}
KINDS = frozenset(FOLDER_KIND.values())


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With `-m unit` (make unit), the other kinds' folders are not even imported: importing the
    CDK app for the infra tests alone costs ~15 s. (So a unit test lives in a unit folder.)"""
    if (
        config.getoption("markexpr", "") == "unit"
        and collection_path.parent == ROOT / "tests"
        and collection_path.is_dir()
        and FOLDER_KIND.get(collection_path.name, "unit") != "unit"
    ):
        return True
    return None


@pytest.fixture(autouse=True)
def _short_gc_pauses() -> None:
    """Tests that bound a latency in milliseconds (the broker scheduler's, flow control's, the
    local pipeline's) run their servers' threads in a test process that has by then run other
    groups' tests: a synthesized app leaves 570,000-800,000 objects. A full collection of those
    paused every thread for 0.3-0.74 s, in 17 tests of one `make test` (measured with
    gc.callbacks); a one-off test saw its runs 471 ms late at the median, against under 1 ms
    alone. So before each test the objects alive are collected once and frozen (gc.freeze: left
    out of every later collection's scan), and a collection during a test scans what it made."""
    gc.collect()
    gc.freeze()


# The broker tests' group: every test of tests/integration (see the hook below).
BROKER_GROUP = "rabbitmq"
# How much lower the CPU priority of every other group's worker is (`make test`, below).
NICE = 10


# First: xdist's own hook turns each test's xdist_group mark into the suffix of its node id, which
# is all `--dist loadgroup` groups by, so the marks must be set before it reads them.
# tests/unit/test_xdist_groups.py checks that the groups hold (under pytest 9.2 they did not).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    groups = [_mark_group(item) for item in items]
    # `make test` deals the groups to its workers in this order (--no-loadscope-reorder): the
    # broker tests' group first, so it starts at once on a worker of its own, then the rest by
    # size, largest first (as xdist's own reorder does). The broker group is mostly waiting
    # (ticks, restarts: 270 s of wall time for about 100 s of CPU) and runs beside two workers
    # that use the two cores; started after the synths (fifth by size) it ended the run.
    size = Counter(groups)
    order = sorted(range(len(items)), key=lambda i: (groups[i] != BROKER_GROUP, -size[groups[i]]))
    items[:] = [items[i] for i in order]


def _mark_group(item: pytest.Item) -> str:
    """Mark `item` with its kind and its xdist_group; the group."""
    kinds = {mark.name for mark in item.iter_markers() if mark.name in KINDS}
    if len(kinds) > 1:
        raise pytest.UsageError(f"{item.nodeid}: one kind, not {sorted(kinds)}")
    if kinds:
        (kind,) = kinds
    else:
        kind = FOLDER_KIND[item.path.relative_to(ROOT / "tests").parts[0]]
        item.add_marker(kind)
    # `make test` runs three workers on the two cores (pytest-xdist, --dist loadgroup; the broker
    # group first and every other worker niced: the hooks above and below). The
    # tests of one file stay on one worker (they share its module fixtures: a local
    # pipeline), the infra tests of one environment on one (a worker synthesizes an
    # environment once, for all its tests) and every broker test on one (they share the
    # session's RabbitMQ node, and their timing bounds assume no other broker test runs).
    folder = item.path.relative_to(ROOT / "tests").parts[0]
    env = getattr(getattr(item, "callspec", None), "params", {}).get("env")
    if kind == "infra":
        group = f"synth-{env}" if isinstance(env, str) else "synth"
    elif folder == "integration":
        group = BROKER_GROUP
    elif folder == "worker":
        # The session's moto server and worker processes (tests/worker/conftest.py): moto's
        # in-process server shares its state with mock_aws, whose every start resets it, so
        # no other file's test may run on this worker between two of these.
        group = "worker"
    else:
        group = item.path.relative_to(ROOT).as_posix()
    item.add_marker(pytest.mark.xdist_group(group))
    return group


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A worker of `make test` (three of them on two cores) lowers its CPU priority (and its
    children's: the jsii node process, gunicorn, moto) by NICE before its first test outside the
    broker group. The broker tests bound lateness in milliseconds and failed when three workers
    shared the cores equally; this way they take the CPU they need first, and the synths use the
    rest. A worker that ran the broker group first lowers its priority afterwards (raising it
    again needs privileges). Outside xdist nothing changes."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return
    marks = [m.args[0] for m in item.iter_markers("xdist_group") if m.args]
    if marks and marks[0] != BROKER_GROUP and os.nice(0) < NICE:
        # Lowering one's own priority needs no privilege; a sandbox that forbids it still runs
        # the tests (and the niceness test in tests/unit/test_xdist_groups.py says so).
        with contextlib.suppress(OSError):
            os.nice(NICE - os.nice(0))


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's server on loopback, one per test module."""
    from devtools.moto_server import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture
def moto_ddb(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A DynamoDB client of moto's server, which every client the test makes also reaches (the
    endpoint variable); the tables the test created are deleted after it."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_url)
    client = boto3.client("dynamodb", endpoint_url=moto_url)
    before = set(client.list_tables()["TableNames"])
    yield client
    for table in set(client.list_tables()["TableNames"]) - before:
        client.delete_table(TableName=table)
