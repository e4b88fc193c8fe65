"""FrameSpans: the compiled decoders' frames as spans of their chunk, read in place by the quote parsers.

Property tests: for any payloads in any chunking, a decoder made with
``spans=True`` gives the frames the list decoder gives, and every quote
parser reads the spans exactly as it reads the list of the same frames.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

FRAMINGS = {"lines": ("LineDecoder", "encode_lines"), "length-prefixed": ("LengthPrefixedDecoder", "encode_length_prefixed")}

quotes = st.lists(
    st.tuples(
        st.sampled_from(["EURUSD", "X", "BTC/USD", "A" * 70, "É"]),
        st.integers(min_value=0, max_value=2**53),
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats(min_value=1e-6, max_value=1e6),
    ),
    max_size=12,
)
junk = st.lists(st.sampled_from([b"not a quote", b'{"symbol":"A"}', b"\x00\x01", b"a,b,c", b" "]), max_size=3)
cuts = st.lists(st.integers(min_value=0, max_value=100_000), max_size=12)


@pytest.fixture
def compiled(twins: tuple[ModuleType, ModuleType]) -> ModuleType:
    return twins[0]


def chunked(data: bytes, points: list[int]) -> list[bytes]:
    at = sorted({p % (len(data) + 1) for p in points})
    return [data[a:b] for a, b in zip([0, *at], [*at, len(data)], strict=True)]


def payloads_of(kernels: ModuleType, fmt: str, rows: list[Any]) -> list[bytes]:
    batch = kernels.QuoteBatch(
        [r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows]), np.array([r[2] + r[3] for r in rows]), np.ones(len(rows)), np.ones(len(rows)),
    )  # fmt: skip
    if fmt == "json":
        return list(batch.payloads_json())
    if fmt == "csv":
        return list(kernels.encode_csv_quotes(batch))
    return list((kernels.encode_avro_quotes if fmt == "avro" else kernels.encode_protobuf_quotes)(batch))


@PROPERTY
@given(framing=st.sampled_from(sorted(FRAMINGS)), rows=quotes, extra=junk, points=cuts)
def test_spans_are_the_frames_the_list_decoder_gives(
    compiled: ModuleType, framing: str, rows: list[Any], extra: list[bytes], points: list[int]
) -> None:
    decoder_name, encoder_name = FRAMINGS[framing]
    payloads = [*payloads_of(compiled, "json", rows), *extra]
    wire = getattr(compiled, encoder_name)(payloads)
    as_list = getattr(compiled, decoder_name)(1 << 16)
    as_spans = getattr(compiled, decoder_name)(1 << 16, spans=True)
    assert as_spans.spans is True
    for chunk in chunked(wire, points):
        listed, spans = as_list.feed(chunk), as_spans.feed(chunk)
        assert type(spans).__name__ == "FrameSpans"
        assert len(spans) == len(listed) and list(spans) == listed and spans == listed
        assert [spans[i] for i in range(-len(spans), 0)] == listed and spans[1:] == listed[1:]
        assert as_spans.buffered == as_list.buffered


@PROPERTY
@given(fmt=st.sampled_from(["json", "csv", "avro", "protobuf"]), rows=quotes, extra=junk, points=cuts)
def test_every_quote_parser_reads_spans_as_it_reads_the_list(
    compiled: ModuleType, fmt: str, rows: list[Any], extra: list[bytes], points: list[int]
) -> None:
    text = fmt in ("json", "csv")
    decoder_name, encoder_name = FRAMINGS["lines" if text else "length-prefixed"]
    parser = getattr(compiled, {"json": "JsonQuoteParser", "csv": "CsvQuoteParser", "avro": "AvroQuoteParser", "protobuf": "ProtobufQuoteParser"}[fmt])(64)
    wire = getattr(compiled, encoder_name)([*payloads_of(compiled, fmt, rows), *extra])
    decoder = getattr(compiled, decoder_name)(1 << 16, spans=True)
    read = 0
    for chunk in chunked(wire, points):
        spans = decoder.feed(chunk)
        (batch, at), (expected, expected_at) = parser.parse(spans), parser.parse(list(spans))
        assert at.tolist() == expected_at.tolist() and batch.symbols == expected.symbols
        for name in ("ts_ms", "bid", "ask", "bid_size", "ask_size"):
            assert getattr(batch, name).tobytes() == getattr(expected, name).tobytes(), name
        read += len(batch)
    assert read <= len(rows)


def test_spans_behave_as_a_sequence_of_bytes(compiled: ModuleType) -> None:
    decoder = compiled.LineDecoder(64, spans=True)
    assert decoder.feed(b"ab") == []
    spans = decoder.feed(b"c\r\n\nde\nf\n")  # the first frame began in the chunk before
    assert list(spans) == [b"abc", b"de", b"f"] and len(spans) == 3
    assert (spans[0], spans[-1], spans[1:], spans[::2]) == (b"abc", b"f", [b"de", b"f"], [b"abc", b"f"])
    with pytest.raises(IndexError):
        spans[3]
    assert spans != [b"abc"] and bool(decoder.feed(b"\n")) is False
    assert isinstance(decoder.feed(bytearray(b"x\n")), list), "a chunk that is not bytes gives a list"
