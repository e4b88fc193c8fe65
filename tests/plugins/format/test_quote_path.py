"""Every quote codec has the same fused quote path, and it answers exactly as decode + check does.

``decode_quotes(payloads, check)`` (:class:`gauss.protocols.QuoteCodec`) of
json, csv, protobuf and avro must give what ``decode`` followed by
``QuoteCheck.check`` gives: the same records in the same order with values
of the same types, the same bad frames, the same refused quotes with the same
reasons, for what the codec itself wrote, torn or damaged payloads and noise.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gauss.core import TopicRecord
from gauss.protocols import QuoteCodec
from gauss.quotes import QuoteCheck
from gauss.registry import create

CODECS = ["json", "csv", "protobuf", "avro"]
NOW_MS = int(time.time() * 1000)

CHECKS = [QuoteCheck(), QuoteCheck(None), QuoteCheck(60_000, check_prices=False)]


def generic(codec: Any, payloads: list[bytes], check: QuoteCheck) -> tuple[list[TopicRecord], list[Any], list[Any]]:
    records, bad = codec.decode(payloads)
    good, refused = check.check(records) if records else ([], [])
    return good, bad, refused


prices = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.5, 1.085, 1e308, 5e-324]),
)
timestamps = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, NOW_MS, NOW_MS + 86_400_000, 253_402_300_799_999, 253_402_300_800_000]),
)
quotes = st.fixed_dictionaries(
    {
        "symbol": st.one_of(st.sampled_from(["EURUSD", "BTC/USD", "", "é", "a,b", 'q"t']), st.text(max_size=6)),
        "bid": prices,
        "ask": prices,
        "bid_size": prices,
        "ask_size": prices,
        "ts_ms": timestamps,
    }
)


def without_addresses(result: tuple[list[Any], list[Any], list[Any]]) -> tuple[list[Any], list[Any], list[Any]]:
    """fastavro names the stream object it read in its messages (``<_io.BytesIO object at 0x...>``)."""
    records, bad, refused = result
    return records, [(r.raw, re.sub(r" at 0x[0-9a-f]+", "", r.reason)) for r in bad], refused


def damaged(payload: bytes, cut: int, flip: int) -> list[bytes]:
    if not payload:
        return []
    torn = payload[: cut % len(payload)]
    i = flip % len(payload)
    return [torn, payload[:i] + bytes([payload[i] ^ 0x41]) + payload[i + 1 :]]


@pytest.mark.parametrize("name", CODECS)
def test_every_quote_codec_declares_the_fused_path(name: str) -> None:
    assert isinstance(create("codec", name), QuoteCodec)


@pytest.mark.parametrize("check", CHECKS, ids=["default", "no-clock", "no-prices"])
@pytest.mark.parametrize("name", CODECS)
@settings(max_examples=60, deadline=None)
@given(batch=st.lists(quotes, max_size=12), noise=st.lists(st.binary(max_size=40), max_size=3), cut=st.integers(0, 99), flip=st.integers(0, 99))
def test_fused_path_equals_decode_then_check(name: str, check: QuoteCheck, batch: list[dict[str, Any]], noise: list[bytes], cut: int, flip: int) -> None:
    codec = create("codec", name)
    written = codec.encode([TopicRecord(1, "k", q) for q in batch])  # what it cannot write it skips (logged)
    payloads = list(written) + noise + (damaged(written[0], cut, flip) if written else [])
    fast = codec.decode_quotes(payloads, check)
    slow = generic(codec, payloads, check)
    assert without_addresses(fast) == without_addresses(slow)
    for a, b in zip(fast[0], slow[0], strict=True):  # equal values of the same types (1 == 1.0 is not enough)
        assert [type(v) for v in a.data.values()] == [type(v) for v in b.data.values()]


@pytest.mark.parametrize("name", CODECS)
def test_a_plain_quote_round_trips_through_the_fused_path(name: str) -> None:
    codec = create("codec", name)
    quote = {"symbol": "EURUSD", "bid": 1.085, "ask": 1.0852, "bid_size": 1e6, "ask_size": 5e5, "ts_ms": NOW_MS - 1000}
    records, bad, refused = codec.decode_quotes(codec.encode([TopicRecord(quote["ts_ms"], "EURUSD", quote)]), QuoteCheck())
    assert (bad, refused) == ([], [])
    assert [r.data for r in records] == [quote] and list(records[0].data) == list(quote)
