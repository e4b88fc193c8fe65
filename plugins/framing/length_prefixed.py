"""``length-prefixed`` framing: u32 big-endian length, then payload (SPEC section 2)."""

from __future__ import annotations

from typing import Any, Sequence

from gauss.core import DEFAULT_MAX_FRAME_BYTES, LengthPrefixedDecoder, encode_length_prefixed
from gauss.registry import Options

__all__ = ["LengthPrefixedFraming", "create"]


class LengthPrefixedFraming:
    name = "length-prefixed"
    text_only = False

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes

    def decoder(self) -> LengthPrefixedDecoder:
        return LengthPrefixedDecoder(self.max_frame_bytes)

    def encode(self, payloads: Sequence[bytes]) -> bytes:
        return encode_length_prefixed(payloads)


def create(table: dict[str, Any]) -> LengthPrefixedFraming:
    opts = Options(table)
    framing = LengthPrefixedFraming(opts.int("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES, min=1))
    opts.done()
    return framing
