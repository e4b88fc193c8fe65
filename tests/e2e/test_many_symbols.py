"""100,000 distinct symbols into a running server: per-key state is bounded and the loop never stalls (issue 11).

The OHLC processor and the file storage of its candles hold at most
``max_keys`` symbols; the rest are evicted (their candles stay on disk).
While the symbols arrive, a client polls ``/api/health`` and measures each
answer: the loop must keep answering, and the server's RSS must stop growing
once ``max_keys`` symbols are held.

Long (about a minute): runs where ``GAUSS_LONG_CHECKS=1`` (one tox env).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from support import free_port
from support.http import metric_value
from support.serve import Server

pytestmark = pytest.mark.skipif(
    os.environ.get("GAUSS_LONG_CHECKS") != "1", reason="long check: set GAUSS_LONG_CHECKS=1 (tox env cython does)"
)

SYMBOLS = 100_000
MAX_KEYS = 2_000
CHUNK = 5_000


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def candles_stored(session: requests.Session, base: str) -> float:
    exposition = session.get(f"{base}/metrics", timeout=10).text
    return metric_value(exposition, 'gauss_topic_records_stored_total{topic="ohlc.1m"}')


def candle_files(directory: Path) -> int:
    return sum(1 for _ in (directory / "data/ohlc/1m").glob("*.jsonl"))


def write_config(directory: Path, source: int, api: int) -> Path:
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
storage = {{ type = "memory", capacity = 10000 }}  # the ring holds at most this many symbols too

[[topics]]
name = "ohlc.*"
format = "candle"
storage = {{ type = "file", dir = "data/ohlc/{{suffix}}", max_keys = {MAX_KEYS} }}
create = ["ohlc.1m"]

[[sources]]
topic = "quotes.raw"
transport = {{ type = "tcp-server", port = {source} }}

[[processors]]
type = "ohlc"
topic = "quotes.raw"
timeframes = ["1m"]
max_keys = {MAX_KEYS}
"""
    )
    return path


def test_a_hundred_thousand_symbols_keep_memory_bounded_and_health_answering(tmp_path: Path) -> None:
    source, api = free_port(), free_port()
    server = Server(write_config(tmp_path, source, api))
    base = f"http://127.0.0.1:{api}"
    latencies: list[float] = []
    stop = threading.Event()

    def poll_health() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                started = time.perf_counter()
                assert session.get(f"{base}/api/health", timeout=10).json() == {"status": "ok"}
                latencies.append(time.perf_counter() - started)
                time.sleep(0.02)

    try:
        poller = threading.Thread(target=poll_health, daemon=True)
        poller.start()
        now = int(time.time() * 1000) - 150_000  # the last symbol still dated in the past
        rss: dict[int, float] = {}
        with socket.create_connection(("127.0.0.1", source)) as feeder, requests.Session() as metrics:
            for first in range(0, SYMBOLS, CHUNK):
                lines = [
                    json.dumps({"symbol": f"S{n:06d}", "bid": 1.0, "ask": 1.0002, "bid_size": 1.0, "ask_size": 1.0, "ts_ms": now + n})
                    for n in range(first, first + CHUNK)
                ]
                feeder.sendall(("\n".join(lines) + "\n").encode())
                sent = first + CHUNK
                # Each chunk's candles stored before the next is sent: the queues hold one chunk at most, on a
                # fast machine or a loaded one, so memory measures per-symbol state and not a backlog.
                deadline = time.monotonic() + 60
                while (stored := candles_stored(metrics, base)) < sent:
                    assert time.monotonic() < deadline, f"{stored:.0f} of {sent} symbols' candles stored"
                    time.sleep(0.05)
                if sent in (SYMBOLS // 2, SYMBOLS):
                    rss[sent] = rss_mib(server.proc.pid)
        stop.set()
        poller.join(timeout=15)
        keys = requests.get(f"{base}/api/topics/ohlc.1m/keys", timeout=30).json()
        on_disk = candle_files(tmp_path)
        candle = requests.get(f"{base}/api/topics/ohlc.1m", params={"key": "S000007"}, timeout=10).json()["records"]
    finally:
        stop.set()
        assert server.terminate() == 0, server.output()[-3000:]
    assert len(latencies) > 50, "health was hardly polled: the test measured nothing"
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    print(f"health latency over {len(latencies)} polls: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms; RSS MiB by symbols: {rss}")  # fmt: skip
    # NOTE: the loop's own stalls are well under 100 ms (file storage work is sliced at ~20 ms); these bounds
    # add room for a 2-core CI machine that also runs the client, the feeder and the scheduler's whims.
    assert p99 < 0.25, f"/api/health p99 {p99 * 1000:.0f} ms: the loop stalls"
    assert latencies[-1] < 1.0, f"/api/health took {latencies[-1] * 1000:.0f} ms once"
    # The second 50,000 symbols find memory at its plateau: with max_keys held, it hardly grows.
    assert rss[SYMBOLS] - rss[SYMBOLS // 2] < 64, f"RSS grows with the number of symbols: {rss}"
    assert on_disk == SYMBOLS, "every symbol's candles stay stored, evicted or not"
    assert len(keys) <= SYMBOLS
    assert [c["data"]["ticks"] for c in candle] == [1], "an evicted symbol's candle is still served from disk"
