"""Records, queries and the names shared by every part of the data path."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import msgspec

from gauss.core import QuoteBatch, TopicRecord, write_record_lines, write_records_json
from gauss.errors import QueryError

__all__ = [
    "TopicRecord",
    "TopicQuery",
    "QueryResult",
    "KeyInfo",
    "Candle",
    "Rejected",
    "OverflowPolicy",
    "DataFormat",
    "MAX_QUERY_LIMIT",
    "DEFAULT_QUERY_LIMIT",
    "INT64_MIN",
    "INT64_MAX",
    "encode_json",
    "encode_record",
    "encode_records",
    "encode_records_piece",
    "encode_record_lines",
]

MAX_QUERY_LIMIT = 100_000
DEFAULT_QUERY_LIMIT = 1000


class OverflowPolicy(str, enum.Enum):
    """What a full subscriber queue does with the next batch (SPEC section 5)."""

    DROP = "drop"
    """Shed the newest records; the publisher never waits."""
    DROP_OLDEST = "drop_oldest"
    """Evict the oldest queued records to make room for the newest."""
    CONFLATE = "conflate"
    """Keep only the latest queued record per key."""
    BACK_PRESSURE = "back_pressure"
    """The publisher waits until there is room."""

    @classmethod
    def parse(cls, value: object) -> OverflowPolicy:
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown overflow policy {value!r}; known: {known}") from None


class DataFormat(str, enum.Enum):
    """What the records of a topic carry."""

    QUOTE = "quote"
    """The six quote fields of SPEC section 1, nothing else."""
    CANDLE = "candle"
    """OHLC candles; one record per (key, ts_ms), later versions replace earlier."""
    ANY = "any"
    """Any JSON-compatible payload."""

    @property
    def upsert(self) -> bool:
        return self is DataFormat.CANDLE


class Rejected(NamedTuple):
    """A payload that did not become a record, and why (for dead letters)."""

    raw: bytes
    reason: str


class Candle(NamedTuple):
    """One OHLC candle as ``OhlcAggregator.update`` reports it, read by name.

    The kernels (compiled and pure) return plain 9-tuples in this order
    (``_Candle`` in gauss/_core.pyi; tests/gauss/test_records.py checks it);
    ``Candle._make(t)`` reads one by name. PERF: the OHLC stage's hot loop
    unpacks the tuples into these names instead of wrapping each one, which
    measured about 40% slower there (see ``KernelCandle`` in plugins/stage/ohlc.py).
    """

    key: str
    timeframe_ms: int
    start_ms: int
    open: float
    high: float
    low: float
    close: float
    ticks: int
    is_open: bool


class KeyInfo(NamedTuple):
    key: str
    records: int
    last_ts_ms: int


@dataclass(frozen=True, slots=True)
class TopicQuery:
    """A query of SPEC section 4: ``from_ms <= ts_ms < to_ms``, ``seq > since_seq``.

    Results ascend by ``ts_ms``; when more than ``limit`` match, the most
    recent ``limit`` are returned and the result is ``truncated``.
    """

    key: str | None = None
    from_ms: int | None = None
    to_ms: int | None = None
    since_seq: int | None = None
    limit: int = DEFAULT_QUERY_LIMIT

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_QUERY_LIMIT:
            raise QueryError("limit", f"must be an integer from 1 to {MAX_QUERY_LIMIT}")
        if self.from_ms is not None and self.to_ms is not None and self.from_ms > self.to_ms:
            raise QueryError("from", "must not be greater than 'to'")
        if self.since_seq is not None and self.since_seq < 0:
            raise QueryError("since_seq", "must be a non-negative integer")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TopicQuery:
        """Build a query from REST/WebSocket parameters, naming any bad one.

        Accepts strings (query strings) or JSON numbers; ``from`` and ``to``
        map to ``from_ms`` and ``to_ms``.
        """
        key = params.get("key")
        if key is not None and (not isinstance(key, str) or not key):
            raise QueryError("key", "must be a non-empty string")
        return cls(
            key=key,
            from_ms=_int_param(params, "from"),
            to_ms=_int_param(params, "to"),
            since_seq=_int_param(params, "since_seq"),
            limit=_int_param(params, "limit", DEFAULT_QUERY_LIMIT),  # type: ignore[arg-type]
        )

    def matches(self, record: TopicRecord) -> bool:
        """True when ``record`` satisfies every filter (``limit`` aside)."""
        if self.key is not None and record.key != self.key:
            return False
        if self.from_ms is not None and record.ts_ms < self.from_ms:
            return False
        if self.to_ms is not None and record.ts_ms >= self.to_ms:
            return False
        if self.since_seq is not None and record.seq <= self.since_seq:
            return False
        return True


def _enc_hook(value: Any) -> Any:
    # numpy scalars and arrays (duck-typed: ``tolist`` turns either into plain Python values).
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"cannot encode a {type(value).__name__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)

encode_json = _encoder.encode
"""Any JSON-compatible value to bytes; numpy scalars and arrays become numbers and lists, NaN and infinities ``null``.

Raises ``TypeError`` (or ``msgspec.EncodeError``) for what cannot be JSON.
The one JSON encoder of records: REST, WebSocket pushes, file, raw-file and
ClickHouse all go through this module, so a record encodes the same everywhere.
"""


def _encode_any(record: TopicRecord) -> bytes:
    """The kernels' fallback: a record whose payload is not plain JSON data (numpy values, say), by msgspec."""
    return _encoder.encode(record.as_dict())


def encode_record(record: TopicRecord) -> bytes:
    """One record's SPEC form (``ts_ms``, ``key``, ``data`` and ``seq`` once numbered) as JSON."""
    return write_records_json((record,), _encode_any, lead=b"", tail=b"")


def encode_records(records: Iterable[TopicRecord]) -> bytes:
    """The JSON array of the records' SPEC forms (quotes as columns written from the columns, any others by a kernel)."""
    if isinstance(records, QuoteBatch):
        return records.records_json()
    return write_records_json(records, _encode_any)


def encode_records_piece(records: Sequence[TopicRecord], start: int, stop: int) -> bytes:
    """``records[start:stop]``'s SPEC forms comma-separated, after a comma unless ``start`` is 0.

    The pieces of consecutive ranges, joined and wrapped in ``[`` ``]``, are
    :func:`encode_records` of the whole (quotes written from the columns, no copy).
    """
    lead = b"," if start else b""
    if isinstance(records, QuoteBatch):
        return records.records_json(start, stop, lead, b"")
    return write_records_json(records, _encode_any, start, stop, lead, b"")


def encode_record_lines(records: Iterable[TopicRecord]) -> bytes:
    """The records' SPEC forms as JSON lines, each ended by a newline (JSON has none inside)."""
    if isinstance(records, QuoteBatch):
        return records.record_lines()
    return write_record_lines(records, _encode_any)


INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


def _int_param(params: Mapping[str, Any], name: str, default: int | None = None) -> int | None:
    value = _int_value(params, name)
    if value is None:
        return default
    # Storages and kernels hold ts_ms and seq as int64: a larger value is a client
    # mistake to name, not an OverflowError deep in a storage (issue 11).
    if not INT64_MIN <= value <= INT64_MAX:
        raise QueryError(name, "must fit in a signed 64-bit integer")
    return value


_DECIMAL = re.compile(r"-?[0-9]+")


def _int_value(params: Mapping[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        raise QueryError(name, "must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise QueryError(name, "must be an integer")
    if isinstance(value, str):
        # ASCII digits only: int() would also take " 5", "+5", "1_0" and other scripts' digits.
        if not _DECIMAL.fullmatch(value):
            raise QueryError(name, f"must be an integer, got {value!r}")
        if len(value) > 20:  # past int64 (and past what int() converts: 4,300 digits)
            raise QueryError(name, "must fit in a signed 64-bit integer")
        return int(value)
    raise QueryError(name, "must be an integer")


@dataclass(slots=True)
class QueryResult:
    """What a storage answers: the matching records (quotes as a :class:`QuoteBatch`), and whether more matched."""

    records: Sequence[TopicRecord] = field(default_factory=list)
    truncated: bool = False
