"""Poison quotes against the real ``gauss-serve`` on the default configuration (issue 10, items 1 and 2).

A quote with ``ts_ms`` of ``-1e300`` or ``-9223372036854775809`` used to pass
the checks, make the memory ring raise, and wedge ``quotes.raw`` until a
restart (its seqs out of step with the ring), while the OHLC processor
dropped its batch and the loopbacks carried the poison on. Here every kind
of poison of SPEC 1 "What a topic can hold" goes to 9100 between good
quotes: the good ones must be stored with contiguous seqs, make candles
and flow through every loopback, and each poison must be counted.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from support import free_port
from support.serve import Server, expected_candles, quotes, serve_command

REPO = Path(__file__).resolve().parents[2]
MINUTE = 60_000

POISON = [
    b'{"symbol":"EURUSD","bid":1.1,"ask":1.2,"ts_ms":-1e300}',
    b'{"symbol":"EURUSD","bid":1.1,"ask":1.2,"ts_ms":-9223372036854775809}',
    b'{"symbol":"EURUSD","bid":1.1,"ask":1.2,"ts_ms":9223372036854775808}',
    b'{"symbol":"EURUSD","bid":1.1,"ask":1.2,"ts_ms":-5}',
    b'{"symbol":"EURUSD","bid":1.1,"ask":1.2,"ts_ms":253402300800000}',
    b'{"symbol":"EURUSD","bid":1e308,"ask":1e308,"ts_ms":%d}',
    b'{"symbol":"EURUSD","bid":1.1,"ask":1.2,"bid_size":1e999,"ts_ms":%d}',
    b'{"symbol":"EURUSD","bid":1%s,"ask":1.2,"ts_ms":%%d}' % (b"0" * 400),
    b'{"symbol":"' + b"X" * 65 + b'","bid":1.1,"ask":1.2,"ts_ms":%d}',
    b'{"symbol":"' + "\u20ac".encode() * 22 + b'","bid":1.1,"ask":1.2,"ts_ms":%d}',
]


def default_config(directory: Path) -> tuple[Path, dict[int, int]]:
    """The repository's config.toml with every port moved to a free one, its data under ``directory``."""
    ports: dict[int, int] = {}

    def replace(match: re.Match[str]) -> str:
        ports.setdefault(int(match.group(1)), free_port())
        return f"port = {ports[int(match.group(1))]}"

    text = re.sub(r"\bport = (\d+)", replace, (REPO / "config.toml").read_text())
    text = text.replace("status_interval = 10.0", "status_interval = 1.0")
    path = directory / "config.toml"
    path.write_text(text)
    return path, ports


def get(api: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{api}{path}", timeout=10) as answer:
        return json.loads(answer.read())


def metric(api: int, line_start: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{api}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def wait_for(condition: Callable[[], bool], what: str, server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{server.output()[-4000:]}")
        time.sleep(0.1)


def line(quote: dict[str, Any]) -> bytes:
    return json.dumps(quote).encode() + b"\n"


def test_poison_between_good_quotes_costs_only_itself(tmp_path: Path) -> None:
    config, ports = default_config(tmp_path)
    api = ports[9200]
    start = (int(time.time() * 1000) // MINUTE - 5) * MINUTE
    good = quotes(["EURUSD", "GBPUSD"], start, 60, 3_000)  # 3 minutes of quotes, 5 to 2 minutes ago
    ts = good[0]["ts_ms"]
    poison = [p % ts if b"%d" in p else p for p in POISON]
    server = Server(config)
    try:
        with socket.create_connection(("127.0.0.1", ports[9100]), timeout=10) as feed:
            for i, quote in enumerate(good):
                feed.sendall(line(quote))
                if i % 6 == 0:  # a poison in the same read as good quotes, one kind after another
                    feed.sendall(poison[(i // 6) % len(poison)] + b"\n")
                if i % 20 == 19:
                    time.sleep(0.2)  # and in batches of their own
            feed.sendall(b"\n".join(poison) + b"\n")
            feed.sendall(line({**good[-1], "ts_ms": good[-1]["ts_ms"] + 1}))
        sent = [*good, {**good[-1], "ts_ms": good[-1]["ts_ms"] + 1}]

        def stored(topic: str) -> list[dict[str, Any]]:
            return list(get(api, f"/api/topics/{topic}?limit=1000")["records"])

        wait_for(lambda: len(stored("quotes.raw")) == len(sent), "every good quote in quotes.raw", server)
        records = stored("quotes.raw")
        assert sorted(r["seq"] for r in records) == list(range(1, len(sent) + 1))  # contiguous: nothing wedged
        assert sorted((r["data"]["ts_ms"], r["key"]) for r in records) == sorted((q["ts_ms"], q["symbol"]) for q in sent)
        for topic in ("quotes.csv", "quotes.proto", "quotes.avro"):
            wait_for(lambda t=topic: len(stored(t)) == len(sent), f"every good quote in {topic}", server)  # type: ignore[misc]
            loop = stored(topic)
            assert sorted(r["seq"] for r in loop) == list(range(1, len(sent) + 1)), topic
            assert sorted(r["data"].items() for r in loop) == sorted(r["data"].items() for r in records), topic

        want = expected_candles(sent, MINUTE)

        def candles() -> dict[tuple[str, int], tuple[float, float, float, float, int]]:
            out = {}
            for symbol in ("EURUSD", "GBPUSD"):
                for r in get(api, f"/api/topics/ohlc.1m?key={symbol}&limit=100")["records"]:
                    d = r["data"]
                    out[(symbol, r["ts_ms"])] = (d["open"], d["high"], d["low"], d["close"], d["ticks"])
            return out

        wait_for(lambda: candles() == want, "candles of the good quotes", server)
        refused = metric(api, 'gauss_source_decode_errors_total{reason="rejected_quote",source="quotes.raw"}')
        bad = metric(api, 'gauss_source_decode_errors_total{reason="bad_frame",source="quotes.raw"}')
        assert refused + bad == len(poison) + len(range(0, len(good), 6))
        assert metric(api, "gauss_storage_write_errors_total") == 0
        assert metric(api, "gauss_processor_errors_total") == 0
    finally:
        assert server.terminate() == 0, server.output()[-4000:]


def test_an_unset_variable_in_the_config_exits_2_naming_file_key_and_variable(tmp_path: Path) -> None:
    config = tmp_path / "env.toml"
    config.write_text(
        '[[topics]]\nname = "q"\n\n[[sources]]\ntopic = "q"\n'
        'transport = { type = "tcp-server", bind = "${GAUSS_TEST_BIND:-127.0.0.1}", port = 0 }\n'
        'name = "${GAUSS_TEST_UNSET_SOURCE_NAME}"\n'
    )
    result = subprocess.run([*serve_command(), "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"{config}: sources[0].name: environment variable GAUSS_TEST_UNSET_SOURCE_NAME is not set" in result.stderr
