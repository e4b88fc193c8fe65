"""The hub the API fuzz targets share: memory topics holding quotes and candles, records published on demand."""

from __future__ import annotations

import logging

from gauss.core import TopicRecord
from gauss.hub import Hub

__all__ = ["T0", "ErrorLog", "hub", "publish"]

T0 = 1_732_406_400_000
_HUB: Hub | None = None
_published = 0


def hub() -> Hub:
    global _HUB
    if _HUB is None:
        _HUB = Hub.from_config({
            "hub": {"status_interval": 0},
            "topics": [
                {"name": "quotes.raw", "format": "quote", "storage": {"type": "memory", "capacity": 1000}},
                {"name": "ohlc.*", "format": "candle", "storage": {"type": "memory", "capacity": 1000},
                 "create": ["ohlc.1m"]},
            ],
        })  # fmt: skip
        _HUB.start()
        publish(_HUB, 20)
    return _HUB


def publish(hub: Hub, n: int) -> None:
    global _published
    batch = []
    for _ in range(n):
        i = _published = _published + 1
        symbol = ("EURUSD", "USDJPY", "X")[i % 3]
        ts = T0 + i * 1000 - (i % 5) * 1700  # some keys' timestamps go backwards: the rings' slow path
        data = {"symbol": symbol, "bid": 1.0 + i % 7 / 100, "ask": 1.01 + i % 7 / 100, "bid_size": 1.0, "ask_size": 1.0,
                "ts_ms": ts}  # fmt: skip
        batch.append(TopicRecord(ts, symbol, data))
    hub.publish("quotes.raw", batch)
    candles = [TopicRecord(r.ts_ms - r.ts_ms % 60_000, r.key, {"open": 1.0, "ticks": 1}) for r in batch]
    hub.publish("ohlc.1m", candles)


class ErrorLog(logging.Handler):
    """Collects what is logged at ERROR or above while it is attached (a traceback is a finding)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> ErrorLog:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)
