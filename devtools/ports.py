"""Loopback ports for the servers the development tools start."""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Linux's ephemeral range (the ports the kernel gives outgoing connections), as documented for
# net.ipv4.ip_local_port_range; its default when the file cannot be read.
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL = (32768, 60999)
# Where a server that restarts on the same port gets it: below the ephemeral range.
STABLE_FLOOR = 20000


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(v) for v in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return low, high


def bindable(port: int, *, reuse_address: bool = False) -> bool:
    """Can a socket bind `port` on 127.0.0.1 now? `reuse_address`: as a server binds it
    (SO_REUSEADDR, as gunicorn does), so that a port whose old connections linger in TIME_WAIT
    after its server stopped counts as free and only a socket listening there does not."""
    with socket.socket() as s:
        if reuse_address:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, stable: bool = False) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now.

    `stable`: for a server that is stopped and started again on the same port (a broker
    restart). A port from the ephemeral range may meanwhile be taken by an outgoing connection,
    a client's reconnect to that very port included (TCP's self-connect), and the server then
    fails to start with EADDRINUSE (seen in CI). So such a port comes from below that range."""
    if not stable:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    low, _ = ephemeral_range()
    ceiling = max(low, STABLE_FLOOR + 1000)
    for _ in range(200):
        port = random.randrange(STABLE_FLOOR, ceiling)  # noqa: S311 (a test port, not a secret)
        if bindable(port):
            return port
    raise OSError(f"no free port in {STABLE_FLOOR}-{ceiling - 1} on 127.0.0.1")
