"""``length-prefixed`` framing: u32 big-endian length, then payload (SPEC section 2)."""

from __future__ import annotations

from typing import Sequence

from gauss.core import DEFAULT_MAX_FRAME_BYTES, LengthPrefixedDecoder, encode_length_prefixed
from gauss.wire import FramingConfig

__all__ = ["LengthPrefixedFraming"]


class LengthPrefixedFraming:
    name = "length-prefixed"
    text_only = False
    Config = FramingConfig

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes

    @classmethod
    def from_config(cls, config: FramingConfig) -> LengthPrefixedFraming:
        return cls(config.max_frame_bytes or DEFAULT_MAX_FRAME_BYTES)

    def decoder(self) -> LengthPrefixedDecoder:
        # PERF: frames as spans of the chunk (FrameSpans): no bytes object a frame on the way to the quote parsers.
        return LengthPrefixedDecoder(self.max_frame_bytes, spans=True)

    def encode(self, payloads: Sequence[bytes]) -> bytes:
        return encode_length_prefixed(payloads)
