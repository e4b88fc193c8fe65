"""What every codec shares: payload dict -> record, the common options, encode-error logging.

A codec turns a payload into ``TopicRecord(ts_ms=data[ts_field],
key=data[key_field], data=data)`` (SPEC section 1). The key must be a
non-empty string and the timestamp an integer in
:data:`gauss.quotes.TS_RANGE` (an empty symbol or a zero ``ts_ms`` counts as
missing): the rule of :func:`gauss.quotes.check_ts`, which every codec's
fast path applies as ``ts in TS_RANGE``. The key's length, finite numbers
and the quote checks are the source's job (:mod:`gauss.quotes`), not the
codec's.
"""

from __future__ import annotations

import logging
from typing import Any

from gauss.core import TopicRecord
from gauss.quotes import TS_RANGE, as_int_ts, check_ts
from gauss.ratelimit import RateLimitedLog
from gauss.registry import Options

__all__ = [
    "DEFAULT_KEY_FIELD",
    "DEFAULT_TS_FIELD",
    "make_record",
    "read_field_options",
    "EncodeFailureLog",
    "plain_quote",
]

DEFAULT_KEY_FIELD = "symbol"
DEFAULT_TS_FIELD = "ts_ms"


def read_field_options(opts: Options) -> tuple[str, str]:
    """Read ``key_field`` and ``ts_field`` (the options every codec has)."""
    key_field = opts.str("key_field", DEFAULT_KEY_FIELD)
    ts_field = opts.str("ts_field", DEFAULT_TS_FIELD)
    return key_field, ts_field


def make_record(data: Any, key_field: str, ts_field: str) -> TopicRecord:
    """The record of one decoded payload; raises ``ValueError`` saying what is wrong."""
    if type(data) is not dict:
        raise ValueError(f"payload must be an object, got {type(data).__name__}")
    key = data.get(key_field)
    if type(key) is not str or not key:
        if key is None or key == "":
            raise ValueError(f"missing key field {key_field!r}")
        if not isinstance(key, str):
            raise ValueError(f"key field {key_field!r} must be a string, got {key!r}")
        key = str(key)
    ts = data.get(ts_field)
    if type(ts) is not int or ts not in TS_RANGE:
        if ts is None:
            raise ValueError(f"missing timestamp field {ts_field!r}")
        ts = as_int_ts(ts)
        if ts == 0:
            raise ValueError(f"missing timestamp field {ts_field!r} (zero)")
        ts = check_ts(ts, ts_field)
    return TopicRecord(ts, key, data)


class EncodeFailureLog:
    """Rate-limited warning for records a codec cannot encode (they are skipped).

    A sink must keep serving the records it can encode; one record of the
    wrong shape is logged (at most once per ``interval`` seconds, with a
    count of the ones not logged) and left out of the batch.
    """

    def __init__(self, logger: logging.Logger, codec: str, interval: float = 10.0) -> None:
        self._log = RateLimitedLog(logger, interval)
        self._codec = codec
        self.count = 0

    def record(self, data: Any, exc: BaseException) -> None:
        self.count += 1
        self._log("%s codec: cannot encode payload %.200r: %s; skipped", self._codec, data, exc)


PlainQuote = tuple[str, float, float, float, float, int]


def plain_quote(data: Any) -> PlainQuote | None:
    """``(symbol, bid, ask, bid_size, ask_size, ts_ms)`` of a quote dict of exact types, else None.

    What a codec's quote encoder may write without its general path (which
    decides, and explains, everything else); shared by csv and avro.
    """
    if type(data) is not dict:
        return None
    get = data.get
    symbol = get("symbol")
    bid = get("bid")
    ask = get("ask")
    bid_size = get("bid_size")
    ask_size = get("ask_size")
    ts = get("ts_ms")
    if (
        type(symbol) is not str
        or type(bid) is not float
        or type(ask) is not float
        or type(bid_size) is not float
        or type(ask_size) is not float
        or type(ts) is not int
    ):
        return None
    return symbol, bid, ask, bid_size, ask_size, ts
