"""The datasource's query model: parsing a panel query, choosing the candle timeframe, channel paths.

A panel query (``DataQuery.json``) looks like::

    {"kind": "candles", "timeframe": "1m", "symbols": ["EURUSD", "GBPUSD"]}
    {"kind": "quotes", "topic": "quotes.raw", "symbols": "EURUSD"}

``kind`` may also come from ``queryType``; ``symbols`` is a list or a
comma-separated string; ``timeframe`` may be ``auto``. Candles read topic
``ohlc.<timeframe>``; when the panel's range holds more buckets than
``maxDataPoints`` the next coarser timeframe that fits is read instead.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from gauss.errors import GaussError

__all__ = [
    "TIMEFRAMES",
    "DEFAULT_QUOTE_TOPIC",
    "BadQuery",
    "CandleQuery",
    "QuoteQuery",
    "StreamPath",
    "choose_timeframe",
    "parse_query",
    "parse_stream_path",
    "encode_symbol",
    "decode_symbol",
]

# Candle timeframes the OHLC processor publishes (SPEC section 1), finest first.
TIMEFRAMES: dict[str, int] = {
    "1s": 1_000,
    "5s": 5_000,
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}
DEFAULT_QUOTE_TOPIC = "quotes.raw"
DEFAULT_MAX_POINTS = 1_000
MAX_LIMIT = 100_000
MAX_SYMBOLS = 50

_TOPIC_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
# Characters allowed in a Grafana channel path segment as is; others are written =XX.
_CHANNEL_SAFE = re.compile(r"[A-Za-z0-9_\-.]")
_ENCODED_SEGMENT = re.compile(r"(?:[A-Za-z0-9_\-.]|=[0-9A-F]{2})+")


class BadQuery(GaussError, ValueError):
    """A panel query is malformed; the message names the field (answered with status 400)."""


@dataclass(frozen=True)
class CandleQuery:
    """Candles of ``symbols`` from topic ``ohlc.<timeframe>`` in ``[from_ms, to_ms]``."""

    ref_id: str
    symbols: tuple[str, ...]
    requested: str  # the timeframe the panel asked for, or "auto"
    timeframe: str  # the timeframe read
    reason: str  # why ``timeframe`` differs from ``requested`` ("" when it does not)
    from_ms: int
    to_ms: int
    max_points: int
    topic_prefix: str = "ohlc."

    @property
    def topic(self) -> str:
        return f"{self.topic_prefix}{self.timeframe}"

    @property
    def bucket_from_ms(self) -> int:
        """``from_ms`` aligned down to its bucket, so the candle holding the range start is included."""
        step = TIMEFRAMES[self.timeframe]
        return self.from_ms - self.from_ms % step

    @property
    def limit(self) -> int:
        """Enough records for every bucket of the range (capped at the API's maximum)."""
        step = TIMEFRAMES[self.timeframe]
        return max(1, min(MAX_LIMIT, (self.to_ms - self.bucket_from_ms) // step + 1))


@dataclass(frozen=True)
class QuoteQuery:
    """Quotes of ``symbols`` from ``topic`` in ``[from_ms, to_ms]``, at most ``limit`` each (the newest)."""

    ref_id: str
    topic: str
    symbols: tuple[str, ...]
    from_ms: int
    to_ms: int
    limit: int


def choose_timeframe(requested: str, from_ms: int, to_ms: int, max_points: int, interval_ms: int = 0) -> tuple[str, str]:
    """Pick the candle timeframe to read and say why when it is not the requested one.

    The requested timeframe is kept while the range fits in ``max_points``
    buckets; otherwise the finest coarser timeframe that fits is used (``1d``
    when none does). ``auto`` starts from the panel's ``interval_ms``.
    """
    names = list(TIMEFRAMES)
    span = max(0, to_ms - from_ms)
    if requested == "auto":
        start = next((i for i, n in enumerate(names) if TIMEFRAMES[n] >= interval_ms), len(names) - 1)
    else:
        start = names.index(requested)
    for name in names[start:]:
        if math.ceil(span / TIMEFRAMES[name]) <= max_points:
            break
    else:
        name = names[-1]
    if name == requested:
        return name, ""
    if requested == "auto":
        return name, f"auto: interval {interval_ms} ms, {span} ms range, maxDataPoints {max_points}"
    points = math.ceil(span / TIMEFRAMES[requested])
    return name, f"{requested} would need {points} points, maxDataPoints is {max_points}"


def parse_query(
    raw_json: bytes,
    *,
    ref_id: str,
    query_type: str = "",
    from_ms: int,
    to_ms: int,
    max_points: int,
    interval_ms: int = 0,
) -> CandleQuery | QuoteQuery:
    """Turn one ``DataQuery`` into a CandleQuery or QuoteQuery; raise BadQuery naming the field."""
    try:
        model = json.loads(raw_json or b"{}")
    except ValueError as exc:
        raise BadQuery(f"query JSON is invalid: {exc}") from None
    if not isinstance(model, dict):
        raise BadQuery("query JSON must be an object")
    kind = model.get("kind") or query_type or "candles"
    if kind not in ("candles", "quotes"):
        raise BadQuery(f"kind: unknown kind {kind!r}; known: candles, quotes")
    if from_ms > to_ms:
        raise BadQuery(f"timeRange: from ({from_ms}) is after to ({to_ms})")
    symbols = _symbols(model.get("symbols", model.get("symbol")))
    points = max_points if max_points > 0 else DEFAULT_MAX_POINTS
    if kind == "candles":
        requested = model.get("timeframe") or "auto"
        if requested != "auto" and requested not in TIMEFRAMES:
            raise BadQuery(f"timeframe: unknown timeframe {requested!r}; known: auto, {', '.join(TIMEFRAMES)}")
        prefix = model.get("topicPrefix", "ohlc.")
        if not isinstance(prefix, str) or (prefix and not _TOPIC_RE.match(prefix)):
            raise BadQuery(f"topicPrefix: {prefix!r} is not a topic name prefix")
        timeframe, reason = choose_timeframe(requested, from_ms, to_ms, points, interval_ms)
        return CandleQuery(ref_id, symbols, requested, timeframe, reason, from_ms, to_ms, points, prefix)
    topic = model.get("topic") or DEFAULT_QUOTE_TOPIC
    if not isinstance(topic, str) or not _TOPIC_RE.match(topic):
        raise BadQuery(f"topic: {topic!r} is not a topic name")
    return QuoteQuery(ref_id, topic, symbols, from_ms, to_ms, max(1, min(MAX_LIMIT, points)))


def _symbols(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = [item.strip() for item in value]
    elif value is None:
        items = []
    else:
        raise BadQuery("symbols: expected a list of strings or a comma-separated string")
    symbols = tuple(dict.fromkeys(item for item in items if item))
    if not symbols:
        raise BadQuery("symbols: at least one symbol is required")
    if len(symbols) > MAX_SYMBOLS:
        raise BadQuery(f"symbols: at most {MAX_SYMBOLS} symbols per query, got {len(symbols)}")
    return symbols


def encode_symbol(symbol: str) -> str:
    """Write ``symbol`` as a channel path segment: bytes outside ``A-Za-z0-9_-.`` become ``=XX``."""
    return "".join(
        ch if _CHANNEL_SAFE.fullmatch(ch) else "".join(f"={b:02X}" for b in ch.encode("utf-8")) for ch in symbol
    )


def decode_symbol(segment: str) -> str:
    """Invert :func:`encode_symbol`; raise ValueError for a malformed or empty segment."""
    if not _ENCODED_SEGMENT.fullmatch(segment):
        raise ValueError(f"malformed channel segment {segment!r}")
    raw = re.sub(r"=([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), segment)
    return raw.encode("latin-1").decode("utf-8")


@dataclass(frozen=True)
class StreamPath:
    """A channel path this datasource serves: ``candles/<tf>/<SYM>`` or ``quotes/<SYM>[/<topic>]``."""

    kind: Literal["candles", "quotes"]
    topic: str
    symbol: str
    timeframe: str = ""

    @classmethod
    def candles(cls, timeframe: str, symbol: str, topic_prefix: str = "ohlc.") -> StreamPath:
        return cls("candles", f"{topic_prefix}{timeframe}", symbol, timeframe)

    @classmethod
    def quotes(cls, symbol: str, topic: str = DEFAULT_QUOTE_TOPIC) -> StreamPath:
        return cls("quotes", topic, symbol)

    @property
    def path(self) -> str:
        if self.kind == "candles":
            return f"candles/{self.timeframe}/{encode_symbol(self.symbol)}"
        suffix = "" if self.topic == DEFAULT_QUOTE_TOPIC else f"/{self.topic}"
        return f"quotes/{encode_symbol(self.symbol)}{suffix}"

    def channel(self, datasource_uid: str) -> str:
        """The Grafana Live channel: ``ds/<uid>/<path>``."""
        return f"ds/{datasource_uid}/{self.path}"


def parse_stream_path(path: str) -> StreamPath:
    """Parse a channel path from SubscribeStream/RunStream; raise ValueError when it is not ours."""
    parts = path.split("/")
    try:
        if parts[0] == "candles" and len(parts) == 3 and parts[1] in TIMEFRAMES:
            return StreamPath.candles(parts[1], decode_symbol(parts[2]))
        if parts[0] == "quotes" and len(parts) in (2, 3):
            topic = parts[2] if len(parts) == 3 else DEFAULT_QUOTE_TOPIC
            if _TOPIC_RE.match(topic):
                return StreamPath.quotes(decode_symbol(parts[1]), topic)
    except (ValueError, UnicodeDecodeError):
        pass
    raise ValueError(f"unknown stream path {path!r}; expected candles/<timeframe>/<symbol> or quotes/<symbol>")
