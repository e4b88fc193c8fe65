"""TCP transports: accept many connections, limit them (longest idle out first), dial and reconnect."""

from __future__ import annotations

import json
import logging
import socket as stdsocket
import subprocess
import sys
import time
from typing import Any

import gevent
import gevent.socket
import pytest
from gauss_plugins.transport.tcp import TcpClient, TcpConnection, TcpServer
from support import wait_until
from support.plugins import connect

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


def peer_socket(address: tuple[str, int], source_ip: str = "127.0.0.1") -> Any:
    """A connection from ``source_ip`` (any 127.0.0.0/8 address is this host on Linux)."""
    sock = gevent.socket.socket()
    sock.settimeout(10)
    sock.bind((source_ip, 0))
    sock.connect(address)
    return sock


def is_closed_by_server(sock: Any, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(10) == b""
    except ConnectionResetError:
        return True


def test_server_at_its_limit_closes_the_longest_idle_connection_to_admit_a_new_one() -> None:
    server = TcpServer("127.0.0.1", 0, max_connections=2)
    server.serve(echo)
    try:
        idle = connect(server.address)
        wait_until(lambda: server.connections == 1)
        gevent.sleep(0.02)
        active = connect(server.address)
        active.sendall(b"ping")  # younger and busy: the silent one is the longest idle
        assert active.recv(10) == b"ping"
        newcomer = connect(server.address)
        assert is_closed_by_server(idle)
        newcomer.sendall(b"hello")
        assert newcomer.recv(10) == b"hello"
        active.sendall(b"still")
        assert active.recv(10) == b"still"
        assert server.closed_by["max_connections"] == 1
        assert server.connections == 2 and server.accepted == 3
        for sock in (idle, active, newcomer):
            sock.close()
    finally:
        server.close()


def test_a_flood_of_idle_connections_never_locks_out_an_active_one() -> None:
    server = TcpServer("127.0.0.1", 0, max_connections=16)
    server.serve(echo)
    closed: list[str] = []
    server.on_close = closed.append
    try:
        feeder = connect(server.address)
        flood = []
        for i in range(200):
            flood.append(connect(server.address))
            if i % 10 == 0:
                feeder.sendall(b"q")
                assert feeder.recv(10) == b"q"
        wait_until(lambda: server.accepted == 201, what="every connection accepted")
        assert server.connections <= 16
        feeder.sendall(b"last")
        assert feeder.recv(10) == b"last"
        assert server.closed_by["max_connections"] == 201 - 16
        assert closed == ["max_connections"] * (201 - 16)
        for sock in [feeder, *flood]:
            sock.close()
    finally:
        server.close()


def test_idle_timeout_closes_silent_connections_only() -> None:
    server = TcpServer("127.0.0.1", 0, idle_timeout_s=0.3)
    server.serve(echo)
    try:
        silent, talking = connect(server.address), connect(server.address)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            talking.sendall(b"x")
            assert talking.recv(10) == b"x"
            gevent.sleep(0.05)
        assert is_closed_by_server(silent, timeout=0.1)
        talking.sendall(b"y")
        assert talking.recv(10) == b"y"
        assert server.closed_by["idle_timeout"] == 1
        silent.close()
        talking.close()
    finally:
        server.close()


def test_no_idle_timeout_by_default() -> None:
    server = create("transport", {"type": "tcp-server", "port": 0})
    assert server.idle_timeout_s is None and server.max_connections_per_peer == 0


def test_a_peer_at_its_limit_gives_up_its_own_longest_idle_connection() -> None:
    server = TcpServer("127.0.0.1", 0, max_connections_per_peer=2)
    server.serve(echo)
    try:
        other = peer_socket(server.address, "127.0.0.1")
        first = peer_socket(server.address, "127.0.0.2")
        wait_until(lambda: server.connections == 2)
        gevent.sleep(0.02)
        other.sendall(b"o")  # the other peer's connection is not idle-younger: it must survive anyway
        assert other.recv(10) == b"o"
        gevent.sleep(0.02)
        second = peer_socket(server.address, "127.0.0.2")
        third = peer_socket(server.address, "127.0.0.2")
        assert is_closed_by_server(first)
        for sock, data in ((second, b"2"), (third, b"3"), (other, b"o")):
            sock.sendall(data)
            assert sock.recv(10) == data
        assert server.closed_by["per_peer"] == 1 and server.closed_by["max_connections"] == 0
        for sock in (other, first, second, third):
            sock.close()
        wait_until(lambda: server.connections == 0)
        assert server._per_peer == {}  # the per-peer counts follow the closes
    finally:
        server.close()


def test_connection_churn_is_not_logged_per_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG - 1)
    caplog.set_level(logging.INFO, logger="gauss_plugins")
    server = TcpServer("127.0.0.1", 0, max_connections=8)
    server.serve(echo)
    try:
        for _ in range(100):
            connect(server.address).close()
        wait_until(lambda: server.ended == 100, what="every connection ended")
    finally:
        server.close()
    assert [r.message for r in caplog.records if r.levelno >= logging.INFO] == []


def test_port_in_use_fails_at_serve_naming_the_port_key() -> None:
    server = TcpServer("127.0.0.1", 0)
    server.serve(echo)
    port = server.address[1]
    try:
        with pytest.raises(ConfigError, match=rf"^transport.port: cannot listen on 127.0.0.1:{port}: Address already in use"):
            TcpServer("127.0.0.1", port).serve(echo)
        with pytest.raises(ConfigError, match=r"^transport.port: cannot listen on 192.0.2.1:"):  # not an address of this machine
            TcpServer("192.0.2.1", 0).serve(echo)
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


def test_options_reach_the_transports() -> None:
    server = create("transport", {"type": "tcp-server", "port": 0})
    assert isinstance(server, TcpServer)
    assert (server.bind, server.max_connections, server.max_connections_per_peer, server.idle_timeout_s) == ("127.0.0.1", 1024, 0, None)
    assert (server.nodelay, server.recv_buffer, server.send_buffer) == (True, 1 << 20, 1 << 20)
    server = create("transport", {"type": "tcp-server", "port": 7000, "idle_timeout_s": 2, "backlog": 8, "nodelay": False, "recv_buffer": 0})
    assert (server.port, server.idle_timeout_s, server.backlog, server.nodelay, server.recv_buffer) == (7000, 2.0, 8, False, 0)
    client = create("transport", {"type": "tcp-client", "port": 9, "reconnect_max": 1, "send_buffer": 4096})
    assert isinstance(client, TcpClient)
    assert (client.host, client.port, client.reconnect_min, client.reconnect_max, client.connect_timeout) == ("127.0.0.1", 9, 0.1, 1.0, 5.0)
    assert client.send_buffer == 4096


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"type": "tcp-server"}, "port: missing"),
        ({"type": "tcp-server", "port": 65536}, "port: Expected int <= 65535"),
        ({"type": "tcp-client", "port": 0}, "port: Expected int >= 1"),
        ({"type": "tcp-server", "port": 0, "idle_timeout_s": 0}, "idle_timeout_s: Expected float >= 0.001"),
        ({"type": "tcp-server", "port": 0, "max_connections_per_peer": "2"}, "max_connections_per_peer: Expected int, got str"),
        ({"type": "tcp-server", "port": 0, "max_connections": 0}, "max_connections: Expected int >= 1"),
        ({"type": "tcp-server", "port": 0, "bind": ""}, "bind: Expected str of length >= 1"),
        ({"type": "tcp-server", "port": 0, "recv_buffer": -1}, "recv_buffer: Expected int >= 0"),
        ({"type": "tcp-client", "port": 9, "send_buffer": 1 << 31}, "send_buffer: Expected int <= 1073741824"),
        ({"type": "tcp-client", "port": 9, "nodelay": 1}, "nodelay: Expected bool, got int"),
        ({"type": "tcp-client", "port": 9, "reconnect_min": 2.0, "reconnect_max": 1.0}, "reconnect_max: must be at least reconnect_min"),
        ({"type": "tcp-client", "port": 9, "connect_timeout": float("inf")}, "connect_timeout: "),
        ({"type": "tcp-client", "port": 9, "backlog": 8}, "backlog: unknown option"),
    ],
)
def test_bad_options_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create("transport", table)


DESCRIPTOR_LIMITED_SERVER = """
import json, resource, sys
import gevent
from gauss_plugins.transport.tcp import TcpServer

def echo(conn):
    while True:
        data = conn.recv()
        if not data:
            return
        conn.sendall(data)

resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
server = TcpServer("127.0.0.1", 0)  # max_connections 1024: the descriptors run out first
server.serve(echo)
print(server.address[1], flush=True)
gevent.get_hub().threadpool.spawn(sys.stdin.read).get()  # until the test closes our stdin
print(json.dumps(server.closed_by), flush=True)
"""


def test_out_of_descriptors_the_server_closes_its_longest_idle_connection_instead_of_refusing() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", DESCRIPTOR_LIMITED_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        port = int(proc.stdout.readline())
        idle = [stdsocket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(100)]
        with stdsocket.create_connection(("127.0.0.1", port), timeout=10) as feeder:
            feeder.sendall(b"quote")
            assert feeder.recv(10) == b"quote"
        proc.stdin.close()
        closed_by = json.loads(proc.stdout.readline())
        for sock in idle:
            sock.close()
    assert closed_by["descriptors"] >= 100 - 64
    assert closed_by["max_connections"] == 0
