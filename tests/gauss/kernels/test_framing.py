"""Framing kernels (SPEC section 2): incremental decoders and batch encoders.

Property tests feed random frames in random chunkings to both builds and
compare with a model written here; hypothesis prints the failing example.
"""

from __future__ import annotations

import random
import struct
import zlib
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gauss.errors import FrameTooLarge, GaussError

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Payloads over a small alphabet so "\r", "\n" and NUL turn up often.
line_payloads = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"x"))
binary_payloads = st.one_of(st.binary(max_size=40), st.sampled_from([b"", b"\n", b"\r\n", b"\x00\x00\x00\x01"]))
crlf_payloads = st.lists(st.sampled_from([b"a", b"\r", b"\x00", b"\xff", b"zz"]), max_size=12).map(b"".join)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the given cut points (taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for point in points + [len(data)]:
        chunks.append(data[last:point])
        last = point
    return chunks


def decode_all(decoder: object, chunks: list[bytes]) -> list[bytes]:
    frames: list[bytes] = []
    for chunk in chunks:
        frames.extend(decoder.feed(chunk))  # type: ignore[attr-defined]
    return frames


def expected_lines(lines: list[bytes]) -> list[bytes]:
    """SPEC section 2: one trailing "\\r" is ignored; empty lines are keep-alives."""
    out = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if line:
            out.append(line)
    return out


@PROPERTY
@given(
    payloads=st.lists(st.one_of(line_payloads, crlf_payloads), max_size=30),
    crlf=st.lists(st.booleans(), min_size=30, max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_lines_decoder_splits_any_chunking(
    kernels: ModuleType, payloads: list[bytes], crlf: list[bool], cuts: list[int]
) -> None:
    lines = [p + (b"\r" if crlf[i] else b"") for i, p in enumerate(payloads)]
    wire = b"".join(line + b"\n" for line in lines)
    decoder = kernels.LineDecoder(max_frame_bytes=64)
    assert decode_all(decoder, chunked(wire, cuts)) == expected_lines(lines)
    assert decoder.buffered == 0


@PROPERTY
@given(
    payloads=st.lists(line_payloads.filter(lambda p: not p.endswith(b"\r")), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_lines_round_trip_through_encoder(kernels: ModuleType, payloads: list[bytes], cuts: list[int]) -> None:
    wire = kernels.encode_lines(payloads)
    assert wire == b"".join(p + b"\n" for p in payloads)
    decoder = kernels.LineDecoder()
    assert decode_all(decoder, chunked(wire, cuts)) == [p for p in payloads if p]


@PROPERTY
@given(
    payloads=st.lists(binary_payloads, max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_length_prefixed_round_trip_any_chunking(kernels: ModuleType, payloads: list[bytes], cuts: list[int]) -> None:
    wire = kernels.encode_length_prefixed(payloads)
    assert wire == b"".join(struct.pack(">I", len(p)) + p for p in payloads)
    decoder = kernels.LengthPrefixedDecoder(max_frame_bytes=64)
    assert decode_all(decoder, chunked(wire, cuts)) == payloads
    assert decoder.buffered == 0


@PROPERTY
@given(
    payloads=st.lists(st.one_of(line_payloads, crlf_payloads), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
    limit=st.integers(min_value=1, max_value=16),
)
def test_lines_limit_is_exact_for_any_chunking(
    kernels: ModuleType, payloads: list[bytes], cuts: list[int], limit: int
) -> None:
    """Frames up to the limit pass, the first longer one raises, wherever the chunks end."""
    wire = b"".join(p + b"\n" for p in payloads)
    frames = expected_lines(payloads)
    decoder = kernels.LineDecoder(max_frame_bytes=limit)
    got: list[bytes] = []
    try:
        for chunk in chunked(wire, cuts):
            got.extend(decoder.feed(chunk))
    except FrameTooLarge as exc:
        got.extend(exc.frames)  # the whole lines before it, also those of the same chunk
        too_long = [f for f in frames if len(f) > limit]
        assert too_long, "raised although every line fits"
        assert got == frames[: frames.index(too_long[0])]
        assert decoder.buffered == 0
    else:
        assert all(len(f) <= limit for f in frames)
        assert got == frames


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n"])
def test_lines_frame_of_exactly_max_bytes_passes(kernels: ModuleType, terminator: bytes) -> None:
    decoder = kernels.LineDecoder(max_frame_bytes=5)
    frames = []
    for byte in b"abcde" + terminator:
        frames.extend(decoder.feed(bytes([byte])))
    assert frames == [b"abcde"]


def test_lines_slow_line_without_newline_raises_at_limit(kernels: ModuleType) -> None:
    decoder = kernels.LineDecoder(max_frame_bytes=10)
    for _ in range(10):
        assert decoder.feed(b"x") == []
    assert decoder.buffered == 10
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"x")
    assert decoder.buffered == 0


def test_lines_slow_line_may_hold_one_carriage_return_over_limit(kernels: ModuleType) -> None:
    decoder = kernels.LineDecoder(max_frame_bytes=4)
    assert decoder.feed(b"abcd\r") == []
    assert decoder.feed(b"\n") == [b"abcd"]
    decoder.feed(b"abcd\r")
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"e")


def test_lines_huge_chunk_without_newline_is_refused_not_buffered(kernels: ModuleType) -> None:
    decoder = kernels.LineDecoder(max_frame_bytes=1024)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(b"y" * 5000)
    assert isinstance(info.value, GaussError) and isinstance(info.value, ValueError)
    assert decoder.buffered == 0


def test_lines_accepts_any_bytes_like_chunk(kernels: ModuleType) -> None:
    decoder = kernels.LineDecoder()
    assert decoder.feed(bytearray(b"a\nb")) == [b"a"]
    assert decoder.feed(memoryview(b"c\n")) == [b"bc"]
    assert all(type(f) is bytes for f in decoder.feed(b"d\n"))


def test_length_prefixed_oversize_header_raises_before_payload(kernels: ModuleType) -> None:
    decoder = kernels.LengthPrefixedDecoder(max_frame_bytes=100)
    assert decoder.feed(b"\x00\x00") == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"\x00\x65")  # 101 bytes announced, none sent
    assert decoder.buffered == 0


@pytest.mark.parametrize("spans", [False, True])
@pytest.mark.parametrize("framing", ["lines", "length-prefixed"])
def test_an_oversize_frame_carries_the_whole_frames_its_chunk_completed_before_it(
    kernels: ModuleType, framing: str, spans: bool
) -> None:
    """SPEC section 6: the frame closes its connection, but what came before it in the same read is kept."""
    if framing == "lines":
        decoder, wire = kernels.LineDecoder(max_frame_bytes=8, spans=spans), b"one\ntwo\n" + b"x" * 20 + b"\n"
    else:
        decoder = kernels.LengthPrefixedDecoder(max_frame_bytes=8, spans=spans)
        wire = kernels.encode_length_prefixed([b"one", b"two"]) + (9).to_bytes(4, "big")
    assert list(decoder.feed(b"zero\n" if framing == "lines" else kernels.encode_length_prefixed([b"zero"]))) == [b"zero"]
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(wire)
    assert list(info.value.frames) == [b"one", b"two"]
    assert decoder.buffered == 0


def test_length_prefixed_frame_of_exactly_max_bytes_passes(kernels: ModuleType) -> None:
    decoder = kernels.LengthPrefixedDecoder(max_frame_bytes=3)
    wire = kernels.encode_length_prefixed([b"abc", b"", b"de"])
    frames = []
    for i in range(len(wire)):
        frames.extend(decoder.feed(wire[i : i + 1]))
    assert frames == [b"abc", b"", b"de"]


def test_encoders_take_bytes_like_payloads(kernels: ModuleType) -> None:
    assert kernels.encode_lines([bytearray(b"a"), b"b"]) == b"a\nb\n"
    assert kernels.encode_length_prefixed([bytearray(b"ab")]) == b"\x00\x00\x00\x02ab"
    assert kernels.encode_lines([]) == b""
    assert kernels.encode_length_prefixed([]) == b""


def test_encode_lines_refuses_payload_with_newline(kernels: ModuleType) -> None:
    with pytest.raises(ValueError, match="newline"):
        kernels.encode_lines([b"ok", b"bad\nline"])


@pytest.mark.parametrize("name", ["LineDecoder", "LengthPrefixedDecoder"])
def test_decoder_refuses_non_positive_limit(kernels: ModuleType, name: str) -> None:
    with pytest.raises(ValueError):
        getattr(kernels, name)(0)
    assert getattr(kernels, name)().max_frame_bytes == kernels.DEFAULT_MAX_FRAME_BYTES


@PROPERTY
@given(payloads=st.lists(st.one_of(line_payloads, st.binary(min_size=40, max_size=600).map(lambda b: b.replace(b"\n", b"x"))), max_size=30))
def test_checked_frames_hold_each_line_with_its_length_and_crc(kernels: ModuleType, payloads: list[bytes]) -> None:
    frames, count = kernels.encode_checked_frames(b"".join(p + b"\n" for p in payloads))
    assert count == len(payloads)
    assert frames == b"".join(struct.pack(">II", len(p), zlib.crc32(p)) + p for p in payloads)


def test_checked_frames_crc_at_every_length_across_the_folding_steps(kernels: ModuleType) -> None:
    """Lengths 0..300 cover the table-only path (< 64 bytes), every 64- and 16-byte fold count and every tail."""
    rng = random.Random(13)
    payloads = [bytes(rng.choice(range(11, 256)) for _ in range(n)) for n in range(301)]
    frames, _ = kernels.encode_checked_frames(b"".join(p + b"\n" for p in payloads))
    assert frames == b"".join(struct.pack(">II", len(p), zlib.crc32(p)) + p for p in payloads)


def test_checked_frames_refuse_a_last_line_without_its_newline(kernels: ModuleType) -> None:
    assert kernels.encode_checked_frames(b"") == (b"", 0)
    with pytest.raises(ValueError, match="no newline"):
        kernels.encode_checked_frames(b"a\nb")
