"""Fuzz targets of both framings (SPEC section 2, docs/kernels.md), compiled kernel and pure twin alike.

Each input is a limit, a way to cut a byte stream into chunks (and which
bytes-like type each chunk is), then the stream. Both builds are fed the
same chunks and must agree exactly (frames of every ``feed``, where
``FrameTooLarge`` is raised, ``buffered``); and what they return must
explain the input on its own:

- ``lines``: the consumed input (all fed bytes but the ``buffered`` tail)
  ends at a ``\\n``, the tail holds none, and the frames are the consumed
  lines with one trailing ``\\r`` dropped and the empty ones skipped, none
  longer than the limit; frames that end in no ``\\r`` re-encode
  (``encode_lines``) to a stream that decodes to them again.
- ``length-prefixed``: ``encode_length_prefixed(frames)`` is exactly the
  consumed input, and the tail is an incomplete frame.
- ``FrameTooLarge`` is raised exactly when the input breaks the limit (a
  complete line, or an unterminated tail, longer than allowed; a length
  header above the limit), and leaves the decoder empty.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

from fuzz_input import FuzzInput

from gauss import _pycore
from gauss.errors import FrameTooLarge

__all__ = ["check_lines", "check_length_prefixed", "seeds_lines", "seeds_length_prefixed", "BUILDS"]

LIMITS = (1, 2, 3, 4, 5, 8, 16, 64, 255, 256, 65_536, _pycore.DEFAULT_MAX_FRAME_BYTES)
TOO_LARGE = "FrameTooLarge"


def _builds() -> list[ModuleType]:
    builds: list[ModuleType] = [_pycore]
    try:
        builds.insert(0, importlib.import_module("gauss._core"))
    except ImportError:  # not built: the twin is checked against the invariants alone
        if os.environ.get("GAUSS_EXPECT_COMPILED") == "1":
            raise
    return builds


BUILDS = _builds()


def _chunks(inp: FuzzInput) -> list[Any]:
    """Cut the rest of the input into chunks of fuzzed sizes, as bytes, bytearray or memoryview."""
    plan = [(inp.int(0, 96), inp.int(0, 2)) for _ in range(inp.int(0, 12))]
    stream = inp.rest()
    chunks: list[Any] = []
    pos = 0
    for size, kind in [*plan, (len(stream), 0)]:
        piece = stream[pos : pos + size]
        pos += len(piece)
        chunks.append(bytearray(piece) if kind == 1 else memoryview(piece) if kind == 2 else piece)
    return chunks


def _feed(decoder: Any, chunks: list[Any]) -> tuple[list[Any], int]:
    """``(result of each feed, buffered)``; feeding stops at ``FrameTooLarge`` (the connection closes)."""
    results: list[Any] = []
    for chunk in chunks:
        try:
            frames = decoder.feed(chunk)
        except FrameTooLarge:
            results.append(TOO_LARGE)
            assert decoder.buffered == 0, "FrameTooLarge left bytes buffered"
            break
        assert all(type(frame) is bytes for frame in frames), f"frames must be bytes: {frames!r}"
        results.append(frames)
    return results, decoder.buffered


def _agree(kind: str, limit: int, chunks: list[Any]) -> tuple[list[Any], int]:
    outcomes = [_feed(getattr(build, kind)(limit), chunks) for build in BUILDS]
    for build, outcome in zip(BUILDS[1:], outcomes[1:], strict=True):
        assert outcome == outcomes[0], f"{kind}: {BUILDS[0].__name__} gave {outcomes[0]!r}, {build.__name__} {outcome!r}"
    return outcomes[0]


def _line_breaks_limit(line: bytes, limit: int, complete: bool) -> bool:
    """Whether a line (without its ``\\n``) is too long for ``limit``."""
    if complete:
        return len(line[:-1] if line.endswith(b"\r") else line) > limit
    return len(line) > limit and not (len(line) == limit + 1 and line.endswith(b"\r"))


def _run(kind: str, data: bytes) -> tuple[int, list[Any], list[Any], int, bytes]:
    """``(limit, chunks, results of each feed, buffered, the bytes fed)`` of one input, both builds agreeing."""
    inp = FuzzInput(data)
    limit = inp.choice(LIMITS)
    chunks = _chunks(inp)
    results, buffered = _agree(kind, limit, chunks)
    return limit, chunks, results, buffered, b"".join(bytes(c) for c in chunks[: len(results)])


def check_lines(data: bytes) -> None:
    limit, chunks, results, buffered, fed = _run("LineDecoder", data)
    lines = fed.split(b"\n")
    if results and results[-1] == TOO_LARGE:
        before = b"".join(bytes(c) for c in chunks[: len(results) - 1]).split(b"\n")
        assert not any(_line_breaks_limit(line, limit, True) for line in before[:-1]), "raised late"
        assert any(_line_breaks_limit(line, limit, True) for line in lines[:-1]) or _line_breaks_limit(
            lines[-1], limit, False
        ), f"FrameTooLarge without a line over {limit} bytes in {fed!r}"
        return
    frames = [frame for result in results for frame in result]
    consumed, tail = fed[: len(fed) - buffered], fed[len(fed) - buffered :]
    assert b"\n" not in tail, f"a complete line left buffered: {tail!r}"
    assert not consumed or consumed.endswith(b"\n"), f"consumed input ends mid-line: {consumed!r}"
    assert not _line_breaks_limit(tail, limit, False), f"buffered {len(tail)} bytes over the limit {limit}"
    expected = [line[:-1] if line.endswith(b"\r") else line for line in consumed.split(b"\n")[:-1]]
    expected = [line for line in expected if line]
    assert frames == expected, f"frames {frames!r} are not the lines of {consumed!r}"
    assert all(len(frame) <= limit for frame in frames)
    if frames and not any(frame.endswith(b"\r") for frame in frames):
        wires = [build.encode_lines(frames) for build in BUILDS]
        assert all(wire == wires[0] for wire in wires), f"encode_lines differs between builds: {wires!r}"
        for build in BUILDS:
            assert build.LineDecoder(limit).feed(wires[0]) == frames, f"{build.__name__}: re-encoded frames differ"


def check_length_prefixed(data: bytes) -> None:
    limit, chunks, results, buffered, fed = _run("LengthPrefixedDecoder", data)
    # the headers of the stream, in order, as far as they are complete
    headers = []
    pos = 0
    while len(fed) - pos >= 4:
        size = int.from_bytes(fed[pos : pos + 4], "big")
        headers.append((pos, size))
        if size > limit:
            break
        pos += 4 + size
    if results and results[-1] == TOO_LARGE:
        assert headers and headers[-1][1] > limit, f"FrameTooLarge without a length over {limit} in {fed!r}"
        earlier = sum(len(bytes(c)) for c in chunks[: len(results) - 1])
        assert headers[-1][0] + 4 > earlier, "raised late: the oversize header was complete a feed earlier"
        return
    assert not headers or headers[-1][1] <= limit, "an oversize length header did not raise"
    frames = [frame for result in results for frame in result]
    consumed, tail = fed[: len(fed) - buffered], fed[len(fed) - buffered :]
    for build in BUILDS:
        assert build.encode_length_prefixed(frames) == consumed, f"{build.__name__}: frames do not re-encode to the input"
    if len(tail) >= 4:
        assert len(tail) - 4 < int.from_bytes(tail[:4], "big"), f"a complete frame left buffered: {tail!r}"


def _lines_seed(limit_index: int, plan: list[tuple[int, int]], stream: bytes) -> bytes:
    head = bytes([limit_index, len(plan)]) + b"".join(bytes([size, kind]) for size, kind in plan)
    return head + stream


def seeds_lines() -> list[bytes]:
    quote = b'{"symbol":"EURUSD","bid":1.085,"ask":1.0852,"ts_ms":1732406400000}'
    return [
        _lines_seed(11, [(10, 0), (40, 1)], quote + b"\n" + quote + b"\r\n\n" + quote[:20]),
        _lines_seed(3, [(3, 2), (1, 0)], b"abc\r\nabcd\n"),
        _lines_seed(2, [(2, 0), (1, 0)], b"ab\r\r\n"),
        _lines_seed(0, [], b"\n\n\r\n"),
    ]


def seeds_length_prefixed() -> list[bytes]:
    frames = [b"", b"x", b'{"symbol":"EURUSD"}', bytes(range(40))]
    wire = _pycore.encode_length_prefixed(frames)
    return [
        _lines_seed(11, [(3, 0), (9, 1), (20, 2)], wire),
        _lines_seed(4, [(2, 0)], _pycore.encode_length_prefixed([b"12345678"])),
        _lines_seed(0, [], b"\x00\x00\x00\x02ab\x00\x00"),
    ]
