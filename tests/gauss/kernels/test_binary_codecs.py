"""The binary quote codecs (avro, protobuf) as columns, in both builds, against fastavro and the protobuf library.

The compiled parsers and encoders must equal their pure twins (positions,
symbols, values to the bit, bytes); the encoders must write exactly what
fastavro's ``schemaless_writer`` and the library's ``SerializeToString``
write; whatever a parser reads must be what the library reads from the same
payload, to the bit; what an encoder writes must read back as the same batch.
"""

from __future__ import annotations

import io
import struct
from types import ModuleType
from typing import Any

import fastavro
import numpy as np
import pytest
from gauss_plugins.format.avro import load_schema
from gauss_plugins.format.protobuf import load_message_class
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gauss.resources import resource_path

FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
SCHEMA = load_schema(resource_path("schemas/quote.avsc"))
Quote = load_message_class(resource_path("schemas/quote.desc"), "gauss.Quote")
FORMATS = ["avro", "protobuf"]
FIELDS = ("symbol", "bid", "ask", "bid_size", "ask_size", "ts_ms")

floats = st.one_of(
    st.floats(),
    st.integers(0, 2**64 - 1).map(
        lambda bits: struct.unpack("<d", struct.pack("<Q", bits))[0]
    ),  # any bits: NaN payloads too
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e308, -1.7976931348623157e308, 1.085]),
)
plain_symbols = st.one_of(
    st.sampled_from(["EURUSD", "BTC/USD", "x" * 64, "a,b", 'q"t', " ", "~"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=20),
)
symbols = st.one_of(
    plain_symbols,
    st.sampled_from(["", "é", "€" * 40, "x" * 200, "tab\t", "nul\x00", "del\x7f", "😀"]),
    st.text(max_size=12),
)
stamps = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 63, 64, -64, -65, 1732406400123, 2**62, -(2**62) - 1, 2**63 - 1, -(2**63)]),
)


def rows_of(symbol_strategy: Any, ts_strategy: Any = stamps) -> Any:
    return st.lists(st.tuples(symbol_strategy, ts_strategy, floats, floats, floats, floats), max_size=20)


def build(kernels: ModuleType, rows: list[tuple[Any, ...]]) -> Any:
    columns: list[Any] = list(zip(*rows, strict=True)) if rows else [[]] * 6
    return kernels.QuoteBatch(list(columns[0]), *columns[1:])


def bits(values: Any) -> list[bytes]:
    return [struct.pack("<d", v) for v in np.asarray(values, dtype=np.float64).tolist()]


def columns(batch: Any) -> tuple[Any, ...]:
    """A batch's quotes as comparable values: symbols, ts_ms and the doubles' bits."""
    return (
        batch.symbols,
        batch.ts_ms.tolist(),
        *(bits(getattr(batch, name)) for name in ("bid", "ask", "bid_size", "ask_size")),
    )


def encode(kernels: ModuleType, fmt: str, batch: Any) -> list[bytes]:
    return kernels.encode_avro_quotes(batch) if fmt == "avro" else kernels.encode_protobuf_quotes(batch)


def parser(kernels: ModuleType, fmt: str, max_key_bytes: int = 64) -> Any:
    return (kernels.AvroQuoteParser if fmt == "avro" else kernels.ProtobufQuoteParser)(max_key_bytes)


def library_encode(fmt: str, row: tuple[Any, ...]) -> bytes:
    data = dict(zip(("symbol", "ts_ms", "bid", "ask", "bid_size", "ask_size"), row, strict=True))
    if fmt == "avro":
        stream = io.BytesIO()
        fastavro.schemaless_writer(stream, SCHEMA, data)
        return stream.getvalue()
    return Quote(**data).SerializeToString(deterministic=True)  # type: ignore[no-any-return]


def library_decode(fmt: str, payload: bytes) -> tuple[Any, ...] | None:
    """``(symbol, ts_ms, bid, ask, bid_size, ask_size)`` as the general path reads them, or None if it cannot."""
    try:
        if fmt == "avro":
            stream = io.BytesIO(payload)
            datum: Any = fastavro.schemaless_reader(stream, SCHEMA, None)
            if stream.tell() != len(payload):
                return None
            return tuple(datum[name] for name in ("symbol", "ts_ms", "bid", "ask", "bid_size", "ask_size"))
        msg = Quote.FromString(payload)
    except Exception:  # noqa: BLE001 - whatever the library refuses, the parser must refuse too
        return None
    return (msg.symbol, msg.ts_ms, msg.bid, msg.ask, msg.bid_size, msg.ask_size)


@st.composite
def payloads(draw: st.DrawFn, fmt: str) -> Any:
    """Good payloads, and torn, extended, flipped, over-long-varint, reordered, repeated ones, noise, non-bytes."""
    row = draw(st.tuples(symbols, stamps, floats, floats, floats, floats))
    try:
        good = library_encode(fmt, row)
    except (ValueError, TypeError):
        good = b""
    kind = draw(st.integers(0, 9))
    if kind <= 2 or not good:
        return good
    if kind == 3:
        return good[: draw(st.integers(0, len(good) - 1))]
    if kind == 4:
        return good + draw(st.binary(min_size=1, max_size=4))
    if kind == 5:
        at = draw(st.integers(0, len(good) - 1))
        return good[:at] + bytes([good[at] ^ (1 << draw(st.integers(0, 7)))]) + good[at + 1 :]
    if kind == 6:  # a varint padded with continuation bytes: non-minimal, 10 bytes, or more
        pad = bytes([0x80 | draw(st.integers(0, 127))]) * draw(st.integers(1, 10))
        at = draw(st.sampled_from([0, len(good) - 1]))
        return good[:at] + pad + good[at:]
    if kind == 7:
        return draw(st.binary(max_size=60))
    if kind == 8 and fmt == "protobuf":  # fields in another order, or one written twice (last one wins)
        fields = split_fields(good)
        if draw(st.booleans()):
            return b"".join(draw(st.permutations(fields)))
        return b"".join(fields + [draw(st.sampled_from(fields))])
    return draw(st.sampled_from([bytearray(good), memoryview(good), None, good.decode("latin-1")]))


def split_fields(message: bytes) -> list[bytes]:
    """The fields of a message the encoder wrote (one-byte tags) as they lie on the wire."""
    out, i = [], 0
    while i < len(message):
        tag, start = message[i], i
        i += 1
        if tag == 0x0A:
            size = message[i]  # short symbols: a one-byte length
            i += 1 + size if size < 0x80 else len(message)
        elif tag == 0x30:
            while message[i] & 0x80:
                i += 1
            i += 1
        else:
            i += 8
        out.append(message[start:i])
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURES)
@given(data=st.data())
def test_encoders_of_both_builds_write_the_librarys_bytes(
    twins: tuple[ModuleType, ModuleType], fmt: str, data: st.DataObject
) -> None:
    rows = data.draw(rows_of(symbols))
    compiled, pure = (encode(k, fmt, build(k, rows)) for k in twins)
    assert compiled == pure == [library_encode(fmt, row) for row in rows]


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES)
@given(data=st.data(), max_key_bytes=st.sampled_from([1, 6, 64, 1000]))
def test_parsers_of_both_builds_read_what_the_library_reads(
    twins: tuple[ModuleType, ModuleType], fmt: str, data: st.DataObject, max_key_bytes: int
) -> None:
    batch = data.draw(st.lists(payloads(fmt), max_size=12))
    (compiled, c_pos), (pure, p_pos) = (parser(k, fmt, max_key_bytes).parse(batch) for k in twins)
    assert c_pos.dtype == p_pos.dtype == np.int64 and c_pos.tolist() == p_pos.tolist()
    assert columns(compiled) == columns(pure)
    assert all(type(s) is str for s in compiled.symbols + pure.symbols)
    for row, position in enumerate(c_pos.tolist()):
        expected = library_decode(fmt, batch[position])
        assert expected is not None, batch[position]
        symbol, ts = expected[:2]
        assert (compiled.symbols[row], int(compiled.ts_ms[row])) == (symbol, ts)
        assert 0 < len(symbol.encode()) <= max_key_bytes and symbol.isascii() and symbol.isprintable()
        assert [b[row] for b in columns(compiled)[2:]] == bits(expected[2:])


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURES)
@given(data=st.data())
def test_what_is_written_reads_back_as_the_same_batch_to_the_bit(
    kernels: ModuleType, fmt: str, data: st.DataObject
) -> None:
    # A plain symbol and, for protobuf, a ts_ms that is written (proto3 cannot write 0): every quote takes the fast path.
    ts = stamps.filter(bool) if fmt == "protobuf" else stamps
    batch = build(kernels, data.draw(rows_of(plain_symbols, ts)))
    read, positions = parser(kernels, fmt).parse(encode(kernels, fmt, batch))
    assert positions.tolist() == list(range(len(batch)))
    assert columns(read) == columns(batch)


def test_equal_symbols_share_one_str(kernels: ModuleType) -> None:
    for fmt in FORMATS:
        batch = build(kernels, [("EURUSD", 1, 1.0, 2.0, 0.0, 0.0)] * 3)
        read, _ = parser(kernels, fmt).parse(encode(kernels, fmt, batch))
        assert read.symbols == ["EURUSD"] * 3 and read.symbols[0] is read.symbols[1] is read.symbols[2]


AVRO_GOOD = b"\x04AB" + struct.pack("<4d", 1.5, 2.5, 0.0, -0.0) + b"\x02"  # "AB", ts_ms 1


@pytest.mark.parametrize(
    ("payload", "taken"),
    [
        (AVRO_GOOD, True),
        (b"\x84\x00AB" + AVRO_GOOD[3:], True),  # a non-minimal length: fastavro reads it too
        (AVRO_GOOD[:-1] + b"\xff" * 9 + b"\x01", True),  # ten bytes, the last holding bit 63
        (AVRO_GOOD[:-1] + b"\xfe" * 9 + b"\x01", True),
        (AVRO_GOOD[:-1], False),  # torn
        (AVRO_GOOD + b"\x00", False),  # a trailing byte
        (AVRO_GOOD[:-1] + b"\xff" * 9 + b"\x03", False),  # bits past 64 (fastavro drops them)
        (AVRO_GOOD[:-1] + b"\xff" * 10 + b"\x01", False),  # eleven bytes
        (b"\x00" + AVRO_GOOD[3:], False),  # empty symbol
        (b"\x03AB" + AVRO_GOOD[3:], False),  # negative length
        (b"\x04\xc3\xa9" + AVRO_GOOD[3:], False),  # "\u00e9": not ASCII, for fastavro
        (b"\x04A\x00" + AVRO_GOOD[3:], False),  # a control character
    ],
)
def test_avro_parser_takes_and_refuses(twins: tuple[ModuleType, ModuleType], payload: bytes, taken: bool) -> None:
    for kernels in twins:
        batch, positions = kernels.AvroQuoteParser(64).parse([payload])
        assert positions.tolist() == ([0] if taken else [])
        if taken:
            library = library_decode("avro", payload)
            assert library is not None and (batch.symbols[0], int(batch.ts_ms[0])) == library[:2] == ("AB", library[1])
            assert [b[0] for b in columns(batch)[2:]] == bits(library[2:])


PROTO_GOOD = b"\x0a\x02AB" + b"\x11" + struct.pack("<d", 1.5) + b"\x19" + struct.pack("<d", 2.5) + b"\x30\x01"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (PROTO_GOOD, ("AB", 1, 1.5, 2.5, 0.0, 0.0)),
        (PROTO_GOOD[-2:] + PROTO_GOOD[4:-2] + PROTO_GOOD[:4], ("AB", 1, 1.5, 2.5, 0.0, 0.0)),  # any order
        (
            b"\x0a\x01A\x30\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            ("A", -1, 0.0, 0.0, 0.0, 0.0),
        ),  # negative: ten bytes
        (b"\x0a\x01A\x30\x81\x80\x00", ("A", 1, 0.0, 0.0, 0.0, 0.0)),  # a non-minimal varint
        (b"\x0a\x01A\x30\x00", ("A", 0, 0.0, 0.0, 0.0, 0.0)),  # a zero written: the check refuses it
        (b"\x0a\x01A\x30\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", None),  # bits past 64 (the library drops them)
        (PROTO_GOOD + b"\x30\x02", None),  # ts_ms twice (the last one wins)
        (PROTO_GOOD + b"\x38\x01", None),  # an unknown field (the library skips it)
        (PROTO_GOOD + b"\x10\x01", None),  # bid as a varint: a wrong wire type, an unknown field to the library
        (b"\x8a\x00\x02AB\x30\x01", None),  # a tag of two bytes
        (PROTO_GOOD[:-1], None),  # torn
        (PROTO_GOOD[:9], None),  # a torn double
        (b"\x30\x01", None),  # no symbol
        (b"\x0a\x00\x30\x01", None),  # an empty symbol
        (PROTO_GOOD[:-2], None),  # no ts_ms
        (b"\x0a\x02\xc3\xa9\x30\x01", None),  # "é": not ASCII, for the library
        (b"\x0a\x02\xff\xfe\x30\x01", None),  # not UTF-8
    ],
)
def test_protobuf_parser_takes_and_refuses(
    twins: tuple[ModuleType, ModuleType], payload: bytes, expected: tuple[Any, ...] | None
) -> None:
    for kernels in twins:
        batch, positions = kernels.ProtobufQuoteParser(64).parse([payload])
        if expected is None:
            assert positions.tolist() == [] and len(batch) == 0
            continue
        assert positions.tolist() == [0]
        assert library_decode("protobuf", payload) == expected
        got = (batch.symbols[0], int(batch.ts_ms[0]), *(float(getattr(batch, n)[0]) for n in FIELDS[1:5]))
        assert got == expected


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_symbol_longer_than_max_key_bytes_is_left_to_the_general_path(
    twins: tuple[ModuleType, ModuleType], fmt: str
) -> None:
    for kernels in twins:
        written = encode(
            kernels, fmt, build(kernels, [("ABCDE", 1, 1.0, 2.0, 0.0, 0.0), ("ABCD", 1, 1.0, 2.0, 0.0, 0.0)])
        )
        batch, positions = parser(kernels, fmt, 4).parse(written)
        assert positions.tolist() == [1] and batch.symbols == ["ABCD"]
        with pytest.raises(ValueError, match="at least 1"):
            parser(kernels, fmt, 0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_symbol_an_encoder_cannot_write_raises(twins: tuple[ModuleType, ModuleType], fmt: str) -> None:
    for kernels in twins:
        with pytest.raises(UnicodeEncodeError):
            encode(kernels, fmt, build(kernels, [("\ud800", 1, 1.0, 2.0, 0.0, 0.0)]))
        with pytest.raises(TypeError):
            encode(kernels, fmt, build(kernels, [(b"AB", 1, 1.0, 2.0, 0.0, 0.0)]))
        with pytest.raises(TypeError):
            encode(kernels, fmt, [])
