"""What the compression middleware share: per-payload decode with a size limit.

Compression is per payload (one record per frame, SPEC section 2), so it
pays only for payloads of a few hundred bytes or more: a 70-byte quote
gains nothing and costs a header (see docs/formats.md). A payload that is
corrupt, or that would inflate past the source's ``max_frame_bytes``, is
rejected without being expanded (decompression-bomb guard).
"""

from __future__ import annotations

from typing import Callable, Sequence

from gauss.records import Rejected

__all__ = ["BombError", "decode_each"]


class BombError(ValueError):
    """The payload would inflate past the limit."""


def decode_each(
    name: str, payloads: Sequence[bytes], max_bytes: int, inflate: Callable[[bytes, int], bytes]
) -> tuple[list[bytes], list[Rejected]]:
    """Apply ``inflate(payload, max_bytes)`` to each payload; collect the failures."""
    out: list[bytes] = []
    rejected: list[Rejected] = []
    for payload in payloads:
        try:
            out.append(inflate(payload, max_bytes))
        except BombError as exc:
            rejected.append(Rejected(bytes(payload), f"{name}: {exc}"))
        except Exception as exc:  # noqa: BLE001 - each library raises its own kinds on corrupt input
            detail = str(exc) or type(exc).__name__
            rejected.append(Rejected(bytes(payload), f"{name}: corrupt compressed payload: {detail}"))
    return out, rejected
