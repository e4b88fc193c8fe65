"""Query parsing, the timeframe choice under maxDataPoints, and channel paths."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gauss.grafana.queries import (
    TIMEFRAMES,
    BadQuery,
    CandleQuery,
    QuoteQuery,
    StreamPath,
    choose_timeframe,
    decode_symbol,
    encode_symbol,
    parse_query,
    parse_stream_path,
)

DAY = 86_400_000


def parse(model: dict, **kw: int) -> CandleQuery | QuoteQuery:
    args = {"from_ms": 0, "to_ms": DAY, "max_points": 1000} | kw
    return parse_query(json.dumps(model).encode(), ref_id="A", **args)


def test_requested_timeframe_kept_when_range_fits() -> None:
    assert choose_timeframe("1m", 0, 3_600_000, 1000) == ("1m", "")


def test_coarser_timeframe_when_range_needs_it_and_reason_says_why() -> None:
    timeframe, reason = choose_timeframe("1m", 0, DAY, 500)
    assert timeframe == "5m"  # 1440 one-minute candles > 500; 288 five-minute ones fit
    assert "1440" in reason and "500" in reason


def test_coarsest_timeframe_when_nothing_fits() -> None:
    assert choose_timeframe("1s", 0, 400 * DAY, 10)[0] == "1d"


def test_auto_starts_at_the_panel_interval() -> None:
    assert choose_timeframe("auto", 0, 3_600_000, 1000, interval_ms=20_000)[0] == "1m"
    assert choose_timeframe("auto", 0, 3_600_000, 1000, interval_ms=0)[0] == "5s"


@given(st.sampled_from(list(TIMEFRAMES)), st.integers(0, 1000 * DAY), st.integers(1, 5000))
def test_chosen_timeframe_fits_or_is_coarsest(requested: str, span: int, max_points: int) -> None:
    timeframe, _ = choose_timeframe(requested, 0, span, max_points)
    assert TIMEFRAMES[timeframe] >= TIMEFRAMES[requested]
    assert -(-span // TIMEFRAMES[timeframe]) <= max_points or timeframe == "1d"


def test_candle_query_reads_ohlc_topic_of_chosen_timeframe() -> None:
    query = parse({"kind": "candles", "timeframe": "1m", "symbols": "EURUSD, GBPUSD,EURUSD"}, max_points=500)
    assert isinstance(query, CandleQuery)
    assert query.topic == "ohlc.5m" and query.requested == "1m" and query.symbols == ("EURUSD", "GBPUSD")
    assert query.limit == DAY // 300_000 + 1


def test_candle_range_start_is_aligned_to_its_bucket() -> None:
    query = parse({"kind": "candles", "timeframe": "1m", "symbols": ["X"]}, from_ms=90_000, to_ms=200_000)
    assert isinstance(query, CandleQuery) and query.bucket_from_ms == 60_000


def test_quote_query_defaults_and_kind_from_query_type() -> None:
    query = parse_query(b'{"symbols": ["EURUSD"]}', ref_id="B", query_type="quotes", from_ms=0, to_ms=10, max_points=0)
    assert isinstance(query, QuoteQuery)
    assert query.topic == "quotes.raw" and query.limit == 1000


@pytest.mark.parametrize(
    ("model", "word"),
    [
        ({"kind": "bars", "symbols": "X"}, "kind"),
        ({"timeframe": "2m", "symbols": "X"}, "timeframe"),
        ({"symbols": ""}, "symbols"),
        ({"symbols": [1, 2]}, "symbols"),
        ({"kind": "quotes", "topic": "a/b", "symbols": "X"}, "topic"),
        ({"symbols": ",".join(f"S{i}" for i in range(51))}, "symbols"),
    ],
)
def test_bad_query_names_the_field(model: dict, word: str) -> None:
    with pytest.raises(BadQuery, match=word):
        parse(model)


def test_channel_paths_follow_the_documented_form() -> None:
    assert StreamPath.candles("1m", "EURUSD").channel("uid1") == "ds/uid1/candles/1m/EURUSD"
    assert StreamPath.quotes("EURUSD").channel("uid1") == "ds/uid1/quotes/EURUSD"
    assert StreamPath.quotes("BTC/USD", "quotes.csv").path == "quotes/BTC=2FUSD/quotes.csv"


@given(st.text(min_size=1, max_size=30))
def test_symbol_encoding_round_trips_and_stays_in_channel_alphabet(symbol: str) -> None:
    encoded = encode_symbol(symbol)
    assert all(ch.isascii() and (ch.isalnum() or ch in "_-.=") for ch in encoded)
    assert decode_symbol(encoded) == symbol
    for path in (StreamPath.candles("5m", symbol), StreamPath.quotes(symbol), StreamPath.quotes(symbol, "quotes.avro")):
        assert parse_stream_path(path.path) == path


@pytest.mark.parametrize("path", ["", "quotes", "candles/1m", "candles/2m/X", "quotes/X/a/b", "quotes/%41", "quotes/=4"])
def test_foreign_stream_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError):
        parse_stream_path(path)
