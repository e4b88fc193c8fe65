"""``gauss-serve`` as a subprocess on free ports: ingest, fan-out, candles, SIGTERM, restart."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support import free_port
from support.plugins import lines, read_lines
from support.serve import Server, expected_candles, quotes, serve_command

from gauss.hub import Hub

MINUTE = 60_000


def write_config(directory: Path, source: int, sink: int, api: int) -> Path:
    path = directory / "config.toml"
    path.write_text(
        f"""
[hub]
status_interval = 1.0

[api]
port = {api}

[[topics]]
name = "quotes.raw"
format = "quote"
storage = {{ type = "memory", capacity = 100000 }}

[[topics]]
name = "ohlc.*"
format = "candle"
storage = {{ type = "file", dir = "data/ohlc/{{suffix}}" }}
create = ["ohlc.1m", "ohlc.5m"]

[[sources]]
topic = "quotes.raw"
transport = {{ type = "tcp-server", port = {source} }}

[[processors]]
type = "ohlc"
topic = "quotes.raw"
timeframes = ["1m", "5m"]

[[sinks]]
topic = "quotes.raw"
transport = {{ type = "tcp-server", port = {sink} }}
"""
    )
    return path


def stored_candles(config: Path, topic: str) -> dict[tuple[str, int], tuple[float, float, float, float, int]]:
    hub = Hub.from_config(config)
    hub.registry.open()  # topics only: nothing listens
    try:
        result = hub.query(topic, limit=100_000)
        return {
            (r.key, r.ts_ms): (r.data["open"], r.data["high"], r.data["low"], r.data["close"], r.data["ticks"])
            for r in result.records
        }
    finally:
        hub.registry.close()


@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX system")
def test_serve_fans_out_computes_candles_and_keeps_them_across_sigterm_and_restart(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    config = write_config(tmp_path, *ports)
    now = int(time.time() * 1000)
    first_run = quotes(["EURUSD", "USDJPY", "BTC/USD"], now - now % MINUTE - 12 * MINUTE, 600, 700)
    second_run = quotes(["EURUSD", "USDJPY"], first_run[-1]["ts_ms"] + 1000, 300, 900)

    server = Server(config)
    try:
        with socket.create_connection(("127.0.0.1", ports[1]), timeout=10) as one, socket.create_connection(
            ("127.0.0.1", ports[1]), timeout=10
        ) as two:
            time.sleep(0.3)  # both sink clients subscribed
            with socket.create_connection(("127.0.0.1", ports[0]), timeout=10) as feed:
                feed.sendall(lines(first_run[:300]) + b"garbage{\n\xff\n" + lines(first_run[300:]))
                got_one, got_two = read_lines(one, len(first_run)), read_lines(two, len(first_run))
        assert got_one == got_two
        assert [json.loads(line) for line in got_one] == first_run
    finally:
        assert server.terminate() == 0, server.output()
    assert "stopped" in server.output()

    assert stored_candles(config, "ohlc.1m") == expected_candles(first_run, MINUTE)
    assert stored_candles(config, "ohlc.5m") == expected_candles(first_run, 5 * MINUTE)
    assert (tmp_path / "data" / "ohlc" / "1m" / "BTC%2FUSD.jsonl").exists()

    server = Server(config)  # restart: durable candles stay, new quotes extend them
    try:
        with socket.create_connection(("127.0.0.1", ports[0]), timeout=10) as feed:
            feed.sendall(lines(second_run))
            time.sleep(0.5)
    finally:
        assert server.terminate() == 0, server.output()
    assert stored_candles(config, "ohlc.1m") == expected_candles(first_run + second_run, MINUTE)


def test_bad_config_exits_2_naming_file_key_and_reason(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[topics]]\nname = "q"\n\n[[sources]]\ntopic = "q"\nframing = "line"\ntransport = { type = "tcp-server", port = 0 }\n')
    result = subprocess.run([*serve_command(), "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{config}: sources[0].framing.type: unknown framing 'line'" in result.stderr


@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX system")
def test_sigterm_with_an_idle_keepalive_connection_exits_0_at_once(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    server = Server(write_config(tmp_path, *ports))  # shutdown_timeout: the default 5 s
    conn = http.client.HTTPConnection("127.0.0.1", ports[2], timeout=10)
    try:
        conn.request("GET", "/api/health")  # a dashboard's browser holds such a connection
        response = conn.getresponse()
        response.read()
        assert response.status == 200 and response.getheader("Connection") is None
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = server.proc.wait(timeout=30)
        finally:
            took = time.monotonic() - started
    finally:
        conn.close()
        rc = server.terminate()  # the process is gone already: closes its log
    assert code == 0 and rc == 0, server.output()
    assert took < 2.0, f"SIGTERM to exit took {took:.2f} s with an idle keep-alive connection"
