"""Sources and stream sinks of an in-process hub, over real sockets on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Iterator

import pytest
from engine_plugins import connect, lines, quote, read_lines, wait_until

from gauss.hub import Hub

NOW = int(time.time() * 1000)


def config(**source_options: Any) -> dict[str, Any]:
    return {
        "hub": {"status_interval": 0},
        "topics": [
            {"name": "quotes.raw", "format": "quote"},
            {"name": "bad.quotes", "format": "any"},
            {"name": "ohlc.*", "format": "candle"},
        ],
        "sources": [{"topic": "quotes.raw", "transport": {"type": "tcp-server", "port": 0}, **source_options}],
        "sinks": [{"topic": "quotes.raw", "transport": {"type": "tcp-server", "port": 0}, "queue_size": 200}],
    }


@pytest.fixture
def make_hub() -> Iterator[Any]:
    hubs: list[Hub] = []

    def make(cfg: dict[str, Any]) -> Hub:
        hub = Hub.from_config(cfg)
        hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.stop()


def test_quotes_in_come_out_on_two_sink_clients_identically_and_in_order(make_hub: Any) -> None:
    hub = make_hub(config())
    one, two = connect(hub.sinks[0].address), connect(hub.sinks[0].address)
    wait_until(lambda: hub.sinks[0].clients == 2)
    sent = [quote("EURUSD", 1.08 + i * 1e-5, 1.0802 + i * 1e-5, NOW + i) for i in range(40)]
    with connect(hub.sources[0].address) as feed:
        feed.sendall(lines(sent))
        got_one, got_two = read_lines(one, 40), read_lines(two, 40)
    assert got_one == got_two
    assert [json.loads(line) for line in got_one] == sent
    one.close()
    two.close()


def test_garbage_between_good_lines_loses_no_good_line(make_hub: Any) -> None:
    hub = make_hub(config(dead_letter="bad.quotes"))
    good = [quote("GBPUSD", 1.25, 1.2502, NOW + i) for i in range(10)]
    garbage = [b"{not json", b"\xff\xfe", b'{"symbol": "X"}', b"[1,2]", json.dumps(quote("X", -1.0, 1.0, NOW)).encode()]
    stream = b""
    for i, q in enumerate(good):
        stream += json.dumps(q).encode() + b"\n"
        if i < len(garbage):
            stream += garbage[i] + b"\n"
    with connect(hub.sources[0].address) as feed:
        feed.sendall(stream)
        wait_until(lambda: hub.topic("quotes.raw").last_seq == 10, what="10 good quotes")
        source = hub.sources[0]
        assert source.bad_frames == 4 and source.rejected_quotes == 1
        stored = hub.query("quotes.raw", limit=100).records
        assert [r.data for r in stored] == good
        letters = hub.query("bad.quotes", limit=100).records
        assert len(letters) == 5
        assert base64.b64decode(letters[0].data["raw"]) == b"{not json"
        assert "bad JSON" in letters[0].data["reason"]
        assert any("rejected quote" in r.data["reason"] for r in letters)
        assert hub.metrics.value("gauss_source_decode_errors_total", source="quotes.raw", reason="bad_frame") == 4
        # The connection is still open: one more good quote arrives.
        feed.sendall(lines([quote("GBPUSD", 1.26, 1.2602, NOW + 100)]))
        wait_until(lambda: hub.topic("quotes.raw").last_seq == 11)


def test_oversize_frame_closes_only_its_connection(make_hub: Any) -> None:
    hub = make_hub(config(max_frame_bytes=200))
    good, bad = connect(hub.sources[0].address), connect(hub.sources[0].address)
    bad.sendall(b"x" * 1000)
    bad.settimeout(10)
    assert bad.recv(10) == b""  # the server closed it
    good.sendall(lines([quote("EURUSD", 1.1, 1.2, NOW)]))
    wait_until(lambda: hub.topic("quotes.raw").last_seq == 1)
    assert hub.sources[0].oversize == 1
    good.close()
    bad.close()


def test_stalled_sink_client_does_not_stop_the_others_or_ingest(make_hub: Any) -> None:
    cfg = config()
    cfg["sinks"][0]["transport"]["send_buffer"] = 16384  # so the stalled client's backlog reaches its queue soon
    hub = make_hub(cfg)
    stalled = connect(hub.sinks[0].address)  # never reads
    reader = connect(hub.sinks[0].address)
    wait_until(lambda: hub.sinks[0].clients == 2)
    padding = "x" * 5000  # big payloads fill the stalled client's socket buffers quickly
    total, step = 3000, 100
    received: list[bytes] = []
    with connect(hub.sources[0].address) as feed:
        # In lock step with the reader, so only the stalled client can fall behind.
        for start in range(0, total, step):
            feed.sendall(lines([quote("EURUSD", 1.1, 1.2, NOW + i, note=padding) for i in range(start, start + step)]))
            received.extend(read_lines(reader, step, timeout=30))
    assert [json.loads(line)["ts_ms"] for line in received] == [NOW + i for i in range(total)]
    assert hub.topic("quotes.raw").last_seq == total
    wait_until(lambda: hub.metrics.value("gauss_subscriber_dropped_records_total", topic="quotes.raw", kind="sink") > 0)
    stalled.close()
    reader.close()


def test_stop_publishes_what_the_source_queued(make_hub: Any) -> None:
    hub = make_hub(config())
    with connect(hub.sources[0].address) as feed:
        feed.sendall(lines([quote("EURUSD", 1.1, 1.2, NOW + i) for i in range(500)]))
        wait_until(lambda: hub.sources[0].records == 500)
    hub.stop()
    assert hub.topic("quotes.raw").last_seq == 500
