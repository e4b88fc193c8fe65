"""Typed interface of the compiled kernels (``_core.pyx``) and their twins (``_pycore.py``)."""

from typing import Any, Final, Iterator, Sequence, overload

import numpy as np
import numpy.typing as npt

__all__ = [
    "TopicRecord",
    "QuoteBatch",
    "JsonQuoteParser",
    "CsvQuoteParser",
    "encode_csv_quotes",
    "LineDecoder",
    "LengthPrefixedDecoder",
    "encode_lines",
    "encode_length_prefixed",
    "RecordRing",
    "QuoteRing",
    "OhlcAggregator",
    "QUOTE_FIELDS",
    "DEFAULT_MAX_FRAME_BYTES",
]

DEFAULT_MAX_FRAME_BYTES: Final[int]
QUOTE_FIELDS: Final[tuple[str, str, str, str, str, str]]

_Buffer = bytes | bytearray | memoryview
_Ints = Sequence[int] | npt.NDArray[np.integer[Any]]
_Floats = Sequence[float] | npt.NDArray[np.floating[Any]]
_KeyInfo = tuple[str, int, int]
_Candle = tuple[str, int, int, float, float, float, float, int, bool]
"""``(key, timeframe_ms, start_ms, open, high, low, close, ticks, is_open)``: the fields of
``gauss.records.Candle`` in order (plain tuples: the OHLC stage unpacks them into these names, see plugins/stage/ohlc.py)."""

class TopicRecord:
    """One record of a topic: event time, routing key, payload; ``seq`` 0 until stored."""

    ts_ms: int
    key: str
    data: Any
    seq: int
    __hash__: None  # type: ignore[assignment]
    def __init__(self, ts_ms: int, key: str, data: Any, seq: int = 0) -> None: ...
    def with_seq(self, seq: int) -> TopicRecord: ...
    def as_dict(self) -> dict[str, Any]: ...
    def __eq__(self, other: object) -> bool: ...
    def __reduce__(self) -> tuple[Any, ...]: ...

_Int64s = npt.NDArray[np.int64]
_Float64s = npt.NDArray[np.float64]

class QuoteBatch(Sequence[TopicRecord]):
    """A batch of quotes as columns; a sequence of :class:`TopicRecord` built on demand."""

    symbols: list[str]
    ts_ms: _Int64s
    bid: _Float64s
    ask: _Float64s
    bid_size: _Float64s
    ask_size: _Float64s
    first_seq: int
    __hash__: None  # type: ignore[assignment]
    def __init__(
        self,
        symbols: Sequence[str],
        ts_ms: _Ints,
        bid: _Floats,
        ask: _Floats,
        bid_size: _Floats,
        ask_size: _Floats,
        first_seq: int = 0,
        seqs: _Ints | None = None,
    ) -> None: ...
    @property
    def seqs(self) -> _Int64s: ...
    @classmethod
    def from_records(cls, records: Sequence[TopicRecord]) -> QuoteBatch: ...
    @staticmethod
    def concat(batches: Sequence[QuoteBatch]) -> QuoteBatch: ...
    def take(self, indices: _Ints) -> QuoteBatch: ...
    @property
    def last_seq(self) -> int: ...
    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, index: int) -> TopicRecord: ...
    @overload
    def __getitem__(self, index: slice) -> QuoteBatch: ...
    def __iter__(self) -> Iterator[TopicRecord]: ...
    def records(self) -> list[TopicRecord]: ...
    def __eq__(self, other: object) -> bool: ...
    def __reduce__(self) -> tuple[Any, ...]: ...
    def payloads_json(self) -> list[bytes]: ...
    def record_lines(self) -> bytes: ...
    def records_json(self) -> bytes: ...

class JsonQuoteParser:
    """The ``json`` codec's fast path: plain quote objects into a :class:`QuoteBatch` and their positions."""

    @property
    def max_key_bytes(self) -> int: ...
    def __init__(self, max_key_bytes: int) -> None: ...
    def parse(self, payloads: Sequence[bytes]) -> tuple[QuoteBatch, _Int64s]: ...

class CsvQuoteParser:
    """The ``csv`` codec's fast path: plain quote rows into a :class:`QuoteBatch` and their positions."""

    @property
    def max_key_bytes(self) -> int: ...
    def __init__(self, max_key_bytes: int) -> None: ...
    def parse(self, payloads: Sequence[bytes]) -> tuple[QuoteBatch, _Int64s]: ...

def encode_csv_quotes(batch: QuoteBatch) -> list[bytes]: ...

class LineDecoder:
    """Incremental ``lines`` decoder; raises FrameTooLarge past ``max_frame_bytes``."""

    @property
    def max_frame_bytes(self) -> int: ...
    @property
    def buffered(self) -> int: ...
    def __init__(self, max_frame_bytes: int = ...) -> None: ...
    def feed(self, chunk: _Buffer) -> list[bytes]: ...

class LengthPrefixedDecoder:
    """Incremental ``length-prefixed`` decoder (u32 big-endian length, payload)."""

    @property
    def max_frame_bytes(self) -> int: ...
    @property
    def buffered(self) -> int: ...
    def __init__(self, max_frame_bytes: int = ...) -> None: ...
    def feed(self, chunk: _Buffer) -> list[bytes]: ...

def encode_lines(payloads: Sequence[_Buffer]) -> bytes: ...
def encode_length_prefixed(payloads: Sequence[_Buffer]) -> bytes: ...

class _RingIndex:
    @property
    def capacity(self) -> int: ...
    @property
    def first_seq(self) -> int: ...
    @property
    def last_seq(self) -> int: ...
    def __len__(self) -> int: ...
    def query(
        self,
        key: str | None = None,
        from_ms: int | None = None,
        to_ms: int | None = None,
        since_seq: int | None = None,
        limit: int = 1000,
    ) -> tuple[Sequence[TopicRecord], bool]: ...
    def latest(self, key: str | None = None) -> Sequence[TopicRecord]: ...
    def keys(self) -> list[_KeyInfo]: ...

class RecordRing(_RingIndex):
    """Fixed-capacity store of any records, consecutive seqs; the oldest is overwritten."""

    def __init__(self, capacity: int) -> None: ...
    def append(self, records: Sequence[TopicRecord]) -> None: ...

class QuoteRing(_RingIndex):
    """Columnar ring of quotes (48 bytes a quote, key included)."""

    def __init__(self, capacity: int) -> None: ...
    @property
    def nbytes(self) -> int: ...
    def query(
        self,
        key: str | None = None,
        from_ms: int | None = None,
        to_ms: int | None = None,
        since_seq: int | None = None,
        limit: int = 1000,
    ) -> tuple[QuoteBatch, bool]: ...
    def latest(self, key: str | None = None) -> QuoteBatch: ...
    def append(self, records: Sequence[TopicRecord]) -> None: ...
    def append_columns(
        self,
        first_seq: int,
        keys: Sequence[str],
        ts_ms: _Ints,
        bid: _Floats,
        ask: _Floats,
        bid_size: _Floats,
        ask_size: _Floats,
    ) -> None: ...

class OhlcAggregator:
    """Mid-price OHLC candles per (key, timeframe) with ``hold_buckets`` open to late quotes."""

    @property
    def timeframes_ms(self) -> list[int]: ...
    @property
    def hold_buckets(self) -> int: ...
    @property
    def late_counts(self) -> list[int]: ...
    def __init__(self, timeframes_ms: Sequence[int], hold_buckets: int = 2) -> None: ...
    def update(
        self, keys: Sequence[str], ts_ms: _Ints, bids: _Floats, asks: _Floats
    ) -> tuple[list[_Candle], list[tuple[int, int]]]: ...
    def update_records(self, records: Sequence[TopicRecord]) -> tuple[list[_Candle], list[tuple[int, int]]]: ...
    @property
    def key_count(self) -> int: ...
    def forget(self, key: str, /) -> bool: ...
    def candle(self, key: str, timeframe_ms: int, start_ms: int) -> tuple[float, float, float, float, int] | None: ...
