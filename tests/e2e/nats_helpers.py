"""A private ``nats-server`` (Debian's package) for tests and benchmarks: free port, JetStream in a temporary directory.

Its configuration holds the partition mapping of SPEC section 7,
``quotes.* -> quotes.{{partition(N,1)}}.{{wildcard(1)}}``, so quotes
published to ``quotes.<SYMBOL>`` land on ``quotes.<shard>.<SYMBOL>``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import free_port

__all__ = ["NatsServer", "nats_binary", "require_nats_server", "publish_messages"]


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

    def __init__(self, directory: Path, *, shards: int = 2, binary: str | None = None, port: int | None = None) -> None:
        self.binary = binary or require_nats_server()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.shards = shards
        self.config = directory / "nats.conf"
        store = directory / "jetstream"
        self.config.write_text(
            f"host: 127.0.0.1\nport: {self.port}\n"
            f'jetstream {{ store_dir: "{store}" }}\n'
            f'mappings = {{ "quotes.*": "quotes.{{{{partition({shards},1)}}}}.{{{{wildcard(1)}}}}" }}\n'
        )
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


def publish_messages(url: str, messages: list[tuple[str, bytes]], *, stream_ack: bool = False) -> None:
    """Publish ``(subject, data)`` pairs with an independent nats-py client (its own asyncio loop), then flush.

    With ``stream_ack`` each message is a JetStream publish that waits for the stream's acknowledgement.
    """
    import nats

    async def run() -> None:
        nc = await nats.connect(url)
        try:
            if stream_ack:
                js = nc.jetstream()
                for subject, data in messages:
                    await js.publish(subject, data)
            else:
                for subject, data in messages:
                    await nc.publish(subject, data)
                await nc.flush(timeout=30)
        finally:
            await nc.close()

    asyncio.run(run())
