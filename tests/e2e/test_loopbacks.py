"""The loopbacks of the default config.toml (SPEC section 3), end to end on free ports.

Quotes sent to the 9100 source must come back with identical values in
``quotes.csv`` (CSV/lines via 9301), ``quotes.proto`` (Protobuf via 9302) and
``quotes.avro`` (Avro via 9303). The hub runs in-process on gevent; the
quotes come from the real ``gauss-quotes-gen`` command in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.socket
import pytest
from support import wait_until
from support.serve import default_config_on_free_ports

from gauss.hub import Hub

LOOPBACK_TOPICS = ("quotes.csv", "quotes.proto", "quotes.avro")


def gen_command() -> list[str]:
    script = Path(sys.executable).with_name("gauss-quotes-gen")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gauss.cli.quotes_gen"]


def run_gen(*args: str) -> None:
    """Run gauss-quotes-gen without blocking the gevent hub the server runs on."""
    proc = subprocess.Popen([*gen_command(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None:  # its few status lines fit in the pipe buffer
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            raise AssertionError("gauss-quotes-gen did not finish")
        gevent.sleep(0.05)
    _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr.decode(errors="replace")


def datas(hub: Hub, topic: str, skip_key: str | None = None) -> list[dict[str, Any]]:
    records = hub.query(topic, limit=100_000).records
    return [r.data for r in sorted(records, key=lambda r: r.seq) if r.key != skip_key]


@pytest.fixture
def hub(tmp_path: Path):
    config, ports = default_config_on_free_ports(tmp_path)
    assert {9100, 9300, 9301, 9302, 9303} <= set(ports)
    hub = Hub.from_config(config)
    hub.start()
    hub.test_ports = ports  # type: ignore[attr-defined]
    try:
        yield hub
    finally:
        hub.stop(timeout=5)


def warm_up(hub: Hub, port: int) -> None:
    """Send a quote now and then until every loopback source is connected and delivering."""
    sock = gevent.socket.create_connection(("127.0.0.1", port))
    try:
        def delivered() -> bool:
            now = int(time.time() * 1000)
            sock.sendall(b'{"symbol":"WARMUP","bid":1.0,"ask":1.1,"bid_size":1,"ask_size":1,"ts_ms":%d}\n' % now)
            gevent.sleep(0.1)
            return all(hub.query(t, key="WARMUP", limit=1).records for t in LOOPBACK_TOPICS)

        wait_until(delivered, what="the loopback sources to connect")
    finally:
        sock.close()


def test_quotes_into_9100_come_back_identical_through_csv_protobuf_and_avro(hub: Hub, tmp_path: Path) -> None:
    source_port = hub.test_ports[9100]  # type: ignore[attr-defined]
    warm_up(hub, source_port)
    quotes_file = tmp_path / "quotes.jsonl"
    symbols = 'EURUSD,USDJPY,B\u00dcND,O"DD;ONE,' + "X" * 64  # CSV quoting, non-ASCII, as long as a key may be (SPEC 1: 64 bytes)
    run_gen("generate", "--count", "5000", "--seed", "11", "--symbols", symbols, "--out", str(quotes_file))
    run_gen("file", str(quotes_file), "--speed", "max", "--target", f"127.0.0.1:{source_port}")

    wait_until(lambda: len(datas(hub, "quotes.raw", "WARMUP")) == 5000, what="quotes.raw to hold every quote")
    raw = datas(hub, "quotes.raw", "WARMUP")
    assert {q["symbol"] for q in raw} == set(symbols.split(","))
    for topic in LOOPBACK_TOPICS:
        wait_until(lambda t=topic: len(datas(hub, t, "WARMUP")) >= 5000, what=f"{topic} to hold every quote")
        assert datas(hub, topic, "WARMUP") == raw, topic


def test_generator_file_at_max_speed_delivers_every_quote_of_the_file(hub: Hub, tmp_path: Path) -> None:
    source_port = hub.test_ports[9100]  # type: ignore[attr-defined]
    quotes_file = tmp_path / "quotes.jsonl"
    run_gen("generate", "--count", "20000", "--seed", "5", "--out", str(quotes_file))
    run_gen("file", str(quotes_file), "--speed", "max", "--target", f"127.0.0.1:{source_port}")
    expected = [json.loads(line) for line in quotes_file.read_text().splitlines()]
    wait_until(lambda: len(datas(hub, "quotes.raw")) >= len(expected), what="quotes.raw to hold every quote")
    assert datas(hub, "quotes.raw") == expected


@pytest.mark.parametrize(
    ("codec", "framing", "middleware", "key"),
    [
        ("protobuf", "lines", [], "codec"),
        ("avro", "lines", [], "codec"),
        ("json", "lines", ["gzip"], "middleware"),
        ("csv", "lines", ["snappy"], "middleware"),
    ],
)
def test_lines_with_binary_codec_or_compression_exits_2(
    tmp_path: Path, codec: str, framing: str, middleware: list[str], key: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[[topics]]\nname = "q"\n\n[[sources]]\ntopic = "q"\n'
        f'transport = {{ type = "tcp-server", port = 0 }}\nframing = "{framing}"\ncodec = "{codec}"\n'
        f"middleware = {middleware!r}\n".replace("'", '"')
    )
    script = Path(sys.executable).with_name("gauss-serve")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gauss.cli.serve"]
    result = subprocess.run([*command, "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"sources[0].{key}" in result.stderr
