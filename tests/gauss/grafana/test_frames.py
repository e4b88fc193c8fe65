"""Arrow frames and JSON stream packets in exactly the forms Grafana's SDK reads."""

from __future__ import annotations

import json
import math

import pyarrow as pa

from gauss.grafana.frames import Field, Frame, candle_frame, quote_frame, to_arrow, to_json

ALLOWED_TYPES = (pa.string(), pa.int64(), pa.float64(), pa.timestamp("ns"))


def candle(ts_ms: int, close: float, ticks: int = 3) -> dict:
    data = {"symbol": "EURUSD", "timeframe": "1m", "ts_ms": ts_ms, "open": 1.0, "high": 2.0, "low": 0.5,
            "close": close, "ticks": ticks}
    return {"ts_ms": ts_ms, "key": "EURUSD", "seq": ts_ms // 60_000, "data": data}


def read(blob: bytes) -> pa.Table:
    return pa.ipc.open_file(pa.BufferReader(blob)).read_all()


def test_arrow_frame_is_an_ipc_file_with_grafana_metadata() -> None:
    meta = {"type": "timeseries-wide", "channel": "ds/x/candles/1m/EURUSD"}
    blob = to_arrow(candle_frame("EURUSD", [candle(60_000, 1.5), candle(120_000, 1.6)], ref_id="A", meta=meta))
    assert blob[:6] == b"ARROW1" and blob[-6:] == b"ARROW1"
    table = read(blob)
    schema_meta = table.schema.metadata
    assert schema_meta[b"name"] == b"EURUSD" and schema_meta[b"refId"] == b"A"
    assert json.loads(schema_meta[b"meta"]) == meta
    assert table.schema.names == ["time", "open", "high", "low", "close", "ticks"]
    for field in table.schema:
        assert field.type in ALLOWED_TYPES, field
        assert field.metadata[b"name"] == field.name.encode()
        assert field.metadata[b"tstype"] in (b"time", b"number")
        if field.name != "time":
            assert json.loads(field.metadata[b"labels"]) == {"symbol": "EURUSD"}
    assert table.schema.field("time").type == pa.timestamp("ns") and table.schema.field("time").type.tz is None
    assert table.column("time").cast(pa.int64()).to_pylist() == [60_000 * 10**6, 120_000 * 10**6]
    assert table.column("close").to_pylist() == [1.5, 1.6]
    assert table.column("ticks").type == pa.int64()


def test_later_candle_version_replaces_earlier_one() -> None:
    frame = candle_frame("EURUSD", [candle(60_000, 1.5, 3), candle(60_000, 1.7, 4), candle(0, 1.1)])
    table = read(to_arrow(frame))
    assert table.column("time").cast(pa.int64()).to_pylist() == [0, 60_000 * 10**6]
    assert table.column("close").to_pylist() == [1.1, 1.7]
    assert table.column("ticks").to_pylist() == [3, 4]


def test_quote_frame_has_mid_and_sizes() -> None:
    records = [{"ts_ms": 5, "key": "EURUSD", "data": {"symbol": "EURUSD", "bid": 1.0, "ask": 1.2, "bid_size": 3,
                                                     "ask_size": 4.5, "ts_ms": 5}}]
    table = read(to_arrow(quote_frame("EURUSD", records, ref_id="B")))
    assert table.schema.names == ["time", "bid", "ask", "mid", "bid_size", "ask_size"]
    assert table.to_pylist()[0] | {"time": None} == {"time": None, "bid": 1.0, "ask": 1.2, "mid": 1.1, "bid_size": 3.0,
                                                    "ask_size": 4.5}
    assert all(field.type in ALLOWED_TYPES for field in table.schema)


def test_missing_values_make_a_nullable_field() -> None:
    records = [{"ts_ms": 5, "key": "X", "data": {"bid": 1.0, "ask": 2.0}}]
    table = read(to_arrow(quote_frame("X", records)))
    assert table.schema.field("bid_size").nullable and table.column("bid_size").to_pylist() == [None]
    assert not table.schema.field("bid").nullable


def test_empty_frame_keeps_its_schema() -> None:
    table = read(to_arrow(candle_frame("EURUSD", [], ref_id="A")))
    assert table.num_rows == 0 and table.schema.names == ["time", "open", "high", "low", "close", "ticks"]


def test_json_packet_schema_first_then_data_only_with_ms_times() -> None:
    frame = candle_frame("EURUSD", [candle(60_000, 1.5)])
    first = json.loads(to_json(frame, schema=True))
    later = json.loads(to_json(frame, schema=False))
    assert set(first) == {"schema", "data"} and set(later) == {"data"}
    fields = first["schema"]["fields"]
    assert fields[0] == {"name": "time", "type": "time", "typeInfo": {"frame": "time.Time"}}
    assert fields[4]["typeInfo"] == {"frame": "float64"} and fields[4]["labels"] == {"symbol": "EURUSD"}
    assert fields[5]["typeInfo"] == {"frame": "int64"}
    assert first["data"]["values"] == [[60_000], [1.0], [2.0], [0.5], [1.5], [3]]


def test_json_packet_writes_nan_and_inf_as_null_with_entities() -> None:
    frame = Frame("x", "", [Field("time", "time", [1, 2, 3]), Field("v", "float64", [math.nan, 1.0, -math.inf])])
    packet = json.loads(to_json(frame, schema=False))  # json.loads would accept NaN; the text must not hold it
    assert b"NaN" not in to_json(frame, schema=False).replace(b'"NaN"', b"")
    assert packet["data"]["values"][1] == [None, 1.0, None]
    assert packet["data"]["entities"] == [None, {"NaN": [0], "NegInf": [2]}]
