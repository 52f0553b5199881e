"""The broker tests run on the RabbitMQ they were asked for: the system's Debian package, or the
one in SLUICE_RABBITMQ_ROOT (devtools/rabbitmq4.sh, `make test-rabbitmq4`)."""

from __future__ import annotations

import os
import re
import subprocess

import pika
import pytest

from devtools.rabbitmq import RabbitMQMissing, RabbitNode


def installed_version() -> str:
    """dpkg's record of the rabbitmq-server package the node should be running."""
    root = os.environ.get("SLUICE_RABBITMQ_ROOT")
    query = ["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"]
    out = subprocess.run(
        ["chroot", root, *query] if root else query, capture_output=True, text=True, check=True
    )
    return out.stdout


def test_the_node_is_the_rabbitmq_installed_where_the_run_asked(rabbit: RabbitNode):
    # Given the session's node, and dpkg's version of the package it should run
    expected = installed_version()
    # When a client connects
    conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    try:
        version = conn._impl.server_properties["version"]
    finally:
        conn.close()
    # Then the server announces that version (dpkg's carries Debian's revision after a dash)
    version = version.decode() if isinstance(version, bytes) else version
    assert expected.split("-")[0] == version
    if os.environ.get("SLUICE_RABBITMQ_ROOT"):
        assert version.startswith("4."), version


def test_a_root_without_rabbitmq_fails_with_the_way_to_make_one(tmp_path, monkeypatch):
    # Given SLUICE_RABBITMQ_ROOT naming a directory with no RabbitMQ in it
    monkeypatch.setenv("SLUICE_RABBITMQ_ROOT", str(tmp_path))
    # When a node is started, it fails before running anything, naming the root and the script
    with pytest.raises(
        RabbitMQMissing, match=re.escape("rabbitmq-server: run through devtools/rabbitmq4.sh")
    ):
        RabbitNode(tmp_path / "node").start()
