"""``snappy`` middleware: each payload is one raw Snappy block (SPEC section 2)."""

from __future__ import annotations

from typing import Any, Sequence

import snappy as _snappy
from gauss_plugins.middleware._common import BombError, decode_each

from gauss.records import Rejected
from gauss.registry import Options

__all__ = ["SnappyMiddleware", "create", "uncompressed_length"]


def uncompressed_length(payload: bytes) -> int:
    """The length a raw Snappy block declares (its leading varint), read before expanding."""
    length = 0
    for index in range(min(len(payload), 5)):
        byte = payload[index]
        length |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return length
    raise ValueError("bad Snappy length header")


def inflate(payload: bytes, max_bytes: int) -> bytes:
    declared = uncompressed_length(payload)
    if declared > max_bytes:
        raise BombError(f"declares {declared} bytes, past max_frame_bytes ({max_bytes})")
    out = _snappy.uncompress(payload)
    if len(out) != declared:
        raise ValueError(f"inflated to {len(out)} bytes, header says {declared}")
    return bytes(out)


class SnappyMiddleware:
    name = "snappy"

    def decode(
        self, payloads: Sequence[bytes], max_bytes: int, budget: int | None = None
    ) -> tuple[list[bytes], list[Rejected]]:
        return decode_each(self.name, payloads, max_bytes, inflate, budget)

    def encode(self, payloads: Sequence[bytes]) -> list[bytes]:
        compress = _snappy.compress
        return [bytes(compress(payload)) for payload in payloads]


def create(table: dict[str, Any]) -> SnappyMiddleware:
    opts = Options(table)
    opts.done()
    return SnappyMiddleware()
