"""The ``protobuf`` codec: messages from a compiled descriptor set, bad payloads, options."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gauss_plugins.format.protobuf import ProtobufCodec, ProtobufConfig

from gauss.core import TopicRecord
from gauss.errors import ConfigError
from gauss.protocols import Codec, FormatSerializer
from gauss.registry import create
from gauss.resources import resource_path

QUOTE = {"symbol": "EURUSD", "bid": 1.085, "ask": 1.0852, "bid_size": 1e6, "ask_size": 5e5, "ts_ms": 1732406400123}


@pytest.fixture
def codec() -> Codec:
    return create("codec", "protobuf")


def test_protobuf_codec_satisfies_both_protocols(codec: Codec) -> None:
    assert isinstance(codec, Codec) and isinstance(codec, FormatSerializer)
    assert not codec.text


def test_wire_bytes_follow_the_field_numbers_of_spec(codec: Codec) -> None:
    (payload,) = codec.encode([TopicRecord(2, "AB", {"symbol": "AB", "ts_ms": 2})])
    assert payload == b"\x0a\x02AB\x30\x02"  # field 1 string "AB", field 6 varint 2


def test_quote_round_trips_and_extra_fields_are_dropped(codec: Codec) -> None:
    payloads = codec.encode([TopicRecord(1, "EURUSD", {**QUOTE, "venue": "X"})])
    records, rejected = codec.decode(payloads)
    assert rejected == []
    assert records == [TopicRecord(QUOTE["ts_ms"], "EURUSD", QUOTE)]


def test_integral_float_timestamp_is_written_as_int64(codec: Codec) -> None:
    (record,), _ = codec.decode(codec.encode([TopicRecord(1, "A", {**QUOTE, "ts_ms": 1732406400123.0})]))
    assert record.ts_ms == 1732406400123


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x0a\x05AB", "bad protobuf"),  # string longer than the payload
        (b"\x0a\x02\xff\xfe\x30\x02", "bad protobuf"),  # symbol not UTF-8
        (b"\x30\x02", "missing key field"),  # no symbol
        (b"\x0a\x02AB", "missing timestamp field"),  # ts_ms absent = 0
        (b"\x0a\x00\x30\x02", "missing key field"),  # empty symbol
    ],
)
def test_bad_payload_is_rejected(codec: Codec, payload: bytes, reason: str) -> None:
    good = codec.encode([TopicRecord(1, "A", QUOTE)])[0]
    records, rejected = codec.decode([good, payload, good])
    assert len(records) == 2
    assert [r.raw for r in rejected] == [payload]
    assert reason in rejected[0].reason


def test_unencodable_record_is_skipped(codec: Codec) -> None:
    payloads = codec.encode([TopicRecord(1, "A", {**QUOTE, "bid": "high"}), TopicRecord(1, "A", QUOTE)])
    assert len(payloads) == 1


def test_any_message_of_a_user_descriptor_set(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    (tmp_path / "trade.proto").write_text(
        'syntax = "proto3"; package acme;\n'
        "message Side { string name = 1; }\n"
        "message Trade { string pair = 1; int64 time = 2; double px = 3; repeated int32 flags = 4;"
        " Side side = 5; }\n"
    )
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={tmp_path}", "--include_imports",
         f"--descriptor_set_out={tmp_path / 'trade.desc'}", str(tmp_path / "trade.proto")],
        check=True,
    )
    codec = create(  # a relative path resolves against the config file's directory
        "codec",
        {"type": "protobuf", "descriptor": "trade.desc", "message": "acme.Trade", "key_field": "pair", "ts_field": "time"},
        base_dir=tmp_path,
    )
    data = {"pair": "BTC/USD", "time": 17, "px": 65000.5, "flags": [1, 2], "side": {"name": "buy"}}
    (record,), rejected = codec.decode(codec.encode([TopicRecord(17, "BTC/USD", data)]))
    assert rejected == []
    assert record == TopicRecord(17, "BTC/USD", data)


def test_shipped_descriptor_matches_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    proto = resource_path("schemas/quote.proto")
    shutil.copy(proto, tmp_path / "quote.proto")
    out = tmp_path / "quote.desc"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "--include_imports", f"--descriptor_set_out={out}",
         f"--proto_path={tmp_path}", str(tmp_path / "quote.proto")],
        check=True,
    )
    assert out.read_bytes() == resource_path("schemas/quote.desc").read_bytes(), (
        "schemas/quote.desc is stale; regenerate it (see schemas/quote.proto)"
    )


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"message": "gauss.Nope"}, "message"),
        ({"descriptor": "/nonexistent/quote.desc"}, "descriptor"),
        ({"key_field": "pair"}, "key_field"),
        ({"ts_field": "time"}, "ts_field"),
        ({"schema": "x"}, "schema"),
        ({"message": ""}, "message"),
        ({"descriptor": ""}, "descriptor"),
        ({"descriptor": 5}, "descriptor"),
    ],
)
def test_bad_options_are_config_errors(table: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        create("codec", {"type": "protobuf", **table})
    assert info.value.key == key


def test_descriptor_that_is_not_a_descriptor_set(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.desc"
    bogus.write_bytes(b"\xff\xff\xff not a descriptor")
    with pytest.raises(ConfigError, match="descriptor"):
        create("codec", {"type": "protobuf", "descriptor": str(bogus)})


def test_relative_descriptor_resolves_against_the_config_directory(tmp_path: Path) -> None:
    shutil.copy(resource_path("schemas/quote.desc"), tmp_path / "q.desc")
    assert create("codec", {"type": "protobuf", "descriptor": "q.desc"}, base_dir=tmp_path).key_field == "symbol"
    with pytest.raises(ConfigError) as info:
        create("codec", {"type": "protobuf", "descriptor": "missing.desc"}, base_dir=tmp_path)
    assert info.value.key == "descriptor" and str(tmp_path / "missing.desc") in info.value.reason


def test_from_config_maps_the_fields() -> None:
    codec = ProtobufCodec.from_config(ProtobufConfig())
    assert codec.message_class.DESCRIPTOR.full_name == "gauss.Quote"
    assert (codec.key_field, codec.ts_field) == ("symbol", "ts_ms")
