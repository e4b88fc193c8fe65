"""The json codec's fused quote path (``decode_quotes``) against the generic one.

``decode_quotes(payloads, check)`` must give exactly what ``decode`` followed
by ``QuoteCheck.check`` gives: the same records in the same order, the same
bad frames and the same refused quotes with the same reasons, for any
frames, good or bad.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gauss.core import TopicRecord
from gauss.quotes import QuoteCheck
from gauss.registry import create

NOW_MS = int(time.time() * 1000)
FUTURE_MS = NOW_MS + 86_400_000  # a day ahead: refused by the default clock check either way

QUOTE = {"symbol": "EURUSD", "bid": 1.085, "ask": 1.0852, "bid_size": 1e6, "ask_size": 5e5, "ts_ms": NOW_MS - 1000}


def dumps(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def generic(codec: Any, payloads: list[bytes], check: QuoteCheck) -> tuple[list[TopicRecord], list[Any], list[Any]]:
    records, bad = codec.decode(payloads)
    good, refused = check.check(records) if records else ([], [])
    return good, bad, refused


def assert_same(fast: tuple[list[Any], list[Any], list[Any]], slow: tuple[list[Any], list[Any], list[Any]]) -> None:
    assert fast == slow
    for a, b in zip(fast[0], slow[0], strict=True):  # equal values of the same types (1 == 1.0 is not enough)
        assert [type(v) for v in a.data.values()] == [type(v) for v in b.data.values()]
        assert type(a.ts_ms) is type(b.ts_ms) is int


missing = object()

symbols = st.one_of(st.sampled_from(["EURUSD", "BTC/USD", "", "é"]), st.text(max_size=4), st.integers(), st.none(), st.just(missing))
prices = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(10**25), max_value=10**25),
    st.sampled_from([0, 0.0, -1.5, 1.0850, True, False, None, "1.2", [], {}]),
    st.just(missing),
)
timestamps = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from([0, 0.0, 1.0, 1.5, NOW_MS, float(NOW_MS), FUTURE_MS, 2**63, 2**64 - 1, True, "1", None]),
    st.just(missing),
)
extras = st.dictionaries(
    st.sampled_from(["venue", "x", "bid_", "tsms", "bid_sizes", "ts_ms ", "symbol2", "as", "b"]),
    st.integers() | st.text(max_size=3),
    max_size=2,
)


good_values = {
    "symbol": st.sampled_from(["EURUSD", "BTC/USD", "é"]),
    "bid": st.floats(min_value=1e-9, max_value=1e9) | st.integers(min_value=1, max_value=10**6),
    "ask": st.floats(min_value=1e-9, max_value=1e9) | st.integers(min_value=1, max_value=10**6),
    "bid_size": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-5, 5) | st.just(missing),
    "ask_size": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-5, 5) | st.just(missing),
    "ts_ms": st.integers(min_value=1, max_value=NOW_MS)
    | st.integers(min_value=-(2**63), max_value=-1)
    | st.integers(min_value=FUTURE_MS, max_value=FUTURE_MS + 10**13),  # refused unless the clock check is lifted
}
any_values = {
    "symbol": symbols,
    "bid": prices,
    "ask": prices,
    "bid_size": prices,
    "ask_size": prices,
    "ts_ms": timestamps,
}


@st.composite
def quote_payloads(draw: st.DrawFn) -> bytes:
    """A good quote with up to two fields drawn from anything (good, bad or missing)."""
    wild = draw(st.sets(st.sampled_from(list(good_values)), max_size=2))
    fields = {name: draw(any_values[name] if name in wild else good_values[name]) for name in good_values}
    data = {k: v for k, v in fields.items() if v is not missing}
    data.update(draw(extras))
    order = draw(st.permutations(list(data)))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (",", " :")]))  # compact is what feeds send
    return json.dumps({k: data[k] for k in order}, ensure_ascii=False, separators=separators).encode()


raw_frames = st.one_of(
    st.sampled_from(
        [
            b"",
            b"{",
            b"[]",
            b"null",
            b'"EURUSD"',
            b"\xff\xfe",
            b'{"symbol":"EURUSD","bid":1e400,"ask":1.1,"ts_ms":1732406400123}',
            b'{"symbol":"EURUSD","bid":1.1,"ask":1.2,"ts_ms":1732406400123,"bid":-1}',
            b'{"symbol":"EURUSD","bid":-1,"ask":1.2,"ts_ms":1732406400123,"bid":1.1}',
            b'{"symbol":"EURUSD","bid":1.1,"ask":1.2,"ts_ms":1732406400123} ',
            b'{"symbol":"EURUSD","bid":NaN,"ask":1.2,"ts_ms":1732406400123}',
        ]
    ),
    st.binary(max_size=30),
)
frames = st.lists(st.one_of(quote_payloads(), st.just(dumps(QUOTE)), raw_frames), max_size=20)


@pytest.mark.parametrize(
    "check",
    [QuoteCheck(), QuoteCheck(None), QuoteCheck(60_000, check_prices=False), QuoteCheck(None, check_prices=False)],
    ids=["default", "no-clock", "no-prices", "none"],
)
@settings(max_examples=150, deadline=None)
@given(payloads=frames)
def test_fused_path_equals_decode_then_check(check: QuoteCheck, payloads: list[bytes]) -> None:
    codec = create("codec", "json")
    assert_same(codec.decode_quotes(payloads, check), generic(codec, payloads, check))


def test_fused_path_keeps_order_across_fallbacks() -> None:
    codec = create("codec", "json")
    payloads = [
        dumps({**QUOTE, "ts_ms": QUOTE["ts_ms"] + i, **({"ts_ms": float(QUOTE["ts_ms"] + i)} if i % 3 == 0 else {})})
        for i in range(9)
    ]
    payloads.insert(4, b"not json")
    payloads.insert(6, dumps({**QUOTE, "bid": -1.0}))
    records, bad, refused = codec.decode_quotes(payloads, QuoteCheck())
    assert [r.ts_ms for r in records] == [QUOTE["ts_ms"] + i for i in range(9)]
    assert [r.raw for r in bad] == [b"not json"]
    assert len(refused) == 1 and "finite positive" in refused[0].reason


def test_fused_path_keeps_six_fields_and_defaults_sizes() -> None:
    codec = create("codec", "json")
    payload = dumps({"venue": "X", "ts_ms": QUOTE["ts_ms"], "ask": 2, "bid": 1, "symbol": "EURUSD"})
    records, bad, refused = codec.decode_quotes([payload], QuoteCheck())
    assert bad == [] and refused == []
    assert records == [
        TopicRecord(
            QUOTE["ts_ms"],
            "EURUSD",
            {"symbol": "EURUSD", "bid": 1.0, "ask": 2.0, "bid_size": 0.0, "ask_size": 0.0, "ts_ms": QUOTE["ts_ms"]},
        )
    ]
    assert list(records[0].data) == ["symbol", "bid", "ask", "bid_size", "ask_size", "ts_ms"]


def test_fused_path_honours_custom_key_and_ts_fields() -> None:
    codec = create("codec", {"type": "json", "key_field": "sym", "ts_field": "t"})
    payload = dumps({"sym": "EURUSD", "bid": 1.1, "ask": 1.2, "t": QUOTE["ts_ms"]})
    check = QuoteCheck()
    assert_same(codec.decode_quotes([payload], check), generic(codec, [payload], check))


def test_invalid_utf8_in_an_unknown_field_is_a_bad_frame_on_both_paths() -> None:
    codec = create("codec", "json")
    payloads = [
        dumps(QUOTE)[:-1] + b',"venue":"\xff"}',  # the typed decoder skips "venue" unread
        dumps(QUOTE)[:-1] + b',"\xc3":1}',
        dumps({**QUOTE, "symbol": "é"}),  # non-ASCII and valid: still accepted
    ]
    check = QuoteCheck()
    fused = codec.decode_quotes(payloads, check)
    assert_same(fused, generic(codec, payloads, check))
    assert [r.key for r in fused[0]] == ["é"] and len(fused[1]) == 2 and fused[2] == []
