"""moto's server on a free loopback port, for the local pipeline and the tests that talk to AWS
over HTTP (other processes, or clients that must not be patched in-process)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from moto.server import ThreadedMotoServer

from devtools.ports import free_port


@contextmanager
def moto_server() -> Iterator[str]:
    """Run moto's server (in a thread) while the block runs; its URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
