"""Fuzz targets of every compression middleware (gzip, lz4, snappy; docs/formats.md).

An input is a mode, a per-payload limit (``max_bytes``, the source's
``max_frame_bytes``), a per-call budget when the middleware takes one
(``max_inflate_bytes``), then payloads separated by ``0x1e``. Invariants:

- round trip: ``decode(encode(payloads))`` gives back, in order, every
  payload of at most ``max_bytes`` and rejects each longer one (the bomb
  guard) with a reason naming the middleware; with a budget, it raises
  ``InflateBudgetExceeded`` exactly when the payloads accepted so far plus
  the next one pass the budget, and never inflates past it;
- garbage: ``decode`` never raises anything else; it returns a payload of at
  most ``max_bytes`` that the compression library itself decodes the same
  way, or rejects the payload with a reason naming the middleware; an input
  the library inflates past ``max_bytes`` is always rejected (as a bomb, or
  as corrupt where Gauss is stricter than the library, e.g. zero padding
  between gzip members).
"""

from __future__ import annotations

import gzip as std_gzip
import inspect
from typing import Any, Callable

import lz4.frame
import snappy as std_snappy
from fuzz_input import FuzzInput
from gauss_plugins.middleware import snappy

from gauss import errors
from gauss.registry import create

__all__ = ["MIDDLEWARE", "check_middleware", "seeds"]

SEPARATOR = b"\x1e"
MIDDLEWARE: dict[str, Any] = {name: create("middleware", name) for name in ("gzip", "lz4", "snappy")}
LIMITS = (0, 1, 8, 64, 1024, 65_536, 1 << 20)
BUDGETS = (None, 0, 16, 1024, 65_536, 1 << 20)
BudgetExceeded: type[Exception] | None = getattr(errors, "InflateBudgetExceeded", None)


def _takes_budget(middleware: Any) -> bool:
    return "budget" in inspect.signature(middleware.decode).parameters


def _reference(name: str, raw: bytes) -> bytes | None:
    """What the compression library makes of ``raw`` (None: it refuses it)."""
    try:
        if name == "gzip":
            return std_gzip.decompress(raw)
        if name == "lz4":
            return bytes(lz4.frame.decompress(raw))
        return bytes(std_snappy.uncompress(raw))
    except Exception:  # noqa: BLE001 - each library raises its own kinds
        return None


def check_middleware(name: str) -> Callable[[bytes], None]:
    middleware = MIDDLEWARE[name]
    with_budget = _takes_budget(middleware) and BudgetExceeded is not None

    def decode(payloads: list[bytes], max_bytes: int, budget: int | None) -> tuple[list[bytes], list[Any]]:
        if with_budget:
            return middleware.decode(payloads, max_bytes, budget)  # type: ignore[no-any-return]
        return middleware.decode(payloads, max_bytes)  # type: ignore[no-any-return]

    def check(data: bytes) -> None:
        inp = FuzzInput(data)
        garbage = inp.bool()
        max_bytes = inp.choice(LIMITS)
        budget = inp.choice(BUDGETS) if with_budget else None
        payloads = inp.rest().split(SEPARATOR)[:8]
        if garbage:
            _check_garbage(name, decode, payloads, max_bytes, budget)
        else:
            _check_round_trip(name, middleware, decode, payloads, max_bytes, budget)

    check.__name__ = f"check_{name}"
    return check


def _check_round_trip(name: str, middleware: Any, decode: Any, payloads: list[bytes], max_bytes: int, budget: int | None) -> None:
    wires = middleware.encode(payloads)
    assert len(wires) == len(payloads) and all(type(w) is bytes for w in wires), "encode lost a payload"
    # the expected outcome, payload by payload
    accepted: list[bytes] = []
    bombs: list[bytes] = []
    remaining = budget
    raises = False
    for payload, wire in zip(payloads, wires, strict=True):
        limit = max_bytes if remaining is None else min(max_bytes, max(remaining, 0))
        if len(payload) <= limit:
            accepted.append(payload)
            if remaining is not None:
                remaining -= len(payload)
        elif limit < max_bytes:
            raises = True
            break
        else:
            bombs.append(wire)
    try:
        out, rejected = decode(wires, max_bytes, budget)
    except Exception as exc:
        if BudgetExceeded is not None and isinstance(exc, BudgetExceeded):
            assert raises, f"{name}: InflateBudgetExceeded although {sum(map(len, payloads))} bytes fit {budget}"
            return
        raise
    assert not raises, f"{name}: payloads of {[len(p) for p in payloads]} bytes passed the budget {budget}"
    assert out == accepted, f"{name}: round trip gave {out!r}, not {accepted!r}"
    assert [r.raw for r in rejected] == bombs, f"{name}: rejected {rejected!r}; over {max_bytes} bytes: {bombs!r}"
    for r in rejected:
        assert r.reason.startswith(f"{name}: ") and "max" in r.reason, f"{name}: bomb rejected with {r.reason!r}"
    if budget is not None:
        assert sum(map(len, out)) <= budget, f"{name}: inflated {sum(map(len, out))} bytes past the budget {budget}"


def _check_garbage(name: str, decode: Any, payloads: list[bytes], max_bytes: int, budget: int | None) -> None:
    for raw in payloads:
        try:
            out, rejected = decode([raw], max_bytes, budget)
        except Exception as exc:
            if BudgetExceeded is not None and isinstance(exc, BudgetExceeded):
                assert budget is not None and budget < max_bytes, f"{name}: budget {budget} raised for one payload"
                continue
            raise
        assert len(out) + len(rejected) == 1, f"{name}: {raw!r} gave {out!r} and {rejected!r}"
        reference = _reference(name, raw)
        if out:
            assert len(out[0]) <= max_bytes, f"{name}: inflated {len(out[0])} bytes past max_bytes {max_bytes}"
            assert reference == out[0], f"{name}: accepted {raw!r} as {out[0]!r}; the library says {reference!r}"
            if name == "snappy":
                assert len(out[0]) == snappy.uncompressed_length(raw)
        else:
            # (a bomb may be refused as corrupt: gzip.decompress skips zero padding between members, Gauss does not)
            assert rejected[0].raw == raw and rejected[0].reason.startswith(f"{name}: "), f"{name}: {rejected[0]!r}"
        if reference is not None and len(reference) > max_bytes:
            assert not out, f"{name}: accepted {raw!r}, which inflates to {len(reference)} bytes, past {max_bytes}"


def seeds(name: str) -> list[bytes]:
    middleware = MIDDLEWARE[name]
    quote = b'{"symbol":"EURUSD","bid":1.085,"ask":1.0852,"ts_ms":1732406400000}'
    payloads = [quote, b"", b"x" * 2000, bytes(range(256))]
    wires = middleware.encode(payloads)
    out = [b"\x00\x05\x03" + SEPARATOR.join(payloads), b"\x00\x04\x01" + SEPARATOR.join(payloads)]
    out += [b"\x01\x06\x00" + wire for wire in wires]
    out += [b"\x01\x02\x00" + SEPARATOR.join(wires)]
    return out
