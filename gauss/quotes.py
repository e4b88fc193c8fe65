"""The quote checks of SPEC section 1, applied where quotes enter a topic.

A quote topic keeps exactly the six quote fields, as numbers of the right
type. A quote is rejected when a field has the wrong type, its symbol is
empty, bid or ask is not a finite positive number, or its ``ts_ms`` lies
more than ``max_future_ms`` ahead of the server's clock (one quote dated
2099 must not push a symbol's candles forward and make every real quote
late).
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import ujson

from gauss.core import QUOTE_FIELDS, TopicRecord
from gauss.records import Rejected

__all__ = ["QuoteCheck", "QUOTE_FIELDS", "DEFAULT_MAX_FUTURE_MS", "as_int_ts"]

DEFAULT_MAX_FUTURE_MS = 60_000

_isfinite = math.isfinite


def as_int_ts(value: Any) -> int:
    """An integral timestamp from a JSON number (``1.0`` yes, ``1.5`` no)."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise ValueError("ts_ms must be an integer, got a boolean")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return int(value)
    raise ValueError(f"ts_ms must be an integer, got {value!r}")


def _number(data: Any, name: str, default: float | None = None) -> float:
    value = data.get(name, default) if default is not None else data[name]
    kind = type(value)
    if kind is float:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{name} must be a number, got {value!r}")


class QuoteCheck:
    """Normalise decoded quote records and reject the bad ones.

    ``max_future_ms=None`` lifts the clock check; ``check_prices=False``
    lifts the finite-positive price check. Missing sizes count as 0.
    """

    def __init__(self, max_future_ms: int | None = DEFAULT_MAX_FUTURE_MS, check_prices: bool = True) -> None:
        self.max_future_ms = max_future_ms
        self.check_prices = check_prices

    def horizon(self) -> int | None:
        """The latest ``ts_ms`` accepted now (None when the clock check is lifted)."""
        return None if self.max_future_ms is None else int(time.time() * 1000) + self.max_future_ms

    def check(self, records: Sequence[TopicRecord]) -> tuple[list[TopicRecord], list[Rejected]]:
        """Return the good records (``data`` reduced to the six fields) and the rejects.

        A reject's ``raw`` is the decoded payload re-encoded as JSON.
        """
        horizon = self.horizon()
        check_prices = self.check_prices
        good: list[TopicRecord] = []
        bad: list[Rejected] = []
        for record in records:
            try:
                data = record.data
                symbol = record.key
                if type(symbol) is not str or not symbol:
                    raise ValueError("symbol must be a non-empty string")
                bid = _number(data, "bid")
                ask = _number(data, "ask")
                if check_prices and not (_isfinite(bid) and _isfinite(ask) and bid > 0.0 and ask > 0.0):
                    raise ValueError(f"bid and ask must be finite positive numbers, got bid={bid!r} ask={ask!r}")
                bid_size = _number(data, "bid_size", 0.0)
                ask_size = _number(data, "ask_size", 0.0)
                ts = as_int_ts(record.ts_ms)
                if ts == 0:
                    raise ValueError("ts_ms is missing")
                if horizon is not None and ts > horizon:
                    raise ValueError(f"ts_ms {ts} is more than {self.max_future_ms} ms in the future")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
                bad.append(Rejected(_raw(record), f"rejected quote: {reason}"))
                continue
            good.append(
                TopicRecord(
                    ts,
                    symbol,
                    {
                        "symbol": symbol,
                        "bid": bid,
                        "ask": ask,
                        "bid_size": bid_size,
                        "ask_size": ask_size,
                        "ts_ms": ts,
                    },
                )
            )
        return good, bad


def _raw(record: TopicRecord) -> bytes:
    try:
        return ujson.dumps(record.data, ensure_ascii=False).encode()
    except (TypeError, ValueError, OverflowError):
        return repr(record.data).encode()
