"""The csv codec's quote fast path against its general path.

With the default columns the codec reads and writes plain rows without the
general machinery; it must give the same bytes, payloads (same value types)
and rejections with the same reasons, for any data and any bytes.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from support.formats import canon

from gauss.core import TopicRecord
from gauss.registry import create

FIELDS = ("symbol", "bid", "ask", "bid_size", "ask_size", "ts_ms")


def codecs() -> tuple[Any, Any]:
    """``(fast, reference)``: the same codec with and without the quote fast path."""
    fast = create("codec", "csv")
    reference = create("codec", "csv")
    reference.quote_layout = False
    return fast, reference


missing = object()
symbols = st.one_of(
    st.sampled_from(["EURUSD", "BTC/USD", "", "é", "\ud800", 'a"b', "a,b", "a\nb", " x"]),
    st.text(max_size=12),
    st.integers(),
    st.none(),
    st.just(missing),
)
doubles = st.one_of(
    st.floats(),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 5e-324, 1e16, 1e22]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([True, None, "1.5", "x", b"1"]),
    st.just(missing),
)
longs = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1.0, True, None, "1"]),
    st.just(missing),
)


@st.composite
def datas(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(st.sampled_from([None, [], "quote", 1]))
    values = [draw(symbols), draw(doubles), draw(doubles), draw(doubles), draw(doubles), draw(longs)]
    data = {name: value for name, value in zip(FIELDS, values, strict=True) if value is not missing}
    data.update(draw(st.dictionaries(st.sampled_from(["venue", "x"]), st.integers(), max_size=2)))
    return data


field_texts = st.one_of(
    st.sampled_from(
        [
            "1.5",
            "1",
            "0",
            "00",
            "-0.0",
            "1e5",
            "1.5e3",
            ".5",
            "5.",
            "nan",
            "inf",
            "1_0.5",
            " 1.5",
            "١.٥",
            "١٢",
            "+7",
            "0.0.1",
            "1.2.3",
            "x",
            "",
            '"1.5"',
            "1732406400123",
            "9" * 30,
        ]
    ),
    st.text(max_size=6),
)


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """Good rows, rows of odd fields, odd field counts, and random bytes."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=40))
    if kind == 1:
        _, reference = codecs()
        rows = reference.serialize([draw(datas())])
        return rows[0] if rows else b""
    count = 6 if kind == 2 else draw(st.integers(1, 8))
    return ",".join(draw(st.lists(field_texts, min_size=count, max_size=count))).encode("utf-8", "surrogatepass")


@settings(max_examples=150, deadline=None)
@given(st.lists(datas(), max_size=8))
def test_encode_matches_the_general_path(batch: list[Any]) -> None:
    fast, reference = codecs()
    assert fast.serialize(batch) == reference.serialize(batch)
    assert fast._encode_failures.count == reference._encode_failures.count


@settings(max_examples=150, deadline=None)
@given(st.lists(payloads(), max_size=8))
def test_decode_matches_the_general_path(batch: list[bytes]) -> None:
    fast, reference = codecs()
    fast_records, fast_rejected = fast.decode(batch)
    ref_records, ref_rejected = reference.decode(batch)
    assert canon(fast_records) == canon(ref_records)
    assert fast_rejected == ref_rejected


def test_plain_quote_takes_the_fast_path_both_ways() -> None:
    fast, _ = codecs()
    quote = {"symbol": "EURUSD", "bid": 1.085, "ask": 1.0852, "bid_size": 1e6, "ask_size": 5e5, "ts_ms": 1732406400123}
    (row,) = fast.serialize([quote])
    assert row == b"EURUSD,1.085,1.0852,1000000.0,500000.0,1732406400123"
    assert fast.quote_layout and canon(fast.decode([row])) == canon(
        ([TopicRecord(quote["ts_ms"], "EURUSD", quote)], [])
    )
    assert not create("codec", {"type": "csv", "columns": ["symbol", "bid", "ts_ms"]}).quote_layout
