"""Known, reported defects that a fuzz target recognises instead of failing on (counted, never hidden).

A target that meets an input breaking an invariant because of a defect
listed here calls :func:`hit` and returns; the runner prints each issue's
count with the target's executions. Each entry says exactly which input
class it covers, so anything else still fails. Remove an entry once its
defect is fixed: the target then checks the invariant again.
"""

from __future__ import annotations

import json
import os

__all__ = ["ISSUES", "hit", "counts"]

ISSUES = {
    "json-fused-utf8": (
        "plugins/format/json.py decode_quotes: the typed msgspec decoder skips fields it does not know "
        "without validating their UTF-8, so a quote with invalid UTF-8 in an unknown field's name or string "
        "value is accepted by the fused path while decode() rejects it as bad JSON (QuoteCodec protocol: "
        "both must give the same result; SPEC section 6: bad UTF-8 is dropped and counted)"
    ),
    "ws-control-mid-message": (
        "gauss/http/frames.py FrameReader.read_message returns a control frame (ping, pong, close) that "
        "arrives between the fragments of a message as its own Message and forgets the message in progress, "
        "so the next continuation frame raises ConnectionGone('unexpected opcode 0') and the connection is "
        "dropped; RFC 6455 section 5.4 allows control frames in the middle of a fragmented message"
    ),
    "ws-reserved-opcode": (
        "gauss/http/frames.py FrameReader.read_message returns a frame of a reserved control opcode "
        "(0xB..0xF) as a Message, which WebSocketSession.run then ignores; RFC 6455 section 5.2 says an "
        "unknown opcode must fail the connection (reserved data opcodes 0x3..0x7 already do: ConnectionGone)"
    ),
}

_counts: dict[str, int] = {}


def hit(issue: str) -> None:
    """Count one input that meets ``issue``; the runner reads the counts from ``$GAUSS_FUZZ_KNOWN``."""
    assert issue in ISSUES, issue
    n = _counts[issue] = _counts.get(issue, 0) + 1
    path = os.environ.get("GAUSS_FUZZ_KNOWN")
    if path and n & (n - 1) == 0:  # 1, 2, 4, 8, ...: cheap, and the order of magnitude is what matters
        with open(path, "w", encoding="utf-8") as out:
            json.dump(_counts, out)


def counts() -> dict[str, int]:
    return dict(_counts)
