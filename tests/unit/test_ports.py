"""Ports for the servers the tests restart come from outside the kernel's ephemeral range."""

from __future__ import annotations

import socket

from devtools.ports import ephemeral_range, free_port
from devtools.rabbitmq import RabbitNode


def test_a_stable_port_is_free_and_below_the_ephemeral_range(tmp_path):
    low, high = ephemeral_range()
    assert 1024 < low <= high
    for _ in range(20):
        port = free_port(stable=True)
        assert port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nothing listens on it


def test_a_taken_port_is_never_given(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        offered = iter([taken, 20001])
        monkeypatch.setattr("random.randrange", lambda low, high: next(offered))
        assert free_port(stable=True) == 20001


def test_the_rabbitmq_node_restarts_on_ports_no_outgoing_connection_can_take(tmp_path):
    node = RabbitNode(tmp_path)
    low, _ = ephemeral_range()
    assert node.port < low and node.dist_port < low
