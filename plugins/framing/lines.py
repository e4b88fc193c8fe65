"""``lines`` framing: payload, then ``\\n`` (SPEC section 2). Text codecs only."""

from __future__ import annotations

from typing import Sequence

from gauss.core import DEFAULT_MAX_FRAME_BYTES, LineDecoder, encode_lines
from gauss.wire import FramingConfig

__all__ = ["LinesFraming"]


class LinesFraming:
    name = "lines"
    text_only = True
    Config = FramingConfig

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes

    @classmethod
    def from_config(cls, config: FramingConfig) -> LinesFraming:
        return cls(config.max_frame_bytes or DEFAULT_MAX_FRAME_BYTES)

    def decoder(self) -> LineDecoder:
        # PERF: frames as spans of the chunk (FrameSpans): no bytes object a frame on the way to the quote parsers.
        return LineDecoder(self.max_frame_bytes, spans=True)

    def encode(self, payloads: Sequence[bytes]) -> bytes:
        return encode_lines(payloads)
