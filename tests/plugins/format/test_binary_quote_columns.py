"""The avro and protobuf codecs' column paths against their general paths.

For the shipped schema and message, ``decode_quotes`` reads payloads
straight into a ``QuoteBatch`` (``AvroQuoteParser``, ``ProtobufQuoteParser``)
and ``encode`` writes a ``QuoteBatch`` from its columns
(``encode_avro_quotes``, ``encode_protobuf_quotes``). They must give what the
general paths give (fastavro, the protobuf library, ``decode`` then
``QuoteCheck.check``): the same bytes, the same quotes to the bit in the same
order, the same bad frames and refusals with the same reasons, and a batch
that goes out and comes back in as the same batch.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.formats import canon

from gauss.core import QuoteBatch
from gauss.quotes import MAX_TS_MS, QuoteCheck
from gauss.registry import create

FORMATS = ["avro", "protobuf"]
FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
CHECKS = [QuoteCheck(), QuoteCheck(None, check_prices=False), QuoteCheck(None, max_key_bytes=8)]


def codecs(fmt: str) -> tuple[Any, Any]:
    """``(fast, reference)``: the codec with its column paths, and the same codec held to its general path."""
    fast, reference = create("codec", fmt), create("codec", fmt)
    if fmt == "avro":
        reference.quote_layout = False
    else:
        reference.quote_wire = False
    return fast, reference


def without_addresses(result: tuple[Any, list[Any], list[Any]]) -> Any:
    """Comparable results: values as their bits, fastavro's stream addresses out of the reasons."""
    records, bad, refused = result
    return canon(list(records)), [(r.raw, re.sub(r" at 0x[0-9a-f]+", "", r.reason)) for r in bad], canon(refused)


def generic(codec: Any, payloads: list[bytes], check: QuoteCheck) -> Any:
    records, bad = codec.decode(payloads)
    good, refused = check.check(records) if records else ([], [])
    return good, bad, refused


def batch_of(rows: list[tuple[Any, ...]]) -> QuoteBatch:
    columns: list[Any] = list(zip(*rows, strict=True)) if rows else [[]] * 6
    return QuoteBatch(list(columns[0]), *columns[1:])


prices = st.one_of(
    st.floats(),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1e-310, 1e308, -1e308, 1.7976931348623157e308, 1.085]),
)
symbols = st.one_of(
    st.sampled_from(["EURUSD", "BTC/USD", "", "é", "€" * 20, "x" * 70, "a,b", "nul\x00"]),
    st.text(max_size=10),
)
stamps = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 1732406400123, MAX_TS_MS, MAX_TS_MS + 1]),
)
rows = st.lists(st.tuples(symbols, stamps, prices, prices, prices, prices), max_size=12)


def damaged(payload: bytes, cut: int, flip: int, extra: bytes) -> list[bytes]:
    """The payload torn, with bytes after it, and with one byte flipped."""
    if not payload:
        return []
    i = flip % len(payload)
    return [payload[: cut % len(payload)], payload + extra, payload[:i] + bytes([payload[i] ^ 0x41]) + payload[i + 1 :]]


@pytest.mark.parametrize("check", CHECKS, ids=["default", "no-clock-no-prices", "short-keys"])
@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURES)
@given(
    quotes=rows,
    noise=st.lists(st.binary(max_size=40), max_size=3),
    cut=st.integers(0, 99),
    flip=st.integers(0, 99),
    extra=st.binary(min_size=1, max_size=3),
)
def test_column_decode_equals_decode_then_check(
    fmt: str, check: QuoteCheck, quotes: list[Any], noise: list[bytes], cut: int, flip: int, extra: bytes
) -> None:
    fast, reference = codecs(fmt)
    written = reference.encode(batch_of(quotes).records())
    payloads = [p for w in written for p in (w, *damaged(w, cut, flip, extra))] + noise
    result = fast.decode_quotes(payloads, check)
    assert isinstance(result[0], QuoteBatch)
    assert without_addresses(result) == without_addresses(generic(reference, payloads, check))


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURES)
@given(quotes=rows)
def test_a_batch_is_encoded_as_its_records_are(fmt: str, quotes: list[Any]) -> None:
    fast, reference = codecs(fmt)
    batch = batch_of(quotes)
    assert fast.encode(batch) == reference.encode(batch) == reference.encode(batch.records())


finite = st.floats(allow_nan=False, allow_infinity=False)
halves = st.one_of(  # a bid and an ask whose sum stays finite
    st.floats(min_value=-8e307, max_value=8e307),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-310, 8e307]),
)
good_rows = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from(["EURUSD", "é", "€" * 40, "x" * 200, "tab\t", "😀"]), st.text(min_size=1, max_size=12)
        ),
        st.integers(1, MAX_TS_MS),
        halves,
        halves,
        st.one_of(finite, st.sampled_from([-0.0, 5e-324, 1e308])),
        st.one_of(finite, st.sampled_from([-0.0, 5e-324, -1e308])),
    ),
    max_size=20,
)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURES)
@given(quotes=good_rows)
def test_decode_of_encode_gives_back_the_same_batch_to_the_bit(fmt: str, quotes: list[Any]) -> None:
    # Non-ASCII and long symbols take the general path; the rest the column path; the batch comes back whole.
    codec, _ = codecs(fmt)
    batch = batch_of(quotes)
    back, bad, refused = codec.decode_quotes(
        codec.encode(batch), QuoteCheck(None, check_prices=False, max_key_bytes=1024)
    )
    assert (bad, refused) == ([], [])
    assert canon(back) == canon(batch)
    assert [
        struct.pack("<4d", *v)
        for v in zip(back.bid.tolist(), back.ask.tolist(), back.bid_size.tolist(), back.ask_size.tolist(), strict=True)
    ] == [struct.pack("<4d", *q[2:]) for q in quotes]


@pytest.mark.parametrize("fmt", FORMATS)
def test_plain_quotes_take_the_column_path(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    codec, _ = codecs(fmt)
    batch = batch_of(
        [("EURUSD", 1732406400123, 1.085, 1.0852, 1e6, 0.0), ("GBPUSD", 1732406400124, 1.25, 1.2502, 0.0, -0.0)]
    )
    payloads = codec.encode(batch)

    def refuse(*args: Any) -> Any:
        raise AssertionError("the general path was taken")

    monkeypatch.setattr(codec, "decode", refuse)
    monkeypatch.setattr(codec, "serialize", refuse)
    assert codec.encode(batch) == payloads
    back, bad, refused = codec.decode_quotes(payloads, QuoteCheck())
    assert (bad, refused) == ([], []) and back == batch
    assert back.symbols[0] == "EURUSD" and np.signbit(back.ask_size[1])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_symbol_the_columns_cannot_write_takes_the_record_path(fmt: str) -> None:
    fast, reference = codecs(fmt)
    batch = batch_of([("EURUSD", 1, 1.0, 2.0, 0.0, 0.0), ("\ud800", 2, 1.0, 2.0, 0.0, 0.0)])
    assert fast.encode(batch) == reference.encode(batch.records()) and len(fast.encode(batch)) == 1
    assert fast._encode_failures.count == 2  # logged and skipped, as the record path does


def message_descriptor(tmp_path: Path, fields: list[tuple[str, int, int]], syntax: str = "proto3") -> Path:
    """A ``.desc`` of message ``t.Q`` with ``(name, number, type)`` fields."""
    file = descriptor_pb2.FileDescriptorProto(name="q.proto", package="t", syntax=syntax)
    message = file.message_type.add(name="Q")
    for name, number, kind in fields:
        message.field.add(name=name, number=number, type=kind, label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    path = tmp_path / "q.desc"
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString())
    return path


F = descriptor_pb2.FieldDescriptorProto
SHIPPED = [("symbol", 1, F.TYPE_STRING), ("bid", 2, F.TYPE_DOUBLE), ("ask", 3, F.TYPE_DOUBLE),
           ("bid_size", 4, F.TYPE_DOUBLE), ("ask_size", 5, F.TYPE_DOUBLE), ("ts_ms", 6, F.TYPE_INT64)]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "syntax", "wire"),
    [
        (SHIPPED, "proto3", True),
        ([SHIPPED[0], ("bid", 3, F.TYPE_DOUBLE), ("ask", 2, F.TYPE_DOUBLE), *SHIPPED[3:]], "proto3", False),
        ([*SHIPPED[:5], ("ts_ms", 6, F.TYPE_SINT64)], "proto3", False),
        ([*SHIPPED[:4], ("ask_size", 5, F.TYPE_FLOAT), SHIPPED[5]], "proto3", False),
        (SHIPPED, "proto2", False),  # explicit presence: a zero is written
    ],
)
def test_only_the_shipped_wire_form_takes_the_column_paths(
    tmp_path: Path, fields: Any, syntax: str, wire: bool
) -> None:
    codec = create(
        "codec", {"type": "protobuf", "descriptor": str(message_descriptor(tmp_path, fields, syntax)), "message": "t.Q"}
    )
    assert codec.quote_layout and codec.quote_wire is wire
    batch = batch_of([("EURUSD", 1732406400123, 1.085, 1.0852, 0.0, -0.0), ("A", 5, 1.0, -1.0, 0.5, 0.0)])
    payloads = codec.encode(batch)
    assert payloads == codec.serialize([r.data for r in batch.records()])
    assert without_addresses(codec.decode_quotes(payloads, QuoteCheck())) == without_addresses(
        generic(codec, payloads, QuoteCheck())
    )
