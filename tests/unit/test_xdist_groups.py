"""`make test`'s grouping holds: tests given one xdist_group in a conftest hook, as
tests/conftest.py gives them, run on one worker under `--dist loadgroup`.

pytest 9.2 with pytest-xdist 3.8.0 dropped the groups without a word (pytest-xdist issue 1386):
the module fixtures of the local pipeline were set up on both workers, every environment was
synthesized twice, and the broker tests ran on both at once. requirements-dev.txt pins pytest
until a fixed xdist is released; this fails if an upgrade breaks it again."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

CONFTEST = """
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(item.path.stem))
"""


@pytest.mark.integration  # it runs pytest with two xdist workers in a subprocess
def test_the_tests_of_one_group_run_on_one_worker(tmp_path: Path) -> None:
    # Given two files of twelve tests, each file one group (as tests/conftest.py groups a file)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for name in ("test_one", "test_two"):
        (tmp_path / f"{name}.py").write_text(
            "import pytest\n\n@pytest.mark.parametrize('i', range(12))\ndef test_it(i):\n    pass\n"
        )
    # When pytest runs them on two workers as `make test` does
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-v",
            "-p",
            "no:cacheprovider",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # Then each file's tests all ran on one worker
    workers: dict[str, set[str]] = defaultdict(set)
    for worker, file in re.findall(r"^\[(gw\d)\] .*PASSED (test_\w+)\.py::", run.stdout, re.M):
        workers[file].add(worker)
    assert set(workers) == {"test_one", "test_two"}, run.stdout[-3000:]
    assert all(len(ran_on) == 1 for ran_on in workers.values()), dict(workers)
