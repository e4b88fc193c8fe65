"""What a topic can hold (SPEC section 1): the one place its rules live.

Every path a record takes into a topic calls these rules: the codecs'
general paths (:func:`check_ts` through ``make_record``), their fast paths
(``ts in TS_RANGE``, :meth:`QuoteCheck.quote`) and the source's checks
(:class:`QuoteCheck` for quote topics, :class:`RecordCheck` for the others).
A rule written twice is the hole the next poison goes through (issue 10: a
``ts_ms`` of ``-1e300`` passed a fast path, then wedged ``quotes.raw``).

Any record:

- ``ts_ms`` is an integer in ``1 ..= 253402300799999`` (up to 9999-12-31
  UTC; 0 counts as missing), so every kernel (int64), storage and JSON
  answer can hold it;
- its key is a non-empty string of at most ``max_key_bytes`` UTF-8 bytes
  (default 64, configurable per source);
- no number it carries is NaN or infinite (JSON cannot say them; msgspec
  would write ``null``).

A quote, on top: its six fields are numbers of the right type, bid and ask
are finite positive numbers (``check_prices``), its mid ``(bid + ask) / 2``
is finite even where ``check_prices`` is lifted, and its ``ts_ms`` lies at
most ``max_future_ms`` ahead of the server's clock (one quote dated 2099
must not push a symbol's candles forward and make every real quote late).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import numpy.typing as npt
import ujson

from gauss.core import QUOTE_FIELDS, QuoteBatch, TopicRecord
from gauss.records import Rejected

__all__ = [
    "QuoteCheck",
    "RecordCheck",
    "QUOTE_FIELDS",
    "DEFAULT_MAX_FUTURE_MS",
    "DEFAULT_MAX_KEY_BYTES",
    "MIN_TS_MS",
    "MAX_TS_MS",
    "TS_RANGE",
    "as_int_ts",
    "check_ts",
    "check_key",
    "check_finite",
]

DEFAULT_MAX_FUTURE_MS = 60_000
DEFAULT_MAX_KEY_BYTES = 64

MIN_TS_MS = 1
MAX_TS_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z, the last millisecond every date library can print."""

TS_RANGE = range(MIN_TS_MS, MAX_TS_MS + 1)
"""``ts in TS_RANGE`` is the C-speed test of an ``int`` (exact ints only: a float makes ``in`` iterate)."""

_isfinite = math.isfinite
_CHECK_ERRORS = (ValueError, KeyError, TypeError, AttributeError, ArithmeticError)
"""What a malformed record raises while it is checked (``float(10**400)`` is an OverflowError)."""


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


def check_ts(value: Any, name: str = "ts_ms") -> int:
    """The timestamp ``value`` as an ``int`` in ``TS_RANGE``; ``ValueError`` saying why not.

    Zero counts as missing (proto3 cannot tell it from absent).
    """
    ts = as_int_ts(value)
    if ts in TS_RANGE:
        return ts
    if ts == 0:
        raise ValueError(f"{name} is missing (zero)")
    raise ValueError(f"{name} {ts} is outside 1 ..= {MAX_TS_MS} (1970-01-01 to 9999-12-31 UTC)")


def check_key(key: Any, max_key_bytes: int = DEFAULT_MAX_KEY_BYTES, name: str = "key") -> str:
    """``key`` if it is a non-empty string of at most ``max_key_bytes`` UTF-8 bytes; else ``ValueError``."""
    if type(key) is not str or not key:
        raise ValueError(f"{name} must be a non-empty string, got {key!r}")
    if len(key) * 4 <= max_key_bytes:  # PERF: no encoding for short keys (4 bytes a code point at most)
        return key
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{name} {key[:80]!r} is not valid UTF-8 (a lone surrogate)") from None
    if size > max_key_bytes:
        raise ValueError(f"{name} {key[:80]!r} is {size} UTF-8 bytes, more than max_key_bytes = {max_key_bytes}")
    return key


def check_finite(value: Any, where: str = "data") -> None:
    """``ValueError`` if ``value`` holds a NaN or infinite float anywhere (in nested dicts and lists too)."""
    if not _finite(value):
        raise ValueError(_not_finite(value, where) or f"{where} holds a number that is not finite")


def _finite(value: Any) -> bool:
    """Whether every float in ``value`` is finite. PERF: no path strings on the way (the common case)."""
    kind = type(value)
    if kind is float:
        return _isfinite(value)
    if kind is dict:
        value = value.values()
    elif kind is not list and kind is not tuple:
        return not isinstance(value, float) or _isfinite(value)
    for item in value:
        kind = type(item)
        if kind is float:
            if not _isfinite(item):
                return False
        elif kind is not str and kind is not int and not _finite(item):
            return False
    return True


def _not_finite(value: Any, where: str) -> str | None:
    """Where ``value`` holds its first number that is not finite, and what it is."""
    if isinstance(value, float):
        return None if _isfinite(value) else f"{where} is {value!r}; numbers must be finite"
    items: Any = ()
    if isinstance(value, dict):
        items = ((f"{where}.{k}", v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    for at, item in items:
        found = _not_finite(item, at)
        if found is not None:
            return found
    return None


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


def _raw(record: TopicRecord) -> bytes:
    try:
        return ujson.dumps(record.data, ensure_ascii=False).encode()
    except (TypeError, ValueError, OverflowError):
        return repr(record.data).encode()


class RecordCheck:
    """The checks of any record (not only quotes): key, ``ts_ms``, finite numbers.

    A source applies it to the records of a topic whose format is not
    ``quote`` (the codecs already hold ``ts_ms`` to its range; the key's
    length is the source's own setting).
    """

    def __init__(self, max_key_bytes: int = DEFAULT_MAX_KEY_BYTES) -> None:
        if max_key_bytes < 1:
            raise ValueError(f"max_key_bytes must be at least 1, got {max_key_bytes}")
        self._max_key_bytes = max_key_bytes

    @property
    def max_key_bytes(self) -> int:
        return self._max_key_bytes

    def check(self, records: Sequence[TopicRecord]) -> tuple[list[TopicRecord], list[Rejected]]:
        """The good records, unchanged, and the rejects (``raw`` the payload as JSON)."""
        max_key_bytes = self._max_key_bytes
        good: list[TopicRecord] = []
        bad: list[Rejected] = []
        for record in records:
            try:
                check_key(record.key, max_key_bytes)
                check_ts(record.ts_ms)
                check_finite(record.data)
            except _CHECK_ERRORS as exc:
                bad.append(Rejected(_raw(record), f"rejected record: {exc}"))
                continue
            good.append(record)
        return good, bad


class QuoteCheck(RecordCheck):
    """Normalise decoded quote records and reject the bad ones.

    ``max_future_ms=None`` lifts the clock check; ``check_prices=False``
    lifts the positive-price check (bid, ask and their mid stay finite).
    Missing sizes count as 0. The settings are fixed at construction.
    """

    def __init__(
        self,
        max_future_ms: int | None = DEFAULT_MAX_FUTURE_MS,
        check_prices: bool = True,
        max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
    ) -> None:
        super().__init__(max_key_bytes)
        self._max_future_ms = max_future_ms
        self._check_prices = check_prices
        self._short_key = max_key_bytes // 4
        self.quote = self._rule()
        """``quote(symbol, bid, ask, bid_size, ask_size, ts, latest_ts) -> TopicRecord``: see :meth:`_rule`."""

    @property
    def max_future_ms(self) -> int | None:
        return self._max_future_ms

    @property
    def check_prices(self) -> bool:
        return self._check_prices

    def horizon(self) -> int | None:
        """The latest ``ts_ms`` the clock check accepts now (None when it is lifted)."""
        return None if self._max_future_ms is None else int(time.time() * 1000) + self._max_future_ms

    def latest_ts(self) -> int:
        """The latest ``ts_ms`` accepted now: the clock check's horizon, at most ``MAX_TS_MS``."""
        horizon = self.horizon()
        return MAX_TS_MS if horizon is None or horizon > MAX_TS_MS else horizon

    def _rule(self) -> Callable[[Any, float, float, float, float, int, int], TopicRecord]:
        """The per-quote check of every path, :attr:`quote`: a closure over this check's settings.

        ``quote(symbol, bid, ask, bid_size, ask_size, ts, latest_ts)`` is the
        quote record of these values, or ``ValueError`` naming the rule they
        break. The values must already have their types (``bid`` ..
        ``ask_size`` floats, ``ts`` an int: the general path converts, the
        fast paths decode them so); ``latest_ts`` is :meth:`latest_ts` of
        the batch.

        PERF: a closure, not a method (no attribute loads per quote), and a
        plain quote passes on comparisons alone; only a refused one pays for
        :meth:`_explain`. ``x * 0.0`` is ``0.0`` for every finite ``x`` and
        NaN otherwise, so one chained ``==`` tells that the mid and both
        sizes are finite (NaN, inf, and a mid that overflows: 1e308 + 1e308).
        """
        short_key = self._short_key
        key_fits = self._key_fits
        check_prices = self._check_prices
        explain = self._explain

        def quote(
            symbol: Any, bid: float, ask: float, bid_size: float, ask_size: float, ts: int, latest_ts: int
        ) -> TopicRecord:
            if (
                type(symbol) is str
                and symbol
                and (len(symbol) <= short_key or key_fits(symbol))
                and MIN_TS_MS <= ts <= latest_ts
                and (bid + ask) * 0.0 == bid_size * 0.0 == ask_size * 0.0
                and (not check_prices or (bid > 0.0 and ask > 0.0))
            ):
                data = {
                    "symbol": symbol,
                    "bid": bid,
                    "ask": ask,
                    "bid_size": bid_size,
                    "ask_size": ask_size,
                    "ts_ms": ts,
                }
                return TopicRecord(ts, symbol, data)
            raise ValueError(explain(symbol, bid, ask, bid_size, ask_size, ts, latest_ts))

        return quote

    def check_columns(self, batch: QuoteBatch) -> npt.NDArray[np.bool_] | None:
        """Which quotes of a parsed batch pass :meth:`quote`'s numeric rules (None: all), in one compiled pass.

        The keys are the parser's to bound (``JsonQuoteParser`` hands over
        only ASCII symbols of 1 to ``max_key_bytes`` bytes); a quote refused
        here takes the general path, which explains.
        """
        return batch.passing(MIN_TS_MS, self.latest_ts(), self._check_prices)

    def _key_fits(self, symbol: str) -> bool:
        try:
            check_key(symbol, self._max_key_bytes, "symbol")
        except ValueError:
            return False
        return True

    def _explain(
        self, symbol: Any, bid: float, ask: float, bid_size: float, ask_size: float, ts: int, latest_ts: int
    ) -> str:
        """Why :meth:`quote` refused these values: the first rule broken, in :meth:`quote`'s order."""
        try:
            check_key(symbol, self._max_key_bytes, "symbol")
        except ValueError as exc:
            return str(exc)
        if not MIN_TS_MS <= ts <= MAX_TS_MS:
            try:
                check_ts(ts)
            except ValueError as exc:
                return str(exc)
        if ts > latest_ts:
            return f"ts_ms {ts} is more than {self._max_future_ms} ms in the future"
        if not (_isfinite(bid) and _isfinite(ask)):
            return f"bid and ask must be finite numbers, got bid={bid!r} ask={ask!r}"
        if not _isfinite(bid + ask):
            return f"the mid (bid + ask) / 2 of bid={bid!r} ask={ask!r} overflows"
        if not (_isfinite(bid_size) and _isfinite(ask_size)):
            return f"bid_size and ask_size must be finite numbers, got bid_size={bid_size!r} ask_size={ask_size!r}"
        return f"bid and ask must be finite positive numbers, got bid={bid!r} ask={ask!r}"

    def check(self, records: Sequence[TopicRecord]) -> tuple[list[TopicRecord], list[Rejected]]:
        """Return the good records (``data`` reduced to the six fields) and the rejects.

        A reject's ``raw`` is the decoded payload re-encoded as JSON.
        """
        latest_ts = self.latest_ts()
        quote = self.quote
        good: list[TopicRecord] = []
        bad: list[Rejected] = []
        for record in records:
            try:
                data = record.data
                bid = _number(data, "bid")
                ask = _number(data, "ask")
                bid_size = _number(data, "bid_size", 0.0)
                ask_size = _number(data, "ask_size", 0.0)
                good.append(quote(record.key, bid, ask, bid_size, ask_size, as_int_ts(record.ts_ms), latest_ts))
            except _CHECK_ERRORS as exc:
                reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
                bad.append(Rejected(_raw(record), f"rejected quote: {reason}"))
        return good, bad
