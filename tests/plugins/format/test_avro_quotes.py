"""The avro codec's quote-layout fast path against fastavro itself.

For the shipped quote schema the codec encodes and decodes without fastavro
(``QuoteLayout``); it must give byte-identical payloads, the same datums and
the same rejections with the same reasons as fastavro's per-datum path, for
any data and any bytes.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.formats import canon

from gauss.core import TopicRecord
from gauss.registry import create

QUOTE = {"symbol": "EURUSD", "bid": 1.085, "ask": 1.0852, "bid_size": 1e6, "ask_size": 5e5, "ts_ms": 1732406400123}
FIELDS = ("symbol", "bid", "ask", "bid_size", "ask_size", "ts_ms")


def codecs(table: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """``(fast, reference)``: the same codec with and without the quote-layout path."""
    fast = create("codec", {"type": "avro", **(table or {})})
    reference = create("codec", {"type": "avro", **(table or {})})
    reference.quote_layout = False
    return fast, reference


def reasons(rejected: list[Any]) -> list[tuple[bytes, str]]:
    """``(raw, reason)`` pairs without object addresses (fastavro's messages name its stream)."""
    return [(r.raw, re.sub(r" at 0x[0-9a-f]+", "", r.reason)) for r in rejected]


missing = object()

symbols = st.one_of(
    st.sampled_from(["EURUSD", "BTC/USD", "", "é", "\ud800", "x" * 64, "€" * 40]),
    st.text(max_size=100),
    st.binary(max_size=4),
    st.integers(),
    st.none(),
    st.just(missing),
)
doubles = st.one_of(
    st.floats(),
    st.sampled_from([0.0, -0.0, math.nan, -math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([True, None, "1.5", b"1"]),
    st.just(missing),
)
longs = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 1.0, True, None, "1"]),
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


good_quotes = st.fixed_dictionaries(
    {
        "symbol": st.text(max_size=80),
        "bid": st.floats(),
        "ask": st.floats(),
        "bid_size": st.floats(),
        "ask_size": st.floats(),
        "ts_ms": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    }
)


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """Good datums, damaged datums, over-long varints and random bytes."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=80))
    _, reference = codecs()
    (good,) = reference.serialize([draw(good_quotes)])
    if kind == 1:
        return good
    if kind == 2:
        return good[: draw(st.integers(0, len(good)))]
    if kind == 3:
        return good + draw(st.binary(min_size=1, max_size=4))
    if kind == 4:
        at = draw(st.integers(0, len(good) - 1))
        return good[:at] + bytes([draw(st.integers(0, 255))]) + good[at + 1 :]
    # a non-minimal or over-long varint in place of the length or the timestamp
    pad = bytes([0x80 | draw(st.integers(0, 127))]) * draw(st.integers(1, 10))
    if draw(st.booleans()):
        return pad + good
    return good[:-1] + pad + good[-1:]


@settings(max_examples=150, deadline=None)
@given(st.lists(datas(), max_size=8))
def test_encode_is_fastavros_bytes_and_skips_the_same_data(batch: list[Any]) -> None:
    fast, reference = codecs()
    assert fast.serialize(batch) == reference.serialize(batch)
    assert fast._encode_failures.count == reference._encode_failures.count


@settings(max_examples=150, deadline=None)
@given(st.lists(payloads(), max_size=8))
def test_decode_accepts_and_refuses_what_fastavro_does(batch: list[bytes]) -> None:
    fast, reference = codecs()
    fast_records, fast_rejected = fast.decode(batch)
    ref_records, ref_rejected = reference.decode(batch)
    assert canon(fast_records) == canon(ref_records)
    assert reasons(fast_rejected) == reasons(ref_rejected)
    for payload in batch:
        try:
            expected: Any = canon(reference.deserialize(payload))
        except ValueError as exc:
            expected = re.sub(r" at 0x[0-9a-f]+", "", str(exc))
        try:
            got: Any = canon(fast.deserialize(payload))
        except ValueError as exc:
            got = re.sub(r" at 0x[0-9a-f]+", "", str(exc))
        assert got == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(good_quotes, max_size=8))
def test_round_trip_keeps_every_bit(batch: list[dict[str, Any]]) -> None:
    fast, _ = codecs()
    payloads = fast.serialize(batch)
    assert len(payloads) == len(batch)
    assert canon([fast.deserialize(p) for p in payloads]) == canon([{k: q[k] for k in FIELDS} for q in batch])


def test_plain_quotes_do_not_call_fastavro(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, reference = codecs()
    expected = reference.encode([TopicRecord(1, "EURUSD", QUOTE)])

    def refuse(*args: Any) -> Any:
        raise AssertionError("fastavro was called")

    monkeypatch.setattr(fastavro, "schemaless_writer", refuse)
    monkeypatch.setattr(fastavro, "schemaless_reader", refuse)
    assert fast.encode([TopicRecord(1, "EURUSD", QUOTE)]) == expected
    assert fast.decode(expected) == ([TopicRecord(QUOTE["ts_ms"], "EURUSD", QUOTE)], [])


def test_other_key_fields_keep_the_layout_and_make_record_rules() -> None:
    fast, reference = codecs({"key_field": "symbol", "ts_field": "ts_ms"})
    empty = reference.serialize([{**QUOTE, "symbol": ""}, {**QUOTE, "ts_ms": 0}])
    assert fast.decode(empty) == reference.decode(empty)
    assert len(fast.decode(empty)[1]) == 2


@pytest.mark.parametrize(
    "fields",
    [
        [
            ("symbol", "string"),
            ("ask", "double"),
            ("bid", "double"),
            ("bid_size", "double"),
            ("ask_size", "double"),
            ("ts_ms", "long"),
        ],
        [
            ("symbol", "string"),
            ("bid", "double"),
            ("ask", "double"),
            ("bid_size", "double"),
            ("ask_size", "float"),
            ("ts_ms", "long"),
        ],
        [
            ("symbol", "string"),
            ("bid", "double"),
            ("ask", "double"),
            ("bid_size", "double"),
            ("ask_size", "double"),
            ("ts_ms", "int"),
        ],
        [
            ("symbol", "string"),
            ("bid", "double"),
            ("ask", "double"),
            ("bid_size", "double"),
            ("ask_size", "double"),
            ("ts_ms", {"type": "long", "logicalType": "timestamp-millis"}),
        ],
    ],
)
def test_any_other_layout_stays_with_fastavro(tmp_path: Path, fields: list[tuple[str, Any]]) -> None:
    path = tmp_path / "q.avsc"
    path.write_text(json.dumps({"type": "record", "name": "Q", "fields": [{"name": n, "type": t} for n, t in fields]}))
    codec = create("codec", {"type": "avro", "schema": str(path)})
    assert codec.quote_layout is False


def test_shipped_schema_and_a_renamed_copy_take_the_fast_path(tmp_path: Path) -> None:
    fast, _ = codecs()
    assert fast.quote_layout is True
    path = tmp_path / "q.avsc"
    path.write_text(
        json.dumps(
            {
                "type": "record",
                "name": "Tick",
                "fields": [
                    {"name": n, "type": t}
                    for n, t in (
                        ("symbol", "string"),
                        ("bid", "double"),
                        ("ask", "double"),
                        ("bid_size", "double"),
                        ("ask_size", "double"),
                        ("ts_ms", "long"),
                    )
                ],
            }
        )
    )
    assert create("codec", {"type": "avro", "schema": str(path)}).quote_layout is True
