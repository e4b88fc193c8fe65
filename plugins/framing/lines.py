"""``lines`` framing: payload, then ``\\n`` (SPEC section 2). Text codecs only."""

from __future__ import annotations

import logging
from typing import Sequence

from gauss.core import DEFAULT_MAX_FRAME_BYTES, LineDecoder, encode_lines
from gauss.ratelimit import RateLimitedLog
from gauss.wire import FramingConfig

__all__ = ["LinesFraming"]

log = logging.getLogger(__name__)


class LinesFraming:
    name = "lines"
    text_only = True
    Config = FramingConfig

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.skipped = 0
        """Payloads not sent because they hold a newline (a CSV row of a symbol with one, say)."""
        self._skip_log = RateLimitedLog(log, level=logging.ERROR)

    @classmethod
    def from_config(cls, config: FramingConfig) -> LinesFraming:
        return cls(config.max_frame_bytes or DEFAULT_MAX_FRAME_BYTES)

    def decoder(self) -> LineDecoder:
        # PERF: frames as spans of the chunk (FrameSpans): no bytes object a frame on the way to the quote parsers.
        return LineDecoder(self.max_frame_bytes, spans=True)

    def encode(self, payloads: Sequence[bytes]) -> bytes:
        """The payloads as lines; one holding a newline cannot be a line: it is skipped and logged, the rest sent."""
        try:
            return encode_lines(payloads)
        except ValueError:
            whole = [payload for payload in payloads if b"\n" not in payload]
            self.skipped += len(payloads) - len(whole)
            self._skip_log(
                "lines framing: %d payloads hold a newline and cannot be lines; skipped (%d so far), e.g. %.200r",
                len(payloads) - len(whole), self.skipped, next(p for p in payloads if b"\n" in p),
            )  # fmt: skip
            return encode_lines(whole)
