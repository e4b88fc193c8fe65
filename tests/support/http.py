"""API test helpers: a hub with its API on a free port, and real clients run off the event loop.

The server runs in this process under gevent (no monkey-patching); the
clients (``requests``, ``websocket-client``) are ordinary blocking libraries
run in gevent's native thread pool, so the loop keeps serving while they wait.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, TypeVar

import gevent
import requests
import websocket

from gauss.core import TopicRecord
from gauss.hub import Hub

T = TypeVar("T")

NOW_MS = int(time.time() * 1000)


def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call in a native thread while the gevent loop keeps running."""
    return gevent.get_hub().threadpool.spawn(fn, *args, **kwargs).get()  # type: ignore[no-any-return]


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        gevent.sleep(0.01)


def quote(i: int, symbol: str = "EURUSD", ts_ms: int | None = None) -> TopicRecord:
    ts = NOW_MS + i if ts_ms is None else ts_ms
    data = {"symbol": symbol, "bid": 1.0 + i * 1e-5, "ask": 1.0001 + i * 1e-5, "bid_size": 1.0, "ask_size": 2.0, "ts_ms": ts}
    return TopicRecord(ts, symbol, data)


def quotes(n: int, start: int = 0, symbols: tuple[str, ...] = ("EURUSD",)) -> list[TopicRecord]:
    return [quote(i, symbols[i % len(symbols)]) for i in range(start, start + n)]


class Api:
    """A running hub and its API's base URLs."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        server = hub._api_server
        assert server is not None
        self.server = server
        host, port = server.address
        self.base = f"http://{host}:{port}"
        self.ws_url = f"ws://{host}:{port}/ws"

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return off_loop(requests.get, self.base + path, **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return off_loop(requests.request, method, self.base + path, **kwargs)

    def ws(self, **kwargs: Any) -> WsClient:
        return WsClient(self.ws_url, **kwargs)


class WsClient:
    """A real WebSocket client (websocket-client), used from greenlets through the thread pool."""

    def __init__(self, url: str, header: list[str] | None = None, timeout: float = 15.0) -> None:
        self.conn = off_loop(websocket.create_connection, url, timeout=timeout, header=header or [])

    def send(self, message: Any) -> None:
        off_loop(self.conn.send, message if isinstance(message, str) else json.dumps(message))

    def recv(self, timeout: float = 15.0) -> dict[str, Any]:
        self.conn.settimeout(timeout)
        text = off_loop(self.conn.recv)
        return json.loads(text)  # type: ignore[no-any-return]

    def request(self, message: Any) -> dict[str, Any]:
        self.send(message)
        return self.recv()

    def records_until(self, last_seq: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Every record pushed until one with ``seq >= last_seq`` (fails on anything but records)."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while not got or got[-1]["seq"] < last_seq:
            message = self.recv(max(0.1, deadline - time.monotonic()))
            assert message["type"] == "records", message
            got.extend(message["records"])
        return got

    def close(self) -> None:
        try:
            off_loop(self.conn.close, timeout=2)
        except (websocket.WebSocketException, OSError):
            pass  # the server went first
        finally:
            self.conn.shutdown()


def hub_config(api: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "hub": {"status_interval": 0},
        "api": {"bind": "127.0.0.1", "port": 0, **(api or {})},
        "topics": [
            {"name": "quotes", "format": "quote", "storage": {"type": "memory", "capacity": 200_000}},
            {"name": "small", "format": "quote", "storage": {"type": "memory", "capacity": 10}},
            {"name": "candles", "format": "candle"},
            {"name": "any.*", "format": "any"},
        ],
        **extra,
    }




def stalled_ws(url_host: str, port: int, path: str = "/ws", recv_buffer: int = 4096) -> Any:
    """A WebSocket client that completes the handshake and then never reads (``recv_buffer`` 0: the kernel's)."""
    import base64
    import os
    import socket

    sock = socket.socket()
    if recv_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
    sock.settimeout(15)
    sock.connect((url_host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {url_host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        piece = sock.recv(1)
        if not piece:
            raise ConnectionError("closed during the handshake")
        answer += piece
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def masked_text_frame(payload: bytes) -> bytes:
    """A client-to-server text frame (masked, as RFC 6455 requires)."""
    import os
    import struct

    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class ServeProcess:
    """``gauss-serve`` as a subprocess on ``config_text`` (its own RSS and log, as in production)."""

    def __init__(self, directory: Any, config_text: str, *, preexec_fn: Callable[[], Any] | None = None) -> None:
        import os
        import subprocess
        import sys
        from pathlib import Path

        self.config = Path(directory) / "config.toml"
        self.config.write_text(config_text)
        self.log_path = Path(directory) / "serve.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gauss.cli.serve", "--config", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=directory,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=preexec_fn,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while "API on" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"gauss-serve did not start:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return int(self.proc.returncode)


def metric_value(exposition: str, series: str) -> float:
    """One series of a Prometheus text exposition (``name{labels}``), or the sum of a name's series (0 when absent)."""
    total = 0.0
    for line in exposition.splitlines():
        key, _, value = line.rpartition(" ")
        if key == series or ("{" not in series and key.split("{", 1)[0] == series):
            total += float(value)
    return total
