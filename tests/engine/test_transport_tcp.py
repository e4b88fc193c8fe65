"""TCP transports: accept many connections, limit them, dial and reconnect."""

from __future__ import annotations

import logging

import gevent
import gevent.socket
import pytest
from engine_plugins import connect, wait_until
from gauss_plugins.transport.tcp import TcpClient, TcpConnection, TcpServer

from gauss.errors import ConfigError
from gauss.registry import create


def echo(conn: TcpConnection) -> None:
    while True:
        data = conn.recv()
        if not data:
            return
        conn.sendall(data)


def test_server_serves_each_connection_in_its_own_greenlet() -> None:
    server = TcpServer("127.0.0.1", 0)
    server.serve(echo)
    try:
        a, b = connect(server.address), connect(server.address)
        a.sendall(b"one")
        b.sendall(b"two")
        assert b.recv(10) == b"two" and a.recv(10) == b"one"
        assert server.connections == 2
    finally:
        server.close()
    assert server.connections == 0
    assert a.recv(10) == b""
    a.close()
    b.close()


def test_server_refuses_connections_beyond_the_limit() -> None:
    server = TcpServer("127.0.0.1", 0, max_connections=1)
    server.serve(echo)
    try:
        first = connect(server.address)
        wait_until(lambda: server.connections == 1)
        second = connect(server.address)
        second.settimeout(10)
        assert second.recv(10) == b""  # closed at once
        assert server.refused == 1
        first.sendall(b"ok")
        assert first.recv(10) == b"ok"
        first.close()
        second.close()
    finally:
        server.close()


def test_port_in_use_fails_at_serve() -> None:
    server = TcpServer("127.0.0.1", 0)
    server.serve(echo)
    try:
        with pytest.raises(OSError):
            TcpServer("127.0.0.1", server.address[1]).serve(echo)
    finally:
        server.close()


def test_client_reconnects_after_an_outage_and_logs_it_once(caplog: pytest.LogCaptureFixture) -> None:
    probe = gevent.socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    received: list[bytes] = []

    def handler(conn: TcpConnection) -> None:
        received.append(conn.recv())

    client = TcpClient("127.0.0.1", port, reconnect_min=0.01, reconnect_max=0.05)
    caplog.set_level(logging.INFO)
    client.serve(handler)
    try:
        gevent.sleep(0.3)  # several failed attempts: one warning
        assert sum("cannot connect" in r.message for r in caplog.records) == 1
        server = TcpServer("127.0.0.1", port)
        server.serve(lambda conn: conn.sendall(b"hello"))
        try:
            wait_until(lambda: received, what="a connection")
            assert received[0] == b"hello"
            assert any("connected after" in r.message for r in caplog.records)
            wait_until(lambda: client.connects >= 2, what="a reconnect after the server closed")
        finally:
            server.close()
    finally:
        client.close()


def test_factories_check_their_options() -> None:
    assert isinstance(create("transport", {"type": "tcp-server", "port": 0}), TcpServer)
    assert isinstance(create("transport", {"type": "tcp-client", "port": 9}), TcpClient)
    with pytest.raises(ConfigError, match="port: missing"):
        create("transport", {"type": "tcp-server"})
    with pytest.raises(ConfigError, match="reconnect_max: must be at least"):
        create("transport", {"type": "tcp-client", "port": 9, "reconnect_min": 2.0, "reconnect_max": 1.0})
