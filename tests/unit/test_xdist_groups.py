"""`make test`'s grouping holds: tests given one xdist_group in a conftest hook, as
tests/conftest.py gives them, run on one worker under `--dist loadgroup`.

pytest 9.2 with pytest-xdist 3.8.0 dropped the groups without a word (pytest-xdist issue 1386):
the module fixtures of the local pipeline were set up on both workers, every environment was
synthesized twice, and the broker tests ran on both at once. requirements-dev.txt pins pytest
until a fixed xdist is released; this fails if an upgrade breaks it again."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import ROOT

CONFTEST = """
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(item.path.stem))
"""


def _pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest run in a subprocess in `cwd`; it must exit 0."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.mark.integration  # it runs pytest with two xdist workers in a subprocess
def test_the_tests_of_one_group_run_on_one_worker(tmp_path: Path) -> None:
    # Given two files of twelve tests, each file one group (as tests/conftest.py groups a file)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for name in ("test_one", "test_two"):
        (tmp_path / f"{name}.py").write_text(
            "import pytest\n\n@pytest.mark.parametrize('i', range(12))\ndef test_it(i):\n    pass\n"
        )
    # When pytest runs them on two workers as `make test` does
    run = _pytest(tmp_path, "-n", "2", "--dist", "loadgroup", "-v")
    # Then each file's tests all ran on one worker
    workers: dict[str, set[str]] = defaultdict(set)
    for worker, file in re.findall(r"^\[(gw\d)\] .*PASSED (test_\w+)\.py::", run.stdout, re.M):
        workers[file].add(worker)
    assert set(workers) == {"test_one", "test_two"}, run.stdout[-3000:]
    assert all(len(ran_on) == 1 for ran_on in workers.values()), dict(workers)


@pytest.mark.integration  # it collects real test files in a subprocess
def test_the_broker_group_is_dealt_first_and_the_rest_largest_first() -> None:
    # Given test files of three groups: a broker one (tests/integration), a small and a big one
    files = [
        "tests/unit/test_readme.py",  # a few tests
        "tests/integration/test_scheduler_routing.py",
        "tests/unit/test_cost.py",  # many tests
    ]
    # When pytest collects them with the project's conftest, as `make test` does
    run = _pytest(ROOT, "--collect-only", "-q", *files)
    order = [line.split("::")[0] for line in run.stdout.splitlines() if "::" in line]
    # Then the broker group's tests come first, then the bigger group's, then the smaller's
    runs = [f for i, f in enumerate(order) if i == 0 or order[i - 1] != f]
    assert runs == [files[1], files[2], files[0]], runs
    assert order.count(files[2]) > order.count(files[0])


NICE_PROBE = """
import os, sys
sys.path.insert(0, {root!r})
from tests import conftest

class Mark:
    def __init__(self, group):
        self.args = (group,)

class Item:
    def __init__(self, group):
        self.group = group
    def iter_markers(self, name):
        return [Mark(self.group)] if name == "xdist_group" else []

for group in sys.argv[1:]:
    conftest.pytest_runtest_setup(Item(group))
    print(group, os.nice(0))
"""


@pytest.mark.parametrize(
    ("worker", "groups", "expected"),
    [
        ("gw0", ["rabbitmq", "rabbitmq", "synth-dev", "rabbitmq"], [0, 0, 10, 10]),
        ("gw1", ["worker", "rabbitmq"], [10, 10]),
        (None, ["synth-dev"], [0]),  # outside xdist: unchanged
    ],
)
def test_a_worker_lowers_its_priority_before_its_first_test_outside_the_broker_group(
    worker: str | None, groups: list[str], expected: list[int]
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER"}
    if worker is not None:
        env["PYTEST_XDIST_WORKER"] = worker
    # In a child process started at this one's priority: a priority lowered cannot be raised.
    base = os.nice(0)
    run = subprocess.run(
        [sys.executable, "-c", NICE_PROBE.format(root=str(ROOT)), *groups],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = [int(line.split()[1]) for line in run.stdout.splitlines()]
    assert seen == [max(base, e) if e else base for e in expected], run.stdout
