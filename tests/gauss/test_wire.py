"""``gauss.wire.WireFormat``: the one place that builds a wire format and holds the SPEC section 2 rule."""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

import pytest

from gauss.cli import quotes_gen
from gauss.config import load_config
from gauss.core import QuoteBatch, TopicRecord
from gauss.errors import ConfigError, InflateBudgetExceeded
from gauss.protocols import FramedQuoteEncoder
from gauss.quotes import QuoteCheck, RecordCheck
from gauss.registry import create
from gauss.subscription import PublishedBatch
from gauss.wire import WireFormat, check_combination

NOW = int(time.time() * 1000)

# (codec, middleware, the key the rule names)
FORBIDDEN = [
    ("protobuf", [], "codec"),
    ("avro", [], "codec"),
    ("json", ["gzip"], "middleware"),
    ("csv", ["snappy"], "middleware"),
]


def rule_reason(codec: str, middleware: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        check_combination(
            create("framing", "lines"), create("codec", codec), [create("middleware", m) for m in middleware]
        )
    return info.value.reason


def config_error(section: str, codec: str, middleware: list[str]) -> ConfigError:
    table = {
        "topic": "q",
        "transport": {"type": "tcp-server", "port": 0},
        "framing": "lines",
        "codec": codec,
        "middleware": middleware,
    }
    with pytest.raises(ConfigError) as info:
        load_config({"topics": [{"name": "q"}], section: [table]})
    return info.value


@pytest.mark.parametrize(("codec", "middleware", "key"), FORBIDDEN)
def test_the_same_spec_2_error_from_a_source_a_sink_and_the_generator(
    codec: str, middleware: list[str], key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = rule_reason(codec, middleware)
    assert "SPEC section 2" in reason
    source = config_error("sources", codec, middleware)
    sink = config_error("sinks", codec, middleware)
    assert (source.key, source.reason) == (f"sources[0].{key}", reason)
    assert (sink.key, sink.reason) == (f"sinks[0].{key}", reason)
    argv = ["auto", "--count", "1", "--framing", "lines", "--codec", codec, *(["--compress", m] for m in middleware)]
    with pytest.raises(SystemExit) as info:
        quotes_gen.main([a for part in argv for a in ([part] if isinstance(part, str) else part)])
    assert info.value.code == 2
    flag = "--codec" if key == "codec" else "--compress"
    assert capsys.readouterr().err == f"gauss-quotes-gen: {flag}: {reason}\n"


@pytest.mark.parametrize(
    ("framing", "codec", "middleware"),
    [
        ("lines", "json", []),
        ("lines", "csv", []),
        ("length-prefixed", "protobuf", ["gzip"]),
        ("length-prefixed", "avro", ["lz4", "snappy"]),
    ],
)
def test_encode_then_decode_gives_the_records_back(framing: str, codec: str, middleware: list[str]) -> None:
    wire = WireFormat.build(framing, codec, middleware)
    quotes = [
        {"symbol": s, "bid": 1.5 + i, "ask": 1.75 + i, "bid_size": 1.0, "ask_size": 2.0, "ts_ms": NOW + i}
        for i, s in enumerate(["EURUSD", "GBPUSD", "USDJPY"])
    ]
    data = wire.encode([TopicRecord(q["ts_ms"], q["symbol"], q) for q in quotes])
    decoder = wire.decoder()
    frames = [*decoder.feed(data[:7]), *decoder.feed(data[7:])]
    records, bad, refused = wire.decode(frames, QuoteCheck(), max_frame_bytes=1 << 20, budget=1 << 20)
    assert (bad, refused) == ([], [])
    assert [(r.key, r.ts_ms, r.data) for r in records] == [(q["symbol"], q["ts_ms"], q) for q in quotes]


def test_nothing_to_send_is_no_bytes() -> None:
    assert WireFormat.build().encode([]) == b""


@pytest.mark.parametrize("codec", ["json", "csv"])
def test_quote_path_and_generic_path_give_the_same_outcome(codec: str) -> None:
    """json has the fused quote path, csv decodes then checks: the same frames give the same split either way."""
    wire = WireFormat.build("lines", codec)
    good = TopicRecord(
        NOW, "EURUSD", {"symbol": "EURUSD", "bid": 1.1, "ask": 1.2, "bid_size": 1.0, "ask_size": 1.0, "ts_ms": NOW}
    )
    negative = TopicRecord(
        NOW, "EURUSD", {"symbol": "EURUSD", "bid": -1.3, "ask": 1.2, "bid_size": 1.0, "ask_size": 1.0, "ts_ms": NOW}
    )
    frames = wire.decoder().feed(wire.encode([good, negative]) + b"not a quote\n")
    records, bad, refused = wire.decode(frames, QuoteCheck(), max_frame_bytes=1 << 20, budget=1 << 20)
    assert [r.data["bid"] for r in records] == [1.1]
    assert len(bad) == 1 and bad[0].raw == b"not a quote"
    assert len(refused) == 1 and b"-1.3" in refused[0].raw
    # Without a quote check (an "any" topic) the negative price is a record like another.
    records, bad, refused = wire.decode(frames, RecordCheck(), max_frame_bytes=1 << 20, budget=1 << 20)
    assert (len(records), len(bad), refused) == (2, 1, [])


def test_the_middleware_chain_shares_one_inflate_budget() -> None:
    wire = WireFormat.build("length-prefixed", "json", ["gzip"])
    payload = json.dumps({"symbol": "EURUSD", "pad": "x" * 5000, "ts_ms": NOW}).encode()
    frames = [gzip.compress(payload)] * 4
    records, bad, _ = wire.decode(frames, RecordCheck(), max_frame_bytes=1 << 20, budget=len(payload) * 4)
    assert (len(records), bad) == (4, [])
    with pytest.raises(InflateBudgetExceeded):
        wire.decode(frames, RecordCheck(), max_frame_bytes=1 << 20, budget=len(payload) * 3)


def test_chain_reads_inbound_and_outbound() -> None:
    wire = WireFormat.build({"type": "length-prefixed"}, "protobuf", ["gzip"])
    assert wire.chain() == "length-prefixed -> gzip -> protobuf"
    assert wire.chain(outbound=True) == "protobuf -> gzip -> length-prefixed"


def test_plugin_errors_name_their_key() -> None:
    with pytest.raises(ConfigError, match=r"^middleware\[1\]\.type: unknown middleware 'zstd'"):
        WireFormat.build("length-prefixed", "json", ["gzip", "zstd"])
    with pytest.raises(ConfigError, match=r"^codec\.type: unknown codec 'yaml'"):
        WireFormat.build("lines", "yaml")


def test_middleware_must_be_a_list() -> None:
    for section in ("sources", "sinks"):
        table: dict[str, Any] = {"topic": "q", "transport": {"type": "tcp-server", "port": 0}, "middleware": "gzip"}
        with pytest.raises(ConfigError, match=rf"{section}\[0\]\.middleware: Expected array, got str"):
            load_config({"topics": [{"name": "q"}], section: [table]})


def test_sinks_of_one_wire_format_share_each_batch_encoding() -> None:
    batch = PublishedBatch("t", [TopicRecord(1, "EURUSD", {"symbol": "EURUSD", "bid": 1.0}, 1)])
    one, two, other = WireFormat.build("lines", "json"), WireFormat.build("lines", "json"), WireFormat.build("lines", "csv")
    calls: list[WireFormat] = []

    def encoder(wire: WireFormat) -> Any:
        return lambda records: calls.append(wire) or wire.encode(records)

    first = batch.encoded(one.key, encoder(one))
    assert batch.encoded(two.key, encoder(two)) is first  # equal tables: encoded once, the same bytes
    assert batch.encoded(other.key, encoder(other)) != first
    assert calls == [one, other]
    assert WireFormat(one.framing, one.codec).key is not one.key  # built by hand: its own


@pytest.mark.parametrize(
    ("framing", "codec"),
    [("lines", "json"), ("lines", "csv"), ("length-prefixed", "json"), ("length-prefixed", "csv"),
     ("length-prefixed", "protobuf"), ("length-prefixed", "avro")],
)  # fmt: skip
def test_quotes_as_columns_are_framed_by_the_codec_to_the_same_bytes(framing: str, codec: str) -> None:
    wire = WireFormat.build(framing, codec)
    assert isinstance(wire.codec, FramedQuoteEncoder)
    symbols = ["EURUSD", "GBPUSD", "a,b", "É"]
    batch = QuoteBatch.from_records(
        [TopicRecord(NOW + i, s, {"symbol": s, "bid": 1.1 + i, "ask": 1.2 + i, "bid_size": 1e6, "ask_size": 0.5, "ts_ms": NOW + i})
         for i, s in enumerate(symbols)]
    )  # fmt: skip
    assert wire.encode(batch) == wire.framing.encode(wire.codec.encode(batch))
    assert wire.codec.encode_quotes_framed(batch, framing) == wire.encode(batch), "the fused path wrote it"
    records, bad, refused = wire.decode(
        list(wire.decoder().feed(wire.encode(batch))), QuoteCheck(), max_frame_bytes=1 << 20, budget=1 << 20
    )
    assert (bad, refused) == ([], []) and [r.key for r in records] == symbols


def test_a_quote_that_no_line_can_hold_takes_the_general_path_and_is_skipped_there() -> None:
    wire = WireFormat.build("lines", "csv")
    records = [
        TopicRecord(NOW, symbol, {"symbol": symbol, "bid": 1.0, "ask": 1.1, "bid_size": 1.0, "ask_size": 1.0, "ts_ms": NOW})
        for symbol in ("A", "new\nline", "B")
    ]
    batch = QuoteBatch.from_records(records)
    assert wire.codec.encode_quotes_framed(batch, "lines") is None
    assert wire.encode(batch) == b"A,1.0,1.1,1.0,1.0,%d\nB,1.0,1.1,1.0,1.0,%d\n" % (NOW, NOW)
    assert wire.framing.skipped == 1  # type: ignore[attr-defined]
