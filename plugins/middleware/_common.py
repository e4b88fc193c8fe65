"""What the compression middleware share: per-payload decode with a size limit and a budget.

Compression is per payload (one record per frame, SPEC section 2), so it
pays only for payloads of a few hundred bytes or more: a 70-byte quote
gains nothing and costs a header (see docs/formats.md). A payload that is
corrupt, or that would inflate past the source's ``max_frame_bytes``, is
rejected without being expanded (decompression-bomb guard).

A per-payload limit alone does not bound a read: one 256 KiB read of 248
small gzip frames inflated to 248 MiB and held the loop for 0.68 s
(issue 11). So a call may also carry a ``budget``, the bytes that all its
payloads together may inflate to; a payload that would pass it is not
expanded and :class:`~gauss.errors.InflateBudgetExceeded` is raised (the
source closes that connection). And a call yields to other greenlets after
every :data:`PAUSE_BYTES` it inflates: zlib inflates zeros at 3-6 ms per
MiB here, so a whole 4 MiB budget in one go held the loop for 30-50 ms on
a loaded machine.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import gevent

from gauss.errors import GaussError, InflateBudgetExceeded
from gauss.records import Rejected

__all__ = ["BombError", "Decompressor", "decode_each", "PAUSE_BYTES"]

PAUSE_BYTES = 1 << 20
"""Bytes inflated between two yields to the other greenlets."""


class BombError(GaussError, ValueError):
    """The payload would inflate past the limit."""


def decode_each(
    name: str,
    payloads: Sequence[bytes],
    max_bytes: int,
    inflate: Callable[[bytes, int], bytes],
    budget: int | None = None,
) -> tuple[list[bytes], list[Rejected]]:
    """Apply ``inflate(payload, limit)`` to each payload; collect the failures.

    ``limit`` is ``max_bytes``, or less where ``budget`` (the bytes left for
    the whole call) is smaller; a payload refused only because of the budget
    raises :class:`InflateBudgetExceeded`.
    """
    out: list[bytes] = []
    rejected: list[Rejected] = []
    remaining = max_bytes if budget is None else budget
    since_pause = 0
    for payload in payloads:
        limit = max_bytes if budget is None or remaining >= max_bytes else max(remaining, 0)
        try:
            data = inflate(payload, limit)
        except BombError as exc:
            if budget is not None and limit < max_bytes:
                raise InflateBudgetExceeded(
                    f"{name}: the payloads of one read inflate past max_inflate_bytes ({budget}); "
                    f"{budget - remaining} bytes inflated before this one"
                ) from None
            rejected.append(Rejected(bytes(payload), f"{name}: {exc}"))
            continue
        except Exception as exc:  # noqa: BLE001 - each library raises its own kinds on corrupt input
            detail = str(exc) or type(exc).__name__
            rejected.append(Rejected(bytes(payload), f"{name}: corrupt compressed payload: {detail}"))
            continue
        out.append(data)
        if budget is not None:
            remaining -= len(data)
        since_pause += len(data)
        if since_pause >= PAUSE_BYTES:
            # PERF: small payloads (quotes) reach this once per MiB: nothing next to inflating it.
            gevent.sleep(0)
            since_pause = 0
    return out, rejected


class Decompressor:
    """The ``decode`` and ``from_config`` every compression middleware shares; each has its own ``inflate``."""

    name: ClassVar[str]
    inflate: ClassVar[Callable[[bytes, int], bytes]]
    """``inflate(payload, limit)``: the payload expanded, or :class:`BombError` past ``limit``."""

    @classmethod
    def from_config(cls, config: Any) -> Any:
        return cls(**config.options())

    def decode(
        self, payloads: Sequence[bytes], max_bytes: int, budget: int | None = None
    ) -> tuple[list[bytes], list[Rejected]]:
        return decode_each(self.name, payloads, max_bytes, type(self).inflate, budget)
