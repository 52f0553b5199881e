"""The bundle's platform hook that gives the tasks process its drain: it finds the systemd unit
running the Procfile's tasks command and sets that unit's stop timeout from the environment.

The hook runs for real (bash); EB's get-config and systemctl are stand-ins on loopback of nothing:
small scripts that answer as the real ones do and record what they were asked.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from devtools.local.processes import procfile
from sluice.settings import TasksSettings
from stacks.worker_env import worker_bundle

HOOK = Path(".platform/hooks/postdeploy/10_tasks_stop_timeout.sh")
CONFIG_HOOK = Path(".platform/confighooks/postdeploy/10_tasks_stop_timeout.sh")
STOP_VARIABLE = TasksSettings.variables()["stop_timeout_s"]


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return str(path)


def run_hook(tmp_path: Path, *, stop_s: str | None, units: dict[str, str]) -> tuple[str, Path]:
    """Run the bundled hook with `units` (name -> command line) and the property set to
    `stop_s`; returns systemctl's log and the systemd directory."""
    bundle = worker_bundle()
    log = tmp_path / "systemctl.log"
    table = tmp_path / "units"
    table.write_text("".join(f"{name}\t{command}\n" for name, command in units.items()))
    properties = {STOP_VARIABLE: stop_s} if stop_s is not None else {}
    get_config = _script(
        tmp_path / "get-config",
        # get-config environment -k NAME: the value, or an error when the property is unset
        "".join(
            f'[[ "$3" == "{k}" ]] && {{ echo "{v}"; exit 0; }}\n' for k, v in properties.items()
        )
        + 'echo "key $3 not found" >&2; exit 1\n',
    )
    systemctl = _script(
        tmp_path / "systemctl",
        f'echo "$*" >> {log}\n'
        'case "$1" in\n'
        f"  list-units) cut -f1 {table} | sed 's/$/ loaded active running x/' ;;\n"
        f'  show) grep -P "^${{@: -1}}\\t" {table} | cut -f2 | sed "s/^/{{ path=\\/bin\\/sh ; argv[]=\\/bin\\/sh -c /" ;;\n'
        "esac\n",
    )
    systemd = tmp_path / "systemd"
    systemd.mkdir()
    subprocess.run(
        ["bash", str(bundle / HOOK)],
        check=True,
        timeout=30,
        env={
            **os.environ,
            "SLUICE_GET_CONFIG": get_config,
            "SLUICE_SYSTEMCTL": systemctl,
            "SLUICE_SYSTEMD_DIR": str(systemd),
        },
    )
    return (log.read_text() if log.exists() else ""), systemd


def test_the_tasks_unit_stops_no_sooner_than_the_configured_timeout(tmp_path: Path) -> None:
    # Given EB's units for the Procfile's processes, each running its Procfile command
    path = worker_bundle() / "Procfile"
    names = [line.split(":", 1)[0] for line in path.read_text().splitlines() if ":" in line]
    units = {f"{name}.service": str(procfile(name, path)) for name in names}
    assert "tasks.service" in units
    units["sqsd.service"] = "/opt/elasticbeanstalk/bin/sqsd"
    # When the hook runs with the stop timeout the stack rendered
    calls, systemd = run_hook(tmp_path, stop_s="330", units=units)
    # Then the unit running the tasks process, and only it, gets that stop timeout
    (dropin,) = systemd.glob("*/50-sluice-drain.conf")
    assert dropin.parent.name == "tasks.service.d"
    assert dropin.read_text() == "[Service]\nTimeoutStopSec=330\n"
    # And systemd reloads it, so the running unit stops within it at the next stop
    assert calls.splitlines()[-1] == "daemon-reload"


@pytest.mark.parametrize("stop_s", [None, "abc"])
def test_without_a_usable_timeout_the_hook_changes_nothing(tmp_path: Path, stop_s) -> None:
    calls, systemd = run_hook(
        tmp_path, stop_s=stop_s, units={"tasks.service": "python -m worker.tasks"}
    )
    assert list(systemd.iterdir()) == [] and "daemon-reload" not in calls


def test_the_hook_runs_after_configuration_deploys_too() -> None:
    bundle = worker_bundle()
    assert (bundle / HOOK).read_bytes() == (bundle / CONFIG_HOOK).read_bytes()
    # EB runs only executable hooks
    assert os.access(bundle / HOOK, os.X_OK) and os.access(bundle / CONFIG_HOOK, os.X_OK)
    assert STOP_VARIABLE in (bundle / HOOK).read_text()
