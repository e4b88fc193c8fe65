"""The ``avro`` codec: schemaless datums of schemas/quote.avsc, bad payloads, options."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest
from gauss_plugins.format.avro import AvroCodec, AvroConfig

from gauss.core import TopicRecord
from gauss.errors import ConfigError
from gauss.protocols import Codec, FormatSerializer
from gauss.registry import create
from gauss.resources import resource_path

QUOTE = {"symbol": "EURUSD", "bid": 1.085, "ask": 1.0852, "bid_size": 1e6, "ask_size": 5e5, "ts_ms": 1732406400123}


@pytest.fixture
def codec() -> Codec:
    return create("codec", "avro")


def test_avro_codec_satisfies_both_protocols(codec: Codec) -> None:
    assert isinstance(codec, Codec) and isinstance(codec, FormatSerializer)
    assert not codec.text


def test_payload_is_a_schemaless_datum_of_the_shipped_schema(codec: Codec) -> None:
    (payload,) = codec.encode([TopicRecord(1, "EURUSD", {**QUOTE, "venue": "X"})])
    schema = fastavro.parse_schema(json.loads(resource_path("schemas/quote.avsc").read_text()))
    assert fastavro.schemaless_reader(io.BytesIO(payload), schema, None) == QUOTE
    records, rejected = codec.decode([payload])
    assert rejected == [] and records == [TopicRecord(QUOTE["ts_ms"], "EURUSD", QUOTE)]


@pytest.mark.parametrize("cut", [1, 10, 30])
def test_truncated_datum_is_rejected(codec: Codec, cut: int) -> None:
    (good,) = codec.encode([TopicRecord(1, "EURUSD", QUOTE)])
    records, rejected = codec.decode([good[:cut], good])
    assert len(records) == 1
    assert rejected[0].raw == good[:cut] and "bad Avro datum" in rejected[0].reason


def test_trailing_bytes_are_rejected(codec: Codec) -> None:
    (good,) = codec.encode([TopicRecord(1, "EURUSD", QUOTE)])
    records, rejected = codec.decode([good + b"\x00"])
    assert records == [] and "after the datum" in rejected[0].reason


def test_bad_utf8_symbol_is_rejected(codec: Codec) -> None:
    (good,) = codec.encode([TopicRecord(1, "EURUSD", QUOTE)])
    bad = good[:1] + b"\xff" + good[2:]
    records, rejected = codec.decode([bad])
    assert records == [] and len(rejected) == 1


def test_record_missing_a_schema_field_is_skipped(codec: Codec) -> None:
    payloads = codec.encode([TopicRecord(1, "A", {"symbol": "A", "ts_ms": 1}), TopicRecord(1, "A", QUOTE)])
    assert len(payloads) == 1


def test_configurable_schema_path(tmp_path: Path) -> None:
    schema = {
        "type": "record",
        "name": "Trade",
        "fields": [{"name": "pair", "type": "string"}, {"name": "time", "type": "long"}, {"name": "px", "type": "double"}],
    }
    path = tmp_path / "trade.avsc"
    path.write_text(json.dumps(schema))
    codec = create("codec", {"type": "avro", "schema": str(path), "key_field": "pair", "ts_field": "time"})
    data = {"pair": "BTC/USD", "time": 17, "px": 1.5}
    (record,), _ = codec.decode(codec.encode([TopicRecord(17, "BTC/USD", data)]))
    assert record == TopicRecord(17, "BTC/USD", data)


@pytest.mark.parametrize(
    ("schema_text", "table_extra", "key"),
    [
        (None, {"schema": "/nonexistent.avsc"}, "schema"),
        ("{not json", {}, "schema"),
        ('{"type": "record", "name": "Q", "fields": [{"name": "a", "type": "nope"}]}', {}, "schema"),
        ('{"type": "record", "name": "Q", "fields": [{"name": "symbol", "type": "string"}]}', {}, "ts_field"),
        (None, {"schema": ""}, "schema"),
        (None, {"schema": 5}, "schema"),
        (None, {"key_field": ""}, "key_field"),
        (None, {"shema": "q.avsc"}, "shema"),
    ],
)
def test_bad_schema_is_a_config_error(tmp_path: Path, schema_text: str | None, table_extra: dict, key: str) -> None:
    table: dict = {"type": "avro"}
    if schema_text is not None:
        path = tmp_path / "s.avsc"
        path.write_text(schema_text)
        table["schema"] = str(path)
    table.update(table_extra)
    with pytest.raises(ConfigError) as info:
        create("codec", table)
    assert info.value.key == key


def test_relative_schema_resolves_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "q.avsc").write_text(resource_path("schemas/quote.avsc").read_text())
    assert create("codec", {"type": "avro", "schema": "q.avsc"}, base_dir=tmp_path).quote_layout
    with pytest.raises(ConfigError) as info:
        create("codec", {"type": "avro", "schema": "missing.avsc"}, base_dir=tmp_path)
    assert info.value.key == "schema" and str(tmp_path / "missing.avsc") in info.value.reason


def test_from_config_maps_the_fields() -> None:
    codec = AvroCodec.from_config(AvroConfig(key_field="symbol", ts_field="ts_ms"))
    assert codec.quote_layout and (codec.key_field, codec.ts_field) == ("symbol", "ts_ms")
