"""``lz4`` middleware: each payload is one LZ4 frame (the frame format, not raw blocks)."""

from __future__ import annotations

from typing import Annotated, Sequence

import lz4.frame
import msgspec
from gauss_plugins.middleware._common import BombError, Decompressor

from gauss.registry import PluginConfig

__all__ = ["Lz4Middleware", "Lz4Config"]


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
