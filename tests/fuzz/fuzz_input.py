"""A fuzz input read as a sequence of choices (what atheris' FuzzedDataProvider does, without atheris).

The targets take their structure (limits, chunk cuts, payload counts) from
the front of the input and the bulk from the rest, so a mutation of one
byte changes one choice: libFuzzer's coverage feedback can steer them, and
the pytest replay of the seeds needs no atheris.
"""

from __future__ import annotations

__all__ = ["FuzzInput"]


class FuzzInput:
    """Consume an input front to back; past its end every choice is the smallest."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        value = self.data[self.pos]
        self.pos += 1
        return value

    def int(self, low: int, high: int) -> int:
        """An integer in ``low ..= high`` from as few bytes as that range needs."""
        span = high - low
        if span <= 0:
            return low
        value = 0
        for _ in range((span.bit_length() + 7) // 8):
            value = (value << 8) | self.byte()
        return low + value % (span + 1)

    def bool(self) -> bool:
        return bool(self.byte() & 1)

    def choice(self, options: tuple | list):  # type: ignore[type-arg, no-untyped-def]
        return options[self.int(0, len(options) - 1)]

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out
