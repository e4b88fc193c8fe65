"""``snappy`` middleware: each payload is one raw Snappy block (SPEC section 2)."""

from __future__ import annotations

from typing import Sequence

import snappy as _snappy
from gauss_plugins.middleware._common import BombError, Decompressor

from gauss.registry import PluginConfig

__all__ = ["SnappyMiddleware", "SnappyConfig", "uncompressed_length"]


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


class SnappyConfig(PluginConfig, frozen=True, kw_only=True):
    """The ``snappy`` middleware takes no options."""


class SnappyMiddleware(Decompressor):
    name = "snappy"
    inflate = staticmethod(inflate)
    Config = SnappyConfig

    def encode(self, payloads: Sequence[bytes]) -> list[bytes]:
        compress = _snappy.compress
        return [bytes(compress(payload)) for payload in payloads]
