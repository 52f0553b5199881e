"""The fault-injection run (tests/chaos/harness.py) in its small version: part of `make test`.
`make chaos` runs the long one (SLUICE_CHAOS_N events, SLUICE_CHAOS_TASKS transcodes,
SLUICE_CHAOS_KILLS kills of each process kind; SLUICE_CHAOS_SEED replays a run)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.chaos import harness
from tests.conftest import ROOT


@pytest.mark.chaos
@pytest.mark.slow
def test_nothing_lost_nothing_failed_for_the_wrong_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = int(os.environ.get("SLUICE_CHAOS_N") or 60)
    m = int(os.environ.get("SLUICE_CHAOS_TASKS") or 3)
    kills = int(os.environ.get("SLUICE_CHAOS_KILLS") or 2)
    seed = int(os.environ.get("SLUICE_CHAOS_SEED") or time.time_ns() % 1_000_000)
    began = time.monotonic()
    table = harness.run(n, m, seed, tmp_path, kills=kills)
    table.notes.append(f"wall time {time.monotonic() - began:.1f} s")
    text = table.render()
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / f"chaos-{n}.txt").write_text(text + "\n")
    with capsys.disabled():
        print(text)
    assert table.failures() == {}, text
