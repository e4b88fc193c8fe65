"""``gzip`` middleware: each payload is one gzip member (RFC 1952)."""

from __future__ import annotations

import gzip as _gzip
import zlib
from typing import Any, Sequence

from gauss_plugins.middleware._common import BombError, decode_each

from gauss.records import Rejected
from gauss.registry import Options

__all__ = ["GzipMiddleware", "create"]

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


class GzipMiddleware:
    name = "gzip"

    def __init__(self, level: int = 6) -> None:
        self.level = level

    def decode(
        self, payloads: Sequence[bytes], max_bytes: int, budget: int | None = None
    ) -> tuple[list[bytes], list[Rejected]]:
        return decode_each(self.name, payloads, max_bytes, inflate, budget)

    def encode(self, payloads: Sequence[bytes]) -> list[bytes]:
        # mtime=0: the same payload always compresses to the same bytes.
        level = self.level
        return [_gzip.compress(payload, compresslevel=level, mtime=0) for payload in payloads]


def create(table: dict[str, Any]) -> GzipMiddleware:
    opts = Options(table)
    middleware = GzipMiddleware(opts.int("level", 6, min=0, max=9))
    opts.done()
    return middleware
