"""``gauss-serve`` with a ``nats`` source whose server name does not resolve: it stops at once (a SIGTERM, a start-up failure)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support import free_port
from support.serve import Server, serve_command


def write_config(directory: Path, url: str, api: int) -> Path:
    path = directory / "config.toml"
    path.write_text(
        f"""
[api]
port = {api}

[[topics]]
name = "quotes.raw"
format = "quote"
storage = {{ type = "memory", capacity = 1000 }}

[[sources]]
topic = "quotes.raw"
transport = {{ type = "nats", url = "{url}", subject = "quotes.*", reconnect_max = 0.2 }}
"""
    )
    return path


@pytest.mark.parametrize("url", ["nats://nohost.invalid:4222", "nats://host name:4222"])
def test_sigterm_exits_0_while_the_server_name_does_not_resolve(tmp_path: Path, url: str) -> None:
    server = Server(write_config(tmp_path, url, free_port()))
    try:
        time.sleep(2.0)  # several connection attempts, each resolving the name
        assert server.proc.poll() is None, server.output()
        server.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert server.proc.wait(timeout=10) == 0, server.output()
        assert time.monotonic() - started < 5.0, server.output()
        assert "gauss.hub: stopped" in server.output()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        server.log.close()


def test_a_start_up_failure_exits_at_once_while_the_server_name_does_not_resolve(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_config(tmp_path, "nats://nohost.invalid:4222", taken.getsockname()[1])
        started = time.monotonic()
        result = subprocess.run([*serve_command(), "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr  # a port in use is named as a configuration fault
    assert "cannot listen on" in result.stderr and "Address already in use" in result.stderr
    assert time.monotonic() - started < 15.0
