"""gauss.records: the Candle record matches what the OHLC kernel in use returns, field by field."""

from __future__ import annotations

from gauss.core import OhlcAggregator
from gauss.records import Candle


def test_candle_fields_name_the_kernels_tuple_in_order() -> None:
    aggregator = OhlcAggregator([60_000, 1_000], 2)
    raw, late = aggregator.update(["EURUSD", "EURUSD"], [120_500, 120_900], [1.0, 1.5], [1.5, 2.0])
    assert late == []
    candles = sorted(map(Candle._make, raw), key=lambda c: c.timeframe_ms)
    assert candles == [
        Candle(key="EURUSD", timeframe_ms=1_000, start_ms=120_000, open=1.25, high=1.75, low=1.25, close=1.75, ticks=2, is_open=True),
        Candle(key="EURUSD", timeframe_ms=60_000, start_ms=120_000, open=1.25, high=1.75, low=1.25, close=1.75, ticks=2, is_open=True),
    ]
    # The next second opens a new 1 s bucket.
    raw, _ = aggregator.update(["EURUSD"], [121_000], [1.0], [1.0])
    by_tf = {c.timeframe_ms: c for c in map(Candle._make, raw)}
    assert by_tf[1_000].start_ms == 121_000 and by_tf[1_000].is_open and by_tf[1_000].ticks == 1
