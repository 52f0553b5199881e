"""A private RabbitMQ node for tests and benchmarks: loopback ports, its own temp dirs, no plugins
but the management API when asked (Amazon MQ serves it on every RabbitMQ broker).

It runs Debian's `rabbitmq-server` (installed by .ci/run) as the current user, without the
package's wrapper (which switches to the `rabbitmq` user and the system data directory), so
several nodes can coexist with the system node and with each other.

With `SLUICE_RABBITMQ_ROOT` set to a Debian root that has `rabbitmq-server` installed (set by
devtools/rabbitmq4.sh: Debian 13's RabbitMQ 4.0 on Erlang 27, where the system's Debian 12 has
3.10 on Erlang 25), the node and `rabbitmqctl` run inside that root through `chroot`. The root
sees the host's /tmp (where the nodes' directories are) and shares its network, so nothing else
changes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pika
import pika.exceptions

from devtools.ports import free_port

# The package's real scripts; /usr/sbin/rabbitmq-* are wrappers that switch user.
_SBIN = Path("/usr/lib/rabbitmq/bin")


class RabbitMQMissing(RuntimeError):
    """rabbitmq-server is not installed (apt-get install -y rabbitmq-server)."""


def _tool(name: str) -> list[str]:
    """The command that runs RabbitMQ's `name` (inside SLUICE_RABBITMQ_ROOT when that is set)."""
    root = os.environ.get("SLUICE_RABBITMQ_ROOT")
    if root:
        if not (Path(root) / _SBIN.relative_to("/") / name).exists():
            raise RabbitMQMissing(
                f"SLUICE_RABBITMQ_ROOT={root} has no {_SBIN / name}: "
                "run through devtools/rabbitmq4.sh, which makes the root"
            )
        return ["chroot", root, str(_SBIN / name)]
    path = _SBIN / name
    if path.exists():
        return [str(path)]
    found = shutil.which(name)
    if not found:
        raise RabbitMQMissing(
            f"{name} not found: install it with `apt-get install -y rabbitmq-server` "
            "(.ci/run does this)"
        )
    return [found]


class RabbitNode:
    """One private node; `url` is its AMQP URL (guest over loopback)."""

    def __init__(
        self, base: Path, name: str = "sluice-test", *, management: bool = False, config: str = ""
    ) -> None:
        """`config`: more rabbitmq.conf lines (after the node's own)."""
        self.base = base
        # Stable ports: the node restarts on them (tests restart the broker).
        self.port = free_port(stable=True)
        self.dist_port = free_port(stable=True)
        self.management_port = free_port(stable=True) if management else None
        self.nodename = f"{name}-{os.getpid()}-{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        self._proc: subprocess.Popen[bytes] | None = None
        for sub in ("mnesia", "log", "home"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[rabbitmq_management].\n" if management else "[].\n")
        management_conf = (
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
            # node statistics every second, not every five: tests read them soon after start
            "collect_statistics_interval = 1000\n"
            if management
            else ""
        )
        (base / "rabbitmq.conf").write_text(
            management_conf + f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "log.console = false\n"
            "log.file.level = warning\n"
            # Tests publish fast: never let the memory alarm block them on a busy CI machine.
            "vm_memory_high_watermark.relative = 0.8\n"
            "disk_free_limit.absolute = 50MB\n" + config
        )

    @property
    def management_url(self) -> str:
        """The management API's base URL (only with `management=True`)."""
        if self.management_port is None:
            raise RuntimeError("this node runs without the management plugin")
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.base / "home"),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self, timeout: float = 60.0) -> RabbitNode:
        log = (self.base / "server.out").open("ab")
        self._proc = subprocess.Popen(
            _tool("rabbitmq-server"),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited: see {self.base / 'server.out'}")
            try:
                pika.BlockingConnection(pika.URLParameters(self.url)).close()
                return
            except pika.exceptions.AMQPError:
                time.sleep(0.1)
        raise TimeoutError(f"RabbitMQ node {self.nodename} not ready after {timeout} s")

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        out = subprocess.run(
            [*_tool("rabbitmqctl"), "-n", self.nodename, *args],
            env=self.env,
            capture_output=True,
            timeout=timeout,
            check=True,
        )
        return out.stdout.decode()

    def stop(self) -> None:
        """Stop the whole node (Erlang VM included) and wait for it."""
        if self._proc is None:
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.ctl("shutdown", timeout=60)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
        self._proc = None

    def restart(self) -> float:
        """Stop and start the node with its data (a broker restart); returns the seconds it took."""
        began = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - began
