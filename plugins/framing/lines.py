"""``lines`` framing: payload, then ``\\n`` (SPEC section 2). Text codecs only."""

from __future__ import annotations

from typing import Any, Sequence

from gauss.core import DEFAULT_MAX_FRAME_BYTES, LineDecoder, encode_lines
from gauss.registry import Options

__all__ = ["LinesFraming", "create"]


class LinesFraming:
    name = "lines"
    text_only = True

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes

    def decoder(self) -> LineDecoder:
        return LineDecoder(self.max_frame_bytes)

    def encode(self, payloads: Sequence[bytes]) -> bytes:
        return encode_lines(payloads)


def create(table: dict[str, Any]) -> LinesFraming:
    opts = Options(table)
    framing = LinesFraming(opts.int("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES, min=1))
    opts.done()
    return framing
