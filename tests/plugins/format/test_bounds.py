"""SPEC 1 "What a topic can hold", at every codec's door (issue 10, item 1).

Each codec decodes quotes carrying extreme values by its fast path (json
``decode_quotes``, the csv quote layout, avro ``QuoteLayout``) and by its
general path followed by :class:`~gauss.quotes.QuoteCheck`; both must give
the same records and the same rejections, and no record that breaks a bound
may come out of either (protobuf has one path: the bounds alone). The tox
envs run this file with both kernel builds (``GAUSS_PURE=1``).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.formats import canon

from gauss.config import load_config
from gauss.core import TopicRecord
from gauss.quotes import MAX_TS_MS, TS_RANGE, QuoteCheck, RecordCheck
from gauss.records import Rejected
from gauss.registry import create
from gauss.source import Source
from gauss.topics import TopicRegistry

NOW_MS = int(time.time() * 1000)
GOOD = {"symbol": "EURUSD", "bid": 1.085, "ask": 1.0852, "bid_size": 1e6, "ask_size": 5e5, "ts_ms": NOW_MS - 1000}

POISON_TS = [-1e300, -9223372036854775809, -(2**63), -1, 2**63, 2**64 - 1, MAX_TS_MS + 1, 1e300, float(MAX_TS_MS + 1)]
POISON_PRICES = {
    "nan bid": {"bid": math.nan},
    "inf ask": {"ask": math.inf},
    "-inf bid": {"bid": -math.inf},
    "mid overflows": {"bid": 1e308, "ask": 1e308},
    "negative mid overflows": {"bid": -1e308, "ask": -1e308},
    "nan size": {"bid_size": math.nan},
    "inf size": {"ask_size": math.inf},
    "bid past a double": {"bid": 10**400},
}
POISON_KEYS = ["x" * 65, "é" * 33, "€" * 22, "𝄞" * 17]
"""65, 66, 66 and 68 UTF-8 bytes; the default ``max_key_bytes`` is 64."""
GOOD_KEYS = ["x" * 64, "é" * 32, "€" * 21, "𝄞" * 16, "¥", "EURUSD"]
"""64, 64, 63, 64, 2 and 6 UTF-8 bytes."""


# --- payloads of any value, per codec ------------------------------------------


def _json_number(value: Any) -> str:
    if type(value) is float:
        if math.isnan(value):
            return "NaN"  # not JSON: a bad frame
        if math.isinf(value):
            return "1e999" if value > 0 else "-1e999"  # JSON, but past a double
        return repr(value)
    return json.dumps(value)


def json_payload(quote: dict[str, Any]) -> bytes:
    return (
        "{"
        + ",".join(f"{json.dumps(k)}:{_json_number(v) if k != 'symbol' else json.dumps(v)}" for k, v in quote.items())
        + "}"
    ).encode("utf-8", "surrogatepass")


def csv_payload(quote: dict[str, Any]) -> bytes:
    fields = [quote["symbol"], *(repr(quote[k]) if type(quote[k]) is float else str(quote[k]) for k in list(quote)[1:])]
    return ",".join(fields).encode("utf-8", "surrogatepass")


def binary_payload(codec: Any, quote: dict[str, Any]) -> bytes | None:
    """The avro or protobuf payload of ``quote``, or None where the wire format cannot carry a value."""
    if type(quote["ts_ms"]) is not int or not -(2**63) <= quote["ts_ms"] < 2**63:
        return None
    if any(type(quote[k]) is not float for k in ("bid", "ask", "bid_size", "ask_size")):
        return None
    out = codec.serialize([quote])
    return out[0] if out else None


def generic(
    codec: Any, payloads: list[bytes], check: QuoteCheck
) -> tuple[list[TopicRecord], list[Rejected], list[Rejected]]:
    records, bad = codec.decode(payloads)
    good, refused = check.check(records) if records else ([], [])
    return good, bad, refused


def fused(
    codec: Any, payloads: list[bytes], check: QuoteCheck
) -> tuple[list[TopicRecord], list[Rejected], list[Rejected]]:
    decode_quotes = getattr(codec, "decode_quotes", None)
    if decode_quotes is not None:
        return decode_quotes(payloads, check)  # type: ignore[no-any-return]
    return generic(codec, payloads, check)


def assert_within_bounds(records: list[TopicRecord], check: QuoteCheck) -> None:
    """Every record is one a topic can hold (SPEC 1)."""
    for record in records:
        data = record.data
        assert type(record.ts_ms) is int and record.ts_ms in TS_RANGE and record.ts_ms == data["ts_ms"]
        assert isinstance(record.key, str) and 0 < len(record.key.encode("utf-8")) <= check.max_key_bytes
        assert all(type(data[k]) is float and math.isfinite(data[k]) for k in ("bid", "ask", "bid_size", "ask_size"))
        assert math.isfinite((data["bid"] + data["ask"]) / 2)
        if check.check_prices:
            assert data["bid"] > 0 and data["ask"] > 0


CHECKS = {
    "default": QuoteCheck(),
    "lifted": QuoteCheck(None, check_prices=False),
    "short keys": QuoteCheck(max_key_bytes=8),
}


def codec_pairs() -> dict[str, tuple[Any, Any]]:
    """``(fast, general)`` per codec: the same codec with and without its fast path."""
    json_codec = create("codec", "json")
    pairs = {"json": (json_codec, json_codec)}
    for name in ("csv", "avro"):
        fast, general = create("codec", name), create("codec", name)
        general.quote_layout = False
        pairs[name] = (fast, general)
    return pairs


def payload_for(name: str, codec: Any, quote: dict[str, Any]) -> bytes | None:
    if name == "json":
        return json_payload(quote)
    if name == "csv":
        return csv_payload(quote)
    return binary_payload(codec, quote)


def run_both(name: str, pair: tuple[Any, Any], payloads: list[bytes], check: QuoteCheck) -> tuple[Any, Any]:
    fast, general = pair
    if name == "json":
        return fused(fast, payloads, check), generic(general, payloads, check)
    return generic(fast, payloads, check), generic(general, payloads, check)


# --- the poison of issue 10, one by one ------------------------------------------


def poison_quotes() -> list[tuple[str, dict[str, Any]]]:
    cases = [(f"ts_ms {ts!r}", {**GOOD, "ts_ms": ts}) for ts in POISON_TS]
    cases += [(what, {**GOOD, **change}) for what, change in POISON_PRICES.items()]
    cases += [(f"{len(key.encode())}-byte key", {**GOOD, "symbol": key}) for key in POISON_KEYS]
    return cases


@pytest.mark.parametrize("name", ["json", "csv", "avro", "protobuf"])
@pytest.mark.parametrize(("what", "quote"), poison_quotes(), ids=[what for what, _ in poison_quotes()])
def test_every_poison_is_refused_by_both_paths_of_every_codec(name: str, what: str, quote: dict[str, Any]) -> None:
    pair = codec_pairs()[name] if name != "protobuf" else (create("codec", "protobuf"),) * 2
    payload = payload_for(name, pair[0], quote)
    if payload is None:
        pytest.skip(f"{name} cannot carry {what}")
    good_payload = payload_for(name, pair[0], GOOD)
    assert good_payload is not None
    for check in (QuoteCheck(), QuoteCheck(None, check_prices=False)):
        fast, general = run_both(name, pair, [good_payload, payload, good_payload], check)
        assert canon(fast) == canon(general)
        records, bad, refused = fast
        assert [r.data for r in records] == [GOOD, GOOD], what
        assert len(bad) + len(refused) == 1, what


@pytest.mark.parametrize("name", ["json", "csv", "avro", "protobuf"])
def test_keys_up_to_max_key_bytes_pass_and_longer_ones_do_not(name: str) -> None:
    codec = codec_pairs()[name][0] if name != "protobuf" else create("codec", "protobuf")
    payloads = [payload_for(name, codec, {**GOOD, "symbol": key}) for key in GOOD_KEYS + POISON_KEYS]
    records, bad, refused = fused(codec, [p for p in payloads if p is not None], QuoteCheck())
    assert [r.key for r in records] == GOOD_KEYS
    assert bad == [] and len(refused) == len(POISON_KEYS)
    assert all("more than max_key_bytes = 64" in r.reason for r in refused)
    records, _, refused = fused(codec, [p for p in payloads if p is not None], QuoteCheck(max_key_bytes=6))
    assert [r.key for r in records] == ["¥", "EURUSD"] and len(refused) == len(GOOD_KEYS) - 2 + len(POISON_KEYS)


def test_reasons_name_the_bound() -> None:
    codec = create("codec", "json")
    cases = {
        '{"symbol":"A","bid":1e308,"ask":1e308,"ts_ms":5}': "mid (bid + ask) / 2",
        '{"symbol":"A","bid":1.0,"ask":2.0,"ts_ms":-5}': "outside 1 ..= 253402300799999",
        '{"symbol":"A","bid":1.0,"ask":2.0,"ts_ms":253402300800000}': "outside 1 ..= 253402300799999",
        '{"symbol":"A","bid":1.0,"ask":2.0,"bid_size":1e308,"ask_size":-1e999,"ts_ms":5}': "Number out of range",
    }
    for payload, reason in cases.items():
        records, bad, refused = codec.decode_quotes([payload.encode()], QuoteCheck(None, check_prices=False))
        assert records == []
        assert reason in (bad + refused)[0].reason, payload


# --- any mix of extreme and ordinary values --------------------------------------

keys = st.one_of(st.sampled_from(GOOD_KEYS + POISON_KEYS + ["", "a,b", 'q"', "\ud800"]), st.text(max_size=70))
prices = st.one_of(
    st.sampled_from(
        [math.nan, math.inf, -math.inf, 1e308, -1e308, 1.7976931348623157e308, 5e-324, 0.0, -0.0, -1.5, 1.085]
    ),
    st.floats(),
    st.floats(min_value=1e-6, max_value=1e6),
    st.integers(min_value=-(10**30), max_value=10**30),
)
timestamps = st.one_of(
    st.sampled_from(POISON_TS + [0, 1, MAX_TS_MS, NOW_MS, NOW_MS + 3_600_000, float(NOW_MS)]),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.integers(min_value=1, max_value=MAX_TS_MS),
)


@st.composite
def quotes(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "symbol": draw(keys),
        "bid": draw(prices),
        "ask": draw(prices),
        "bid_size": draw(prices),
        "ask_size": draw(prices),
        "ts_ms": draw(timestamps),
    }


@pytest.mark.parametrize("check_name", list(CHECKS))
@pytest.mark.parametrize("name", ["json", "csv", "avro"])
@settings(max_examples=50, deadline=None)
@given(batch=st.lists(quotes(), max_size=6))
def test_fast_and_general_paths_agree_on_extremes(name: str, check_name: str, batch: list[dict[str, Any]]) -> None:
    check = CHECKS[check_name]
    pair = codec_pairs()[name]
    payloads = [p for p in (payload_for(name, pair[0], q) for q in batch) if p is not None]
    fast, general = run_both(name, pair, payloads, check)
    assert canon(fast) == canon(general)
    records, bad, refused = fast
    assert len(records) + len(bad) + len(refused) == len(payloads)
    assert_within_bounds(records, check)


@settings(max_examples=50, deadline=None)
@given(batch=st.lists(quotes(), max_size=6))
def test_protobuf_holds_the_bounds(batch: list[dict[str, Any]]) -> None:
    codec = create("codec", "protobuf")
    check = QuoteCheck(None, check_prices=False)
    payloads = [p for p in (binary_payload(codec, q) for q in batch) if p is not None]
    records, bad, refused = generic(codec, payloads, check)
    assert len(records) + len(bad) + len(refused) == len(payloads)
    assert_within_bounds(records, check)


# --- records that are not quotes ----------------------------------------------------


def test_any_record_has_its_ts_bounded_by_every_codec() -> None:
    rows = {
        "json": [
            b'{"symbol":"A","ts_ms":-1e300}',
            b'{"symbol":"A","ts_ms":-9223372036854775809}',
            b'{"symbol":"A","ts_ms":253402300800000}',
        ],
        "csv": [b"A,1.5,1.5,1.0,1.0,253402300800000", b"A,1.5,1.5,1.0,1.0,-1", b"A,1.5,1.5,1.0,1.0,-1e+300"],
    }
    for name, payloads in rows.items():
        records, rejected = create("codec", name).decode(
            [*payloads, csv_payload(GOOD) if name == "csv" else json_payload(GOOD)]
        )
        assert [r.ts_ms for r in records] == [GOOD["ts_ms"]], name
        assert len(rejected) == len(payloads) and all("outside 1 ..=" in r.reason for r in rejected), name
    avro = create("codec", "avro")
    (too_late,) = avro.serialize([{**GOOD, "ts_ms": 2**63 - 1}])
    records, rejected = avro.decode([too_late])
    assert records == [] and "outside 1 ..=" in rejected[0].reason


def test_record_check_refuses_non_finite_numbers_and_long_keys_anywhere() -> None:
    codec = create("codec", {"type": "csv", "columns": ["symbol", "x", "ts_ms"]})
    records, rejected = codec.decode([b"A,nan,5", b"A,-inf,5", b"A,1.5,5", ("k" * 65 + ",1,5").encode()])
    assert rejected == [] and len(records) == 4  # the codec takes them; the door does not
    good, bad = RecordCheck().check(records)
    assert [r.data for r in good] == [{"symbol": "A", "x": 1.5, "ts_ms": 5}]
    assert [b.reason.split(":")[1].strip() for b in bad][:2] == [
        "data.x is nan; numbers must be finite",
        "data.x is -inf; numbers must be finite",
    ]
    assert "more than max_key_bytes = 64" in bad[2].reason
    nested = TopicRecord(5, "A", {"levels": [{"px": 1.0}, {"px": math.inf}]})
    assert (
        RecordCheck().check([nested])[1][0].reason
        == "rejected record: data.levels[1].px is inf; numbers must be finite"
    )
    assert RecordCheck(max_key_bytes=200).check(records[3:])[0] == records[3:]


# --- the door itself: a source applies its own max_key_bytes, to quotes and to any record ---


def test_a_source_holds_every_record_to_its_own_bounds() -> None:
    transport = {"type": "tcp-server", "port": 0}
    config = load_config(
        {
            "topics": [{"name": "q", "format": "quote"}, {"name": "any"}, {"name": "dead"}],
            "sources": [
                {"topic": "q", "transport": transport, "max_key_bytes": 8, "max_future_ms": False, "check_prices": False},
                {"topic": "any", "transport": transport, "dead_letter": "dead"},
            ],
        }
    )
    registry = TopicRegistry(config.topics)
    registry.open()
    quotes_in, any_in = Source(config.sources[0], registry), Source(config.sources[1], registry)
    quotes_in.ingest([json_payload({**GOOD, "symbol": "EURUSD"}), json_payload({**GOOD, "symbol": "EURUSD.SPOT"})])
    assert (quotes_in.records, quotes_in.rejected_quotes, quotes_in.bad_frames) == (1, 1, 0)
    any_in.ingest(
        [
            b'{"symbol":"A","ts_ms":5,"levels":[1.5,2.5]}',
            b'{"symbol":"' + b"k" * 65 + b'","ts_ms":5}',
            b'{"symbol":"A","ts_ms":-1e300}',
            b'{"symbol":"A","ts_ms":5,"x":1e999}',
        ]
    )
    assert (any_in.records, any_in.rejected_quotes, any_in.bad_frames) == (1, 1, 2)
    letters = [r.data["reason"] for r in registry.get("dead").query(limit=10).records]  # dead-lettered, with the reason
    assert len(letters) == 3 and any("more than max_key_bytes = 64" in reason for reason in letters)
    assert any("outside 1 ..= 253402300799999" in reason for reason in letters)
    registry.close()


def _floats_in(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in _floats_in(v)]
    if isinstance(value, (list, tuple)):
        return [f for v in value for f in _floats_in(v)]
    return []


payload_values = st.recursive(
    st.one_of(st.floats(), st.integers(), st.text(max_size=3), st.none(), st.booleans()),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(data=payload_values)
def test_check_finite_refuses_exactly_the_values_holding_a_non_finite_float(data: Any) -> None:
    bad = [f for f in _floats_in(data) if not math.isfinite(f)]
    record = TopicRecord(5, "A", {"v": data})
    good, refused = RecordCheck().check([record])
    assert (good, len(refused)) == (([], 1) if bad else ([record], 0))
    if bad:
        assert "numbers must be finite" in refused[0].reason
