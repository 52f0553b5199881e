"""Tests reach nothing but loopback: a connection elsewhere fails instead of leaving the machine."""

from __future__ import annotations

import socket

import pytest
from pytest_socket import SocketConnectBlockedError


def test_connection_to_a_public_address_is_blocked():
    with pytest.raises(SocketConnectBlockedError):
        socket.create_connection(("198.51.100.7", 443), timeout=1)


def test_loopback_is_allowed():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        client = socket.create_connection(server.getsockname(), timeout=1)
        client.close()
    finally:
        server.close()
