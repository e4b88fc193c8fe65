"""``lz4`` middleware: each payload is one LZ4 frame (the frame format, not raw blocks)."""

from __future__ import annotations

from typing import Annotated, Sequence

import lz4.frame
import msgspec
from gauss_plugins.middleware._common import BombError, Decompressor

from gauss.registry import PluginConfig

__all__ = ["Lz4Middleware", "Lz4Config"]


def inflate(payload: bytes, max_bytes: int) -> bytes:
    """Decompress one payload to at most ``max_bytes``: one LZ4 frame, or several back to back (as ``lz4`` concatenates them)."""
    parts: list[bytes] = []
    room = max_bytes
    rest = payload
    while True:
        decompressor = lz4.frame.LZ4FrameDecompressor()
        out = decompressor.decompress(rest, max_length=room + 1)
        if len(out) > room or not decompressor.needs_input:
            raise BombError(f"inflates past max_frame_bytes ({max_bytes})")
        if not decompressor.eof:
            raise ValueError("truncated or invalid LZ4 frame")
        parts.append(out)
        room -= len(out)
        rest = decompressor.unused_data
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)


class Lz4Config(PluginConfig, frozen=True, kw_only=True):
    """The options of the ``lz4`` middleware."""

    level: Annotated[int, msgspec.Meta(ge=-1, le=16)] = 0
    """The compression level of what a sink writes (0: the fast default, 3-16: high compression)."""


class Lz4Middleware(Decompressor):
    name = "lz4"
    inflate = staticmethod(inflate)
    Config = Lz4Config

    def __init__(self, level: int = 0) -> None:
        self.level = level

    def encode(self, payloads: Sequence[bytes]) -> list[bytes]:
        compress = lz4.frame.compress
        level = self.level
        return [compress(payload, compression_level=level, store_size=True) for payload in payloads]
