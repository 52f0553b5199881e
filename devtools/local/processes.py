"""The worker's processes of a local run, started from their Procfile lines as on Elastic Beanstalk."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROCFILE = ROOT / "worker" / "Procfile"


def procfile(name: str, path: Path = PROCFILE) -> str | None:
    """The command of Procfile process `name` (a shell command, as EB runs it); None if absent."""
    for line in path.read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    return None


@dataclass
class Processes:
    """Child processes and their log files (build/local/*.log)."""

    logdir: Path
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, command: str | list[str], env: dict[str, str]) -> None:
        out = (self.logdir / f"{name}.log").open("wb")
        # Procfile lines are shell commands, as on EB.
        self.children[name] = subprocess.Popen(
            command,
            shell=isinstance(command, str),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check(self) -> None:
        for name, proc in self.children.items():
            if proc.poll() is not None:
                tail = (self.logdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the {name} process exited {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.children.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def wait_healthy(url: str, procs: Processes, timeout_s: float = 120) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        procs.check()
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:  # noqa: S310
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the worker did not answer {url}/health in {timeout_s} s")
