"""The ``json`` codec: payload -> record rules of SPEC sections 1, 2 and 6."""

from __future__ import annotations

import json
import logging

import pytest
from gauss_plugins.format.json import JsonCodec, JsonConfig

from gauss.core import TopicRecord
from gauss.errors import ConfigError, DecodeError
from gauss.protocols import Codec, FormatSerializer
from gauss.quotes import MAX_TS_MS
from gauss.registry import create

QUOTE = {"symbol": "EURUSD", "bid": 1.085, "ask": 1.0852, "bid_size": 1e6, "ask_size": 5e5, "ts_ms": 1732406400123}


def dumps(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


@pytest.fixture
def codec() -> Codec:
    return create("codec", "json")


def test_json_codec_satisfies_both_protocols(codec: Codec) -> None:
    assert isinstance(codec, Codec)
    assert isinstance(codec, FormatSerializer)
    assert codec.name == "json" and codec.text


def test_quote_becomes_record_keyed_by_symbol(codec: Codec) -> None:
    records, rejected = codec.decode([dumps(QUOTE)])
    assert rejected == []
    assert records == [TopicRecord(1732406400123, "EURUSD", QUOTE)]


def test_integral_float_timestamp_is_accepted(codec: Codec) -> None:
    records, rejected = codec.decode([dumps({**QUOTE, "ts_ms": 1732406400123.0})])
    assert rejected == []
    assert records[0].ts_ms == 1732406400123
    assert type(records[0].ts_ms) is int


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"symbol": "EURUSD", "ts_ms": 1', "bad JSON"),
        (b"not json", "bad JSON"),
        (b'{"symbol": "EUR\xffUSD", "ts_ms": 1}', "bad JSON"),
        (b"[1, 2]", "must be an object"),
        (b'"EURUSD"', "must be an object"),
        (b'{"ts_ms": 1}', "missing key field 'symbol'"),
        (b'{"symbol": "", "ts_ms": 1}', "missing key field 'symbol'"),
        (b'{"symbol": 12, "ts_ms": 1}', "must be a string"),
        (b'{"symbol": "EURUSD"}', "missing timestamp field 'ts_ms'"),
        (b'{"symbol": "EURUSD", "ts_ms": 0}', "missing timestamp field 'ts_ms'"),
        (b'{"symbol": "EURUSD", "ts_ms": 1.5}', "must be an integer"),
        (b'{"symbol": "EURUSD", "ts_ms": "1"}', "must be an integer"),
        (b'{"symbol": "EURUSD", "ts_ms": true}', "must be an integer"),
        (b'{"symbol": "EURUSD", "ts_ms": 1}{', "bad JSON"),
    ],
)
def test_bad_payload_is_rejected_with_reason(codec: Codec, payload: bytes, reason: str) -> None:
    records, rejected = codec.decode([payload])
    assert records == []
    assert len(rejected) == 1
    assert rejected[0].raw == payload
    assert reason in rejected[0].reason


def test_one_bad_frame_costs_nothing_for_the_others(codec: Codec) -> None:
    good = [dumps({**QUOTE, "ts_ms": QUOTE["ts_ms"] + i}) for i in range(5)]
    # Unbalanced brackets in one bad frame, closed by another: a naive
    # batch decode of b"[" + b",".join(...) + b"]" would mis-assign these.
    bad_open = b'{"symbol": "X", "ts_ms": 5, "a": [{"b": 1}'
    bad_close = b'{"c": 1}]}'
    two_objects = b'{"symbol": "Y", "ts_ms": 6},{"symbol": "Z", "ts_ms": 7}'
    batch = [good[0], bad_open, good[1], bad_close, good[2], two_objects, good[3], good[4]]
    records, rejected = codec.decode(batch)
    assert [r.ts_ms for r in records] == [QUOTE["ts_ms"] + i for i in range(5)]
    assert [r.raw for r in rejected] == [bad_open, bad_close, two_objects]


def test_custom_key_and_ts_fields() -> None:
    codec = create("codec", {"type": "json", "key_field": "pair", "ts_field": "time"})
    records, rejected = codec.decode([b'{"pair": "BTC/USD", "time": 17, "px": 1}'])
    assert rejected == []
    assert records == [TopicRecord(17, "BTC/USD", {"pair": "BTC/USD", "time": 17, "px": 1})]


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="key_feld"):
        create("codec", {"type": "json", "key_feld": "pair"})


@pytest.mark.parametrize(
    ("table", "key", "gist"),
    [({"key_field": ""}, "key_field", "length >= 1"), ({"ts_field": 5}, "ts_field", "Expected str")],
)
def test_bad_option_value_is_refused_with_its_key(table: dict, key: str, gist: str) -> None:
    with pytest.raises(ConfigError) as info:
        create("codec", {"type": "json", **table})
    assert info.value.key == key and gist in info.value.reason


def test_from_config_maps_the_fields() -> None:
    codec = JsonCodec.from_config(JsonConfig(key_field="pair", ts_field="time"))
    assert (codec.key_field, codec.ts_field) == ("pair", "time")


def test_encode_writes_data_only_and_round_trips(codec: Codec) -> None:
    record = TopicRecord(QUOTE["ts_ms"], "EURUSD", {**QUOTE, "symbol": "ÉUR/USD ✓"}, seq=7)
    payloads = codec.encode([record])
    assert json.loads(payloads[0]) == record.data
    assert "ÉUR/USD ✓".encode() in payloads[0]
    records, _ = codec.decode(payloads)
    assert records == [TopicRecord(record.ts_ms, "ÉUR/USD ✓", record.data)]


def test_extreme_floats_round_trip_exactly(codec: Codec) -> None:
    data = {"symbol": "X", "ts_ms": MAX_TS_MS, "a": 5e-324, "b": 1.7976931348623157e308, "c": -0.0, "d": 0.1 + 0.2}
    (record,), _ = codec.decode(codec.encode([TopicRecord(MAX_TS_MS, "X", data)]))
    assert record.data == data
    assert repr(record.data["c"]) == "-0.0"


def test_unencodable_record_is_skipped_and_logged(codec: Codec, caplog: pytest.LogCaptureFixture) -> None:
    good = TopicRecord(1, "A", {"symbol": "A", "ts_ms": 1})
    bad = TopicRecord(2, "B", {"symbol": "B", "ts_ms": 2, "x": object()})
    with caplog.at_level(logging.WARNING):
        payloads = codec.encode([good, bad, good])
    assert payloads == [b'{"symbol":"A","ts_ms":1}'] * 2
    assert "cannot encode" in caplog.text


def test_deserialize_raises_decode_error(codec: FormatSerializer) -> None:
    assert codec.deserialize(b'{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    with pytest.raises(DecodeError, match="bad JSON"):
        codec.deserialize(b"{")
