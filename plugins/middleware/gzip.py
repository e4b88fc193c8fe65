"""``gzip`` middleware: each payload is one gzip member (RFC 1952)."""

from __future__ import annotations

import gzip as _gzip
import zlib
from typing import Annotated, Sequence

import msgspec
from gauss_plugins.middleware._common import BombError, Decompressor

from gauss.registry import PluginConfig

__all__ = ["GzipMiddleware", "GzipConfig"]

_GZIP_WBITS = 16 + zlib.MAX_WBITS


def inflate(payload: bytes, max_bytes: int) -> bytes:
    """Decompress one payload (one or more gzip members) to at most ``max_bytes``."""
    parts: list[bytes] = []
    budget = max_bytes
    data = payload
    while True:
        decompressor = zlib.decompressobj(_GZIP_WBITS)
        chunk = decompressor.decompress(data, budget + 1)
        if len(chunk) > budget or decompressor.unconsumed_tail:
            raise BombError(f"inflates past max_frame_bytes ({max_bytes})")
        if not decompressor.eof:
            raise ValueError("truncated gzip data")
        parts.append(chunk)
        budget -= len(chunk)
        data = decompressor.unused_data
        if not data:
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


class GzipConfig(PluginConfig, frozen=True, kw_only=True):
    """The options of the ``gzip`` middleware."""

    level: Annotated[int, msgspec.Meta(ge=0, le=9)] = 6
    """The compression level of what a sink writes (0: none, 9: smallest)."""


class GzipMiddleware(Decompressor):
    name = "gzip"
    inflate = staticmethod(inflate)
    Config = GzipConfig

    def __init__(self, level: int = 6) -> None:
        self.level = level

    def encode(self, payloads: Sequence[bytes]) -> list[bytes]:
        # mtime=0: the same payload always compresses to the same bytes.
        level = self.level
        return [_gzip.compress(payload, compresslevel=level, mtime=0) for payload in payloads]
