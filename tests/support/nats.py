"""A private ``nats-server`` (Debian's package) for tests and benchmarks: free port, JetStream in a temporary directory.

Its configuration holds the partition mapping of SPEC section 7,
``quotes.* -> quotes.{{partition(N,1)}}.{{wildcard(1)}}``, so quotes
published to ``quotes.<SYMBOL>`` land on ``quotes.<shard>.<SYMBOL>``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from support import free_port

__all__ = ["NatsServer", "BusClient", "nats_binary", "require_nats_server", "publish_messages", "quote_messages"]


def nats_binary() -> str | None:
    """The nats-server executable (Debian installs it as /usr/sbin/nats-server)."""
    found = shutil.which("nats-server")
    if found:
        return found
    for candidate in ("/usr/sbin/nats-server", "/usr/bin/nats-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_nats_server() -> str:
    """The binary; skip when it is missing locally, fail in CI (``.ci/setup`` installs it)."""
    binary = nats_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("nats-server is missing but CI installs it (.ci/setup: apt-get install nats-server)")
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    return binary


class NatsServer:
    """One nats-server process; :meth:`stop` and :meth:`start` again keep its JetStream data and port."""

    def __init__(
        self,
        directory: Path,
        *,
        shards: int = 2,
        mappings: dict[str, str] | None = None,
        binary: str | None = None,
        port: int | None = None,
    ) -> None:
        self.binary = binary or require_nats_server()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.shards = shards
        self.config = directory / "nats.conf"
        store = directory / "jetstream"
        mapped = {"quotes.*": f"quotes.{{{{partition({shards},1)}}}}.{{{{wildcard(1)}}}}", **(mappings or {})}
        lines = ", ".join(f'"{source}": "{target}"' for source, target in mapped.items())
        self.config.write_text(f'host: 127.0.0.1\nport: {self.port}\njetstream {{ store_dir: "{store}" }}\nmappings = {{ {lines} }}\n')
        self.log_path = directory / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> NatsServer:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"nats-server exited:\n{self.log_path.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    if sock.recv(4096).startswith(b"INFO"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"nats-server did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class BusClient:
    """An independent nats-py client on its own thread and asyncio loop (usable from gevent tests and plain ones).

    :meth:`subscribe` collects ``(subject, data)`` pairs into a list as they arrive;
    :meth:`publish` sends ``(subject, data)`` pairs and flushes (or, with
    ``stream_ack``, waits for each JetStream acknowledgement).
    """

    def __init__(self, url: str) -> None:
        import nats

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.nc = self._run(nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2))

    def _run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def subscribe(self, subject: str) -> list[tuple[str, bytes]]:
        got: list[tuple[str, bytes]] = []

        async def on_message(msg: Any) -> None:
            got.append((msg.subject, msg.data))

        async def run() -> None:
            await self.nc.subscribe(subject, cb=on_message)
            await self.nc.flush()

        self._run(run())
        return got

    def publish(self, messages: list[tuple[str, bytes]], *, stream_ack: bool = False) -> None:
        async def run() -> None:
            if stream_ack:
                js = self.nc.jetstream()
                for subject, data in messages:
                    await js.publish(subject, data)
            else:
                for subject, data in messages:
                    await self.nc.publish(subject, data)
                await self.nc.flush(timeout=30)

        self._run(run(), timeout=300)

    def consumer_info(self, stream: str, durable: str) -> Any:
        return self._run(self.nc.jetstream().consumer_info(stream, durable))

    def close(self) -> None:
        try:
            self._run(self.nc.close(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def __enter__(self) -> BusClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def publish_messages(url: str, messages: list[tuple[str, bytes]], *, stream_ack: bool = False) -> None:
    """Publish ``(subject, data)`` pairs with a fresh :class:`BusClient`, then close it."""
    with BusClient(url) as client:
        client.publish(messages, stream_ack=stream_ack)


def quote_messages(quotes: list[dict[str, Any]], per_message: int = 10, prefix: str = "quotes") -> list[tuple[str, bytes]]:
    """Quotes as NATS messages to ``<prefix>.<SYMBOL>``, up to ``per_message`` JSON lines each, in order per symbol."""
    pending: dict[str, list[bytes]] = {}
    out: list[tuple[str, bytes]] = []
    for quote in quotes:
        lines = pending.setdefault(quote["symbol"], [])
        lines.append(json.dumps(quote).encode() + b"\n")
        if len(lines) >= per_message:
            out.append((f"{prefix}.{quote['symbol']}", b"".join(lines)))
            lines.clear()
    out.extend((f"{prefix}.{symbol}", b"".join(lines)) for symbol, lines in pending.items() if lines)
    return out
