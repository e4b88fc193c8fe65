"""The ``csv`` codec: columns, quoting, number parsing and bad rows."""

from __future__ import annotations

import pytest
from gauss_plugins.format.csv import CsvCodec, CsvConfig

from gauss.core import TopicRecord
from gauss.errors import ConfigError, DecodeError
from gauss.protocols import Codec, FormatSerializer
from gauss.registry import create

QUOTE = {"symbol": "EURUSD", "bid": 1.085, "ask": 1.0852, "bid_size": 1000000.0, "ask_size": 500000.0, "ts_ms": 1732406400123}


@pytest.fixture
def codec() -> Codec:
    return create("codec", "csv")


def test_csv_codec_satisfies_both_protocols(codec: Codec) -> None:
    assert isinstance(codec, Codec) and isinstance(codec, FormatSerializer)
    assert codec.text


def test_quote_row_in_default_column_order(codec: Codec) -> None:
    assert codec.encode([TopicRecord(QUOTE["ts_ms"], "EURUSD", QUOTE)]) == [
        b"EURUSD,1.085,1.0852,1000000.0,500000.0,1732406400123"
    ]
    records, rejected = codec.decode([b"EURUSD,1.085,1.0852,1000000,500000,1732406400123.0"])
    assert rejected == []
    assert records[0].ts_ms == 1732406400123 and records[0].key == "EURUSD"
    assert records[0].data == QUOTE


def test_symbols_with_commas_and_quotes_are_quoted(codec: Codec) -> None:
    data = {**QUOTE, "symbol": 'A,"B"'}
    (payload,) = codec.encode([TopicRecord(1, "x", data)])
    assert payload.startswith(b'"A,""B""",')
    (record,), _ = codec.decode([payload])
    assert record.key == 'A,"B"'


def test_numeric_looking_symbol_stays_a_string(codec: Codec) -> None:
    (record,), _ = codec.decode([b"1234,1,2,3,4,5"])
    assert record.key == "1234" and record.data["symbol"] == "1234"
    assert record.data["bid"] == 1 and type(record.data["bid"]) is int


def test_extra_fields_are_not_written_and_missing_ones_are_empty(codec: Codec) -> None:
    (payload,) = codec.encode([TopicRecord(5, "A", {"symbol": "A", "ts_ms": 5, "venue": "X", "bid": 1.5})])
    assert payload == b"A,1.5,,,,5"
    (record,), _ = codec.decode([payload])
    assert record.data == {"symbol": "A", "bid": 1.5, "ts_ms": 5}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"EURUSD,1,2,3,4", "expected 6 columns"),
        (b"EURUSD,1,2,3,4,5,6", "expected 6 columns"),
        (b'"EURUSD,1,2,3,4,5', "bad CSV"),
        (b'"EUR"USD,1,2,3,4,5', "bad CSV"),
        (b"EUR\xffUSD,1,2,3,4,5", "bad UTF-8"),
        (b",1,2,3,4,5", "missing key field 'symbol'"),
        (b"EURUSD,1,2,3,4,", "missing timestamp field"),
        (b"EURUSD,1,2,3,4,0", "missing timestamp field"),
        (b"EURUSD,1,2,3,4,1.5", "must be an integer"),
        (b"EURUSD,1,2,3,4,soon", "must be an integer"),
    ],
)
def test_bad_row_is_rejected_with_reason(codec: Codec, payload: bytes, reason: str) -> None:
    records, rejected = codec.decode([b"A,1,2,3,4,5", payload, b"B,1,2,3,4,5"])
    assert [r.key for r in records] == ["A", "B"]
    assert len(rejected) == 1 and rejected[0].raw == payload
    assert reason in rejected[0].reason


def test_custom_columns() -> None:
    codec = create("codec", {"type": "csv", "columns": ["time", "pair", "px"], "key_field": "pair", "ts_field": "time"})
    (record,), _ = codec.decode([b"17,BTC/USD,65000.5"])
    assert record == TopicRecord(17, "BTC/USD", {"time": 17, "pair": "BTC/USD", "px": 65000.5})
    assert codec.encode([record]) == [b"17,BTC/USD,65000.5"]


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"columns": ["a", "b"]}, "key_field"),
        ({"columns": ["symbol", "b"]}, "ts_field"),
        ({"columns": ["symbol", "ts_ms", "symbol"]}, "columns"),
        ({"columns": "symbol,ts_ms"}, "columns"),
        ({"columns": ["symbol", "", "ts_ms"]}, "columns[1]"),
        ({"key_field": ""}, "key_field"),
        ({"quote": "'"}, "quote"),
    ],
)
def test_bad_options_are_config_errors(table: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        create("codec", {"type": "csv", **table})
    assert info.value.key == key


def test_config_errors_say_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match=r"^columns\[1\]: Expected str of length >= 1"):
        create("codec", {"type": "csv", "columns": ["symbol", ""]})
    with pytest.raises(ConfigError, match=r"^columns: Expected array, got str"):
        create("codec", {"type": "csv", "columns": "symbol,ts_ms"})
    with pytest.raises(ConfigError, match=r"^ts_field: 'time' is not one of the columns \(symbol, px\)"):
        CsvConfig(columns=("symbol", "px"), ts_field="time")


def test_from_config_maps_the_fields() -> None:
    codec = CsvCodec.from_config(CsvConfig(columns=("time", "pair"), key_field="pair", ts_field="time"))
    assert (codec.columns, codec.key_field, codec.ts_field) == (("time", "pair"), "pair", "time")
    assert CsvCodec.from_config(CsvConfig()).quote_layout


def test_unwritable_value_is_skipped(codec: Codec) -> None:
    payloads = codec.encode([TopicRecord(1, "A", {**QUOTE, "bid": [1]}), TopicRecord(1, "A", QUOTE)])
    assert len(payloads) == 1


def test_deserialize_raises_decode_error(codec: FormatSerializer) -> None:
    with pytest.raises(DecodeError):
        codec.deserialize(b"a,b")
