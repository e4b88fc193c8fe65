"""Through the Hub: quotes.raw (memory) -> ohlc -> ohlc.<tf> topics stored by the file storage."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from support import wait_until

from gauss.core import TopicRecord
from gauss.hub import Hub
from gauss.records import TopicQuery

T0 = (int(time.time() * 1000) // 60_000) * 60_000 - 120_000


def quote(symbol: str, ts: int, bid: float) -> TopicRecord:
    data = {"symbol": symbol, "bid": bid, "ask": bid + 0.5, "bid_size": 1.0, "ask_size": 1.0, "ts_ms": ts}
    return TopicRecord(ts, symbol, data)


def config() -> dict[str, Any]:
    return {
        "hub": {"status_interval": 0},
        "api": {"port": 0},
        "topics": [
            {"name": "quotes.raw", "format": "quote", "storage": {"type": "memory", "capacity": 1000}},
            {"name": "ohlc.*", "format": "candle", "storage": {"type": "file", "dir": "data/ohlc/{suffix}", "flush_interval": 0.05}, "create": ["ohlc.1s", "ohlc.1m"]},
            {"name": "late", "format": "any"},
        ],
        "processors": [
            {"type": "ohlc", "topic": "quotes.raw", "timeframes": ["1s", "1m"], "open_interval_ms": 20, "late_topic": "late"},
        ],
    }


def closes(hub: Hub, topic: str) -> list[tuple[str, int, float, int]]:
    records = hub.topic(topic).query(TopicQuery(limit=1000)).records
    return [(r.key, r.ts_ms, r.data["close"], r.data["ticks"]) for r in records]


def test_candles_are_stored_per_timeframe_and_survive_a_restart(tmp_path: Path) -> None:
    hub = Hub.from_config(config(), base_dir=tmp_path)
    hub.start()
    try:
        hub.publish("quotes.raw", [quote("EURUSD", T0 + i * 100, 1.0 + i) for i in range(25)])
        hub.publish("quotes.raw", [quote("BTC/USD", T0 + 5, 100.0)])
        want_1s = [("EURUSD", T0 + s * 1000, 1.25 + min(s * 10 + 9, 24), min(10, 25 - s * 10)) for s in range(3)]
        wait_until(lambda: [c for c in closes(hub, "ohlc.1s") if c[0] == "EURUSD"] == want_1s)
        wait_until(lambda: sorted(closes(hub, "ohlc.1m")) == [("BTC/USD", T0, 100.25, 1), ("EURUSD", T0, 25.25, 25)])
        # Too late for the held 1s buckets, still within the two held 1m buckets.
        hub.publish("quotes.raw", [quote("EURUSD", T0 - 60_000, 1.0)])
        wait_until(lambda: hub.topic("late").count() == 1)
        (late,) = hub.topic("late").query(TopicQuery()).records
        assert (late.data["timeframe"], late.data["reason"], late.data["quote"]["ts_ms"]) == ("1s", "late", T0 - 60_000)
        epoch, last_seq = hub.topic("ohlc.1s").epoch, hub.topic("ohlc.1s").last_seq
    finally:
        hub.stop()
    assert (tmp_path / "data/ohlc/1s/EURUSD.jsonl").exists()
    assert (tmp_path / "data/ohlc/1m/BTC%2FUSD.jsonl").exists()
    again = Hub.from_config(config(), base_dir=tmp_path)
    again.start()
    try:
        topic = again.topic("ohlc.1s")
        assert (topic.epoch, topic.last_seq) == (epoch, last_seq)
        assert [c for c in closes(again, "ohlc.1s") if c[0] == "EURUSD"] == want_1s
    finally:
        again.stop()


def test_records_the_processor_skips_are_counted_in_metrics(tmp_path: Path) -> None:
    table = config()
    table["topics"][0] = {"name": "quotes.raw", "format": "any"}  # a Python publisher, not a source: no door
    hub = Hub.from_config(table, base_dir=tmp_path)
    hub.start()
    try:
        huge = TopicRecord(T0 + 1, "EURUSD", {"symbol": "EURUSD", "bid": 10**400, "ask": 1.0})
        hub.publish("quotes.raw", [quote("EURUSD", T0, 1.0), huge, quote("EURUSD", T0 + 2, 3.0)])
        wait_until(lambda: closes(hub, "ohlc.1m") == [("EURUSD", T0, 3.25, 2)])
        assert hub.metrics.value("gauss_processor_skipped_records_total", processor="ohlc(quotes.raw)") == 1
        assert b"gauss_processor_skipped_records_total" in hub.metrics.exposition()
    finally:
        hub.stop()
