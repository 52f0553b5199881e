"""`pip install .` on a fresh venv gives a working `sluice` command (offline, from the wheelhouse)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

WHEELHOUSE = ROOT / "build" / "wheelhouse"


@pytest.mark.slow
@pytest.mark.integration
def test_pip_install_gives_a_working_sluice_command(tmp_path: Path) -> None:
    # Given a fresh venv and only the pinned wheels (make wheelhouse), no network
    assert (WHEELHOUSE / ".done").exists(), "run `make wheelhouse` (make setup-dev does)"
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    # When the project is installed as a user would
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(WHEELHOUSE),
         str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    sluice = tmp_path / "venv" / "bin" / "sluice"
    # Then the command runs, lists the declared periodic tasks, and needs nothing of the worker
    listed = subprocess.run(
        [str(sluice), "schedules", "list"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert listed.returncode == 0, listed.stderr
    assert "heartbeat" in listed.stdout
    installed = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('worker'))"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )  # fmt: skip
    assert installed.stdout.strip() == "None"
