"""``lz4`` middleware: each payload is one LZ4 frame (the frame format, not raw blocks)."""

from __future__ import annotations

from typing import Any, Sequence

import lz4.frame
from gauss_plugins.middleware._common import BombError, decode_each

from gauss.records import Rejected
from gauss.registry import Options

__all__ = ["Lz4Middleware", "create"]


def inflate(payload: bytes, max_bytes: int) -> bytes:
    """Decompress one LZ4 frame to at most ``max_bytes``."""
    decompressor = lz4.frame.LZ4FrameDecompressor()
    out = decompressor.decompress(payload, max_length=max_bytes + 1)
    if len(out) > max_bytes or not decompressor.needs_input:
        raise BombError(f"inflates past max_frame_bytes ({max_bytes})")
    if not decompressor.eof:
        raise ValueError("truncated or invalid LZ4 frame")
    if decompressor.unused_data:
        raise ValueError(f"{len(decompressor.unused_data)} bytes after the LZ4 frame")
    return out  # type: ignore[no-any-return]


class Lz4Middleware:
    name = "lz4"

    def __init__(self, level: int = 0) -> None:
        self.level = level

    def decode(
        self, payloads: Sequence[bytes], max_bytes: int, budget: int | None = None
    ) -> tuple[list[bytes], list[Rejected]]:
        return decode_each(self.name, payloads, max_bytes, inflate, budget)

    def encode(self, payloads: Sequence[bytes]) -> list[bytes]:
        compress = lz4.frame.compress
        level = self.level
        return [compress(payload, compression_level=level, store_size=True) for payload in payloads]


def create(table: dict[str, Any]) -> Lz4Middleware:
    opts = Options(table)
    middleware = Lz4Middleware(opts.int("level", 0, min=-1, max=16))
    opts.done()
    return middleware
