"""Direct tests of ``gauss.http.frames``: the bounded WebSocket frame reader and the frame writer.

Client frames are built here from RFC 6455 section 5.2 (independently of the
module under test) and fed through ``io.BytesIO.read``; the writer's frames
are parsed back the same way.
"""

from __future__ import annotations

import io
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gauss.errors import GaussError
from gauss.http.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ConnectionGone,
    FrameReader,
    Message,
    close_frame,
    frame,
    frame_header,
    unmask,
)


def client_frame(
    payload: bytes,
    opcode: int = OP_TEXT,
    *,
    fin: bool = True,
    mask: bytes | None = b"\x37\xfa\x21\x3d",
    rsv: int = 0,
    length_form: str = "shortest",
) -> bytes:
    """One client-to-server frame: masked with ``mask`` (``None``: unmasked), length in the shortest form unless told."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask is not None else 0
    n = len(payload)
    if length_form == "64" or (length_form == "shortest" and n > 0xFFFF):
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    elif length_form == "16" or (length_form == "shortest" and n >= 126):
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BB", first, mask_bit | n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def reader(data: bytes, max_bytes: int = 1 << 20) -> FrameReader:
    return FrameReader(io.BytesIO(data).read, max_bytes)


def parse_server_frame(data: bytes) -> tuple[bool, int, bytes, bytes]:
    """``(fin, opcode, payload, rest)`` of one unmasked server frame at the start of ``data``."""
    first, second = data[0], data[1]
    assert second & 0x80 == 0, "server frames are never masked"
    assert first & 0x70 == 0, "no reserved bits"
    length, offset = second & 0x7F, 2
    if length == 126:
        (length,) = struct.unpack_from("!H", data, 2)
        offset = 4
        assert length >= 126, "16-bit length only when 7 bits do not fit"
    elif length == 127:
        (length,) = struct.unpack_from("!Q", data, 2)
        offset = 10
        assert length > 0xFFFF, "64-bit length only when 16 bits do not fit"
    return bool(first & 0x80), first & 0x0F, data[offset : offset + length], data[offset + length :]


def read_all(frames: FrameReader) -> list[Message]:
    out = []
    while True:
        try:
            out.append(frames.read_message())
        except ConnectionGone as exc:
            assert str(exc) == "connection closed mid-frame"
            return out


# --- unmask ---------------------------------------------------------------------------------


@given(payload=st.binary(max_size=300), mask=st.binary(min_size=4, max_size=4))
def test_unmask_is_the_xor_of_rfc6455_and_its_own_inverse(payload: bytes, mask: bytes) -> None:
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert unmask(payload, mask) == expected
    assert unmask(expected, mask) == payload


# --- the reader -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 0xFFFF, 0x10000, 70_000])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_one_masked_frame_of_every_length_form(size: int, opcode: int) -> None:
    payload = os.urandom(size)
    message = reader(client_frame(payload, opcode)).read_message()
    assert (message.opcode, message.data, message.oversize) == (opcode, payload, False)


@pytest.mark.parametrize("form", ["16", "64"])
def test_a_longer_length_form_than_needed_is_read_too(form: str) -> None:
    message = reader(client_frame(b"short", length_form=form)).read_message()
    assert message.data == b"short"


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(
        st.tuples(
            st.sampled_from([OP_TEXT, OP_BINARY]),
            st.lists(st.binary(max_size=200), min_size=1, max_size=5),  # the fragments of one message
            st.binary(min_size=4, max_size=4),
        ),
        max_size=6,
    ),
    pings=st.lists(st.binary(max_size=125), max_size=6),
    data=st.data(),
)
def test_fragmented_messages_with_control_frames_between_fragments_round_trip(
    messages: list[tuple[int, list[bytes], bytes]], pings: list[bytes], data: st.DataObject
) -> None:
    """Each message comes back whole; a ping between two fragments comes back at once, in stream order."""
    stream = b""
    expected: list[tuple[int, bytes]] = []
    pending_pings = list(pings)
    for opcode, parts, mask in messages:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            stream += client_frame(part, opcode if i == 0 else OP_CONTINUATION, fin=last, mask=mask)
            if not last and pending_pings and data.draw(st.booleans()):
                ping = pending_pings.pop()
                stream += client_frame(ping, OP_PING, mask=mask[::-1])
                expected.append((OP_PING, ping))
        expected.append((opcode, b"".join(parts)))
    got = read_all(reader(stream))
    assert [(m.opcode, m.data) for m in got] == expected
    assert not any(m.oversize for m in got)


@pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
def test_control_frames_are_messages_of_their_own(opcode: int) -> None:
    body = b"\x03\xe8bye" if opcode == OP_CLOSE else b"are you there"
    message = reader(client_frame(body, opcode)).read_message()
    assert (message.opcode, message.data) == (opcode, body)


def test_close_frame_with_an_empty_body() -> None:
    assert reader(client_frame(b"", OP_CLOSE)).read_message().data == b""


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=6),
    limit=st.integers(min_value=0, max_value=1000),
)
def test_a_message_over_the_limit_is_discarded_and_the_next_one_is_read(sizes: list[int], limit: int) -> None:
    """Oversize is judged on the whole message (all fragments), the limit itself is allowed, the stream stays in step."""
    parts = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    stream = b"".join(
        client_frame(part, OP_TEXT if i == 0 else OP_CONTINUATION, fin=i == len(parts) - 1) for i, part in enumerate(parts)
    )
    stream += client_frame(b"next", OP_TEXT)
    frames = reader(stream, max_bytes=max(limit, 4))
    first, second = frames.read_message(), frames.read_message()
    total = sum(sizes)
    if total > max(limit, 4):
        assert (first.opcode, first.data, first.oversize) == (OP_TEXT, b"", True)
    else:
        assert (first.data, first.oversize) == (b"".join(parts), False)
    assert (second.opcode, second.data, second.oversize) == (OP_TEXT, b"next", False)


def test_an_oversize_payload_is_read_in_pieces_not_held() -> None:
    """A 1 MiB frame over a 1 KiB limit is consumed by reads of at most 64 KiB (never one read of its size)."""
    stream = io.BytesIO(client_frame(b"x" * (1 << 20)) + client_frame(b"ok"))
    sizes: list[int] = []

    def read(n: int) -> bytes:
        sizes.append(n)
        return stream.read(n)

    frames = FrameReader(read, 1024)
    assert frames.read_message().oversize
    assert frames.read_message().data == b"ok"
    assert max(sizes) <= 65_536


def test_a_ping_between_fragments_does_not_count_towards_the_limit() -> None:
    stream = (
        client_frame(b"a" * 6, OP_TEXT, fin=False)
        + client_frame(b"p" * 100, OP_PING)
        + client_frame(b"b" * 4, OP_CONTINUATION)
    )
    frames = reader(stream, max_bytes=10)
    assert frames.read_message().opcode == OP_PING
    message = frames.read_message()
    assert (message.data, message.oversize) == (b"a" * 6 + b"b" * 4, False)


BROKEN = {
    "unmasked": client_frame(b"hi", mask=None),
    "reserved bit 1": client_frame(b"hi", rsv=0b100),
    "reserved bit 3": client_frame(b"hi", rsv=0b001),
    "opcode 3": client_frame(b"hi", 0x3),
    "opcode 0xB": client_frame(b"hi", 0xB),
    "fragmented ping": client_frame(b"hi", OP_PING, fin=False),
    "ping of 126 bytes": client_frame(b"p" * 126, OP_PING),
    "continuation first": client_frame(b"hi", OP_CONTINUATION),
    "text inside a text": client_frame(b"a", OP_TEXT, fin=False) + client_frame(b"b", OP_TEXT),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_frame_ends_the_connection_with_a_gauss_error(name: str) -> None:
    frames = reader(BROKEN[name])
    with pytest.raises(ConnectionGone) as caught:
        while True:
            frames.read_message()
    assert str(caught.value) != "connection closed mid-frame", "refused for what it is, not for running out"
    assert isinstance(caught.value, GaussError) and isinstance(caught.value, ConnectionError)


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=300), data=st.data())
def test_a_stream_cut_anywhere_is_connection_gone_never_a_short_message(payload: bytes, data: st.DataObject) -> None:
    whole = client_frame(payload)
    cut = data.draw(st.integers(min_value=0, max_value=len(whole) - 1))
    with pytest.raises(ConnectionGone, match="connection closed mid-frame"):
        reader(whole[:cut]).read_message()


# --- the writer -----------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(size=st.one_of(st.integers(0, 300), st.sampled_from([125, 126, 0xFFFF, 0x10000])), opcode=st.sampled_from([OP_TEXT, OP_BINARY]))
def test_frame_writes_the_shortest_header_and_the_payload_as_is(size: int, opcode: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    fin, op, body, rest = parse_server_frame(frame(payload, opcode))
    assert (fin, op, body, rest) == (True, opcode, payload, b"")


@given(length=st.integers(min_value=0, max_value=1 << 40), fin=st.booleans(), opcode=st.sampled_from([OP_TEXT, OP_CONTINUATION]))
def test_frame_header_announces_the_length_for_a_payload_written_separately(length: int, fin: bool, opcode: int) -> None:
    header = frame_header(length, opcode, fin=fin)
    first, second = header[0], header[1]
    assert (bool(first & 0x80), first & 0x0F, second & 0x80) == (fin, opcode, 0)
    announced = second & 0x7F
    if announced == 126:
        (announced,) = struct.unpack("!H", header[2:])
    elif announced == 127:
        (announced,) = struct.unpack("!Q", header[2:])
    assert announced == length
    assert len(header) == (2 if length < 126 else 4 if length <= 0xFFFF else 10)


def test_a_fragmented_answer_from_frame_header_parses_as_one_message() -> None:
    """What the API sends for a large answer: text with fin=0, continuations, a final continuation."""
    parts = [b"[1,", b"2,", b"3]"]
    stream = frame_header(len(parts[0]), OP_TEXT, fin=False) + parts[0]
    stream += frame_header(len(parts[1]), OP_CONTINUATION, fin=False) + parts[1]
    stream += frame_header(len(parts[2]), OP_CONTINUATION) + parts[2]
    seen = []
    while stream:
        fin, op, body, stream = parse_server_frame(stream)
        seen.append((fin, op, body))
    assert seen == [(False, OP_TEXT, b"[1,"), (False, OP_CONTINUATION, b"2,"), (True, OP_CONTINUATION, b"3]")]


@given(code=st.integers(min_value=1000, max_value=4999), reason=st.text(max_size=200))
def test_close_frame_is_a_valid_control_frame_with_code_and_reason(code: int, reason: str) -> None:
    fin, op, body, rest = parse_server_frame(close_frame(code, reason))
    assert (fin, op, rest) == (True, OP_CLOSE, b"")
    assert len(body) <= 125, "control frames carry at most 125 bytes"
    assert int.from_bytes(body[:2], "big") == code
    assert reason.encode().startswith(body[2:])


def test_close_frame_defaults_to_a_normal_closure() -> None:
    assert close_frame() == b"\x88\x02\x03\xe8"


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=2000), opcode=st.sampled_from([OP_TEXT, OP_BINARY, OP_PING, OP_PONG]))
def test_what_the_writer_frames_the_reader_reads_once_masked(payload: bytes, opcode: int) -> None:
    """Round trip: a writer frame with the mask bit and a mask added, as a client would send it, reads back whole."""
    if opcode in (OP_PING, OP_PONG):
        payload = payload[:125]
    written = frame(payload, opcode)
    head_len = len(written) - len(payload)
    mask = b"\x01\x80\x7f\xff"
    masked = bytes([written[0], written[1] | 0x80]) + written[2:head_len] + mask + unmask(payload, mask)
    message = reader(masked).read_message()
    assert (message.opcode, message.data) == (opcode, payload)
