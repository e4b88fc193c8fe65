"""The ``gzip``, ``lz4`` and ``snappy`` middleware: round trip, corrupt data, bombs."""

from __future__ import annotations

import gzip
import os
import time
import zlib

import lz4.frame
import pytest
import snappy

from gauss.errors import ConfigError, InflateBudgetExceeded
from gauss.protocols import Middleware
from gauss.registry import create

NAMES = ["gzip", "lz4", "snappy"]
MAX = 1 << 20


@pytest.fixture(params=NAMES)
def middleware(request: pytest.FixtureRequest) -> Middleware:
    return create("middleware", request.param)


def test_is_a_middleware(middleware: Middleware) -> None:
    assert isinstance(middleware, Middleware)


def test_round_trip_keeps_each_payload(middleware: Middleware) -> None:
    payloads = [b"", b"x", b'{"symbol":"EURUSD","bid":1.085}', os.urandom(5000), b"abc" * 10000]
    encoded = middleware.encode(payloads)
    assert len(encoded) == len(payloads)
    assert encoded[4] != payloads[4]
    decoded, rejected = middleware.decode(encoded, MAX)
    assert rejected == []
    assert decoded == payloads


def test_large_repetitive_payload_shrinks(middleware: Middleware) -> None:
    payload = b'{"symbol":"EURUSD","bid":1.085,"ask":1.0852},' * 100
    (encoded,) = middleware.encode([payload])
    assert len(encoded) < len(payload) // 4


def test_corrupt_payload_is_rejected_and_others_kept(middleware: Middleware) -> None:
    good = middleware.encode([b"first", b"second" * 50])
    truncated = good[1][: len(good[1]) // 2]
    garbage = b"\x00\xffnot compressed at all\x13"
    decoded, rejected = middleware.decode([good[0], truncated, garbage, good[1]], MAX)
    assert decoded == [b"first", b"second" * 50]
    assert [r.raw for r in rejected] == [truncated, garbage]
    assert all(r.reason.startswith(middleware.name + ":") for r in rejected)


def test_payload_inflating_exactly_to_the_limit_is_accepted(middleware: Middleware) -> None:
    payload = b"z" * 4096
    decoded, rejected = middleware.decode(middleware.encode([payload]), 4096)
    assert rejected == [] and decoded == [payload]


def test_payload_one_byte_past_the_limit_is_refused(middleware: Middleware) -> None:
    decoded, rejected = middleware.decode(middleware.encode([b"z" * 4097]), 4096)
    assert decoded == []
    assert "max_frame_bytes" in rejected[0].reason


BOMB_SIZE = 64 << 20  # 64 MiB of zeros: a few KiB compressed


@pytest.fixture(scope="module")
def zeros() -> bytes:
    return bytes(BOMB_SIZE)


@pytest.mark.parametrize(
    ("name", "compress"),
    [
        ("gzip", lambda data: gzip.compress(data, mtime=0)),
        ("lz4", lambda data: lz4.frame.compress(data)),
        ("snappy", lambda data: snappy.compress(data)),
    ],
)
def test_decompression_bomb_is_refused_not_expanded(name: str, compress, zeros: bytes) -> None:
    bomb = compress(zeros)
    assert len(bomb) < BOMB_SIZE // 20
    middleware = create("middleware", name)
    decoded, rejected = middleware.decode([bomb], MAX)
    assert decoded == []
    assert len(rejected) == 1 and "max_frame_bytes" in rejected[0].reason


def test_payloads_within_the_budget_are_all_expanded(middleware: Middleware) -> None:
    payloads = [bytes(1000)] * 8
    decoded, rejected = middleware.decode(middleware.encode(payloads), MAX, 8000)
    assert decoded == payloads and rejected == []


def test_a_call_past_its_budget_raises_before_expanding_the_payload_that_passes_it(middleware: Middleware) -> None:
    encoded = middleware.encode([bytes(1000)] * 8)
    with pytest.raises(InflateBudgetExceeded, match=r"max_inflate_bytes \(7999\); 7000 bytes inflated before this one"):
        middleware.decode(encoded, MAX, 7999)


def test_a_bomb_frame_within_the_budget_is_only_rejected(middleware: Middleware) -> None:
    # Past max_frame_bytes but not past the read's budget: the frame is bad input, not a reason to close.
    big, small = middleware.encode([bytes(5000), b"ok"])
    decoded, rejected = middleware.decode([big, small], 4096, 1 << 20)
    assert decoded == [b"ok"] and "max_frame_bytes" in rejected[0].reason


@pytest.mark.parametrize("name", NAMES)
def test_one_read_of_small_bombs_stops_at_the_budget_quickly(name: str) -> None:
    # Issue 11: 248 frames of 1 MiB zeros each fit in one 256 KiB read and inflated to 248 MiB.
    middleware = create("middleware", name)
    frames = middleware.encode([bytes(MAX)]) * 248
    started = time.perf_counter()
    with pytest.raises(InflateBudgetExceeded):
        middleware.decode(frames, MAX, 8 * MAX)
    assert time.perf_counter() - started < 0.5  # 8 MiB inflated, not 248 (a loaded machine: generous)


def test_gzip_accepts_several_members_within_the_limit() -> None:
    payload = gzip.compress(b"abc", mtime=0) + gzip.compress(b"def", mtime=0)
    decoded, rejected = create("middleware", "gzip").decode([payload], MAX)
    assert decoded == [b"abcdef"] and rejected == []


def test_gzip_refuses_bomb_spread_over_members() -> None:
    member = gzip.compress(b"\0" * 600, mtime=0)
    decoded, rejected = create("middleware", "gzip").decode([member * 2], 1000)
    assert decoded == [] and "max_frame_bytes" in rejected[0].reason


def test_gzip_refuses_raw_zlib_stream() -> None:
    decoded, rejected = create("middleware", "gzip").decode([zlib.compress(b"abc")], MAX)
    assert decoded == [] and len(rejected) == 1


def test_snappy_refuses_lying_length_header() -> None:
    honest = snappy.compress(b"hello world")
    lying = bytes([len(b"hello world") + 3]) + honest[1:]
    decoded, rejected = create("middleware", "snappy").decode([lying], MAX)
    assert decoded == [] and len(rejected) == 1


def test_lz4_refuses_trailing_bytes_after_frame() -> None:
    decoded, rejected = create("middleware", "lz4").decode([lz4.frame.compress(b"abc") + b"junk"], MAX)
    assert decoded == [] and "truncated or invalid LZ4 frame" in rejected[0].reason


def test_lz4_takes_frames_back_to_back_as_one_payload_like_gzip_members() -> None:
    """The frame format allows concatenated frames (the lz4 tool writes them); a payload of two is their joined bytes."""
    middleware = create("middleware", "lz4")
    decoded, rejected = middleware.decode([lz4.frame.compress(b"hello ") + lz4.frame.compress(b"world")], MAX)
    assert decoded == [b"hello world"] and rejected == []
    decoded, rejected = middleware.decode([lz4.frame.compress(b"x" * 600) + lz4.frame.compress(b"y" * 600)], 1_000)
    assert decoded == [] and "inflates past" in rejected[0].reason  # the limit holds across the frames


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"type": "gzip", "level": 10}, "level: Expected int <= 9"),
        ({"type": "gzip", "level": "9"}, "level: Expected int, got str"),
        ({"type": "lz4", "level": -2}, "level: Expected int >= -1"),
        ({"type": "lz4", "level": 17}, "level: Expected int <= 16"),
        ({"type": "snappy", "level": 1}, "level: unknown option"),
    ],
)
def test_bad_option_is_a_config_error(table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create("middleware", table)


@pytest.mark.parametrize(("table", "level"), [({"type": "gzip"}, 6), ({"type": "gzip", "level": 0}, 0), ({"type": "lz4"}, 0), ({"type": "lz4", "level": 16}, 16)])
def test_level_reaches_the_middleware(table: dict, level: int) -> None:
    assert create("middleware", table).level == level
