"""Pure-Python twins of the compiled kernels in ``_core.pyx``.

They are the test oracle for the Cython build and the fallback where it is
not available. Behaviour, names and signatures match ``_core.pyx`` exactly;
``gauss.core`` picks one of the two, once, at import.
"""

from __future__ import annotations

import bisect
import re
import struct
import zlib
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Sequence, overload

import msgspec
import numpy as np
import numpy.typing as npt

from gauss.errors import FrameTooLarge

__all__ = [
    "TopicRecord",
    "QuoteBatch",
    "JsonQuoteParser",
    "CsvQuoteParser",
    "encode_csv_quotes",
    "AvroQuoteParser",  # noqa: F405 - from gauss._pycodecs (the star import at the end)
    "encode_avro_quotes",  # noqa: F405 - from gauss._pycodecs (the star import at the end)
    "ProtobufQuoteParser",  # noqa: F405 - from gauss._pycodecs (the star import at the end)
    "encode_protobuf_quotes",  # noqa: F405 - from gauss._pycodecs (the star import at the end)
    "LineDecoder",
    "LengthPrefixedDecoder",
    "encode_lines",
    "encode_length_prefixed",
    "encode_checked_frames",
    "write_records_json",
    "write_record_lines",
    "RecordRing",
    "QuoteRing",
    "OhlcAggregator",
    "QUOTE_FIELDS",
    "DEFAULT_MAX_FRAME_BYTES",
]

DEFAULT_MAX_FRAME_BYTES = 1 << 20
QUOTE_FIELDS = ("symbol", "bid", "ask", "bid_size", "ask_size", "ts_ms")
_MAX_LENGTH_PREFIX = 0xFFFFFFFF


class TopicRecord:
    """One record of a topic: event time, routing key, payload.

    ``seq`` is 0 until a topic stores the record and numbers it.
    """

    __slots__ = ("ts_ms", "key", "data", "seq")

    def __init__(self, ts_ms: int, key: str, data: Any, seq: int = 0) -> None:
        self.ts_ms = ts_ms
        self.key = key
        self.data = data
        self.seq = seq

    def with_seq(self, seq: int) -> TopicRecord:
        return TopicRecord(self.ts_ms, self.key, self.data, seq)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of SPEC section 1 (``seq`` only once numbered)."""
        if self.seq:
            return {"ts_ms": self.ts_ms, "key": self.key, "data": self.data, "seq": self.seq}
        return {"ts_ms": self.ts_ms, "key": self.key, "data": self.data}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TopicRecord) and type(other).__name__ != "TopicRecord":
            return NotImplemented
        return bool(
            self.ts_ms == other.ts_ms  # type: ignore[attr-defined]
            and self.key == other.key  # type: ignore[attr-defined]
            and self.data == other.data  # type: ignore[attr-defined]
            and self.seq == other.seq  # type: ignore[attr-defined]
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TopicRecord(ts_ms={self.ts_ms!r}, key={self.key!r}, data={self.data!r}, seq={self.seq!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (TopicRecord, (self.ts_ms, self.key, self.data, self.seq))


# --- quote columns ---------------------------------------------------------


class QuoteBatch(Sequence[TopicRecord]):
    """A batch of quotes as columns: what a quote codec reads, a quote topic publishes and stores.

    ``symbols`` is a list of ``str`` (a parser hands out one shared object per
    distinct symbol, so the list is in effect ids into its symbol table),
    ``ts_ms`` an int64 array, ``bid``/``ask``/``bid_size``/``ask_size`` float64
    arrays. A batch a topic publishes is numbered by ``first_seq`` alone (its
    quotes hold ``first_seq, first_seq + 1, ...``; 0 until numbered); one a
    query gathered carries its own ``seqs``. It is a sequence of
    :class:`TopicRecord`: indexing builds the one record asked for (``data``
    the six quote fields), slicing gives a batch sharing the columns.
    """

    __slots__ = ("symbols", "ts_ms", "bid", "ask", "bid_size", "ask_size", "_first_seq", "_seqs")

    def __init__(
        self,
        symbols: Sequence[str],
        ts_ms: Any,
        bid: Any,
        ask: Any,
        bid_size: Any,
        ask_size: Any,
        first_seq: int = 0,
        seqs: Any = None,
    ) -> None:
        self.symbols = symbols if type(symbols) is list else list(symbols)
        self.ts_ms = np.ascontiguousarray(ts_ms, dtype=np.int64)
        self.bid = np.ascontiguousarray(bid, dtype=np.float64)
        self.ask = np.ascontiguousarray(ask, dtype=np.float64)
        self.bid_size = np.ascontiguousarray(bid_size, dtype=np.float64)
        self.ask_size = np.ascontiguousarray(ask_size, dtype=np.float64)
        n = len(self.symbols)
        if not (len(self.ts_ms) == len(self.bid) == len(self.ask) == len(self.bid_size) == len(self.ask_size) == n):
            raise ValueError("columns differ in length")
        if first_seq < 0:
            raise ValueError(f"first_seq must not be negative, got {first_seq}")
        self._first_seq = first_seq
        self._seqs: Any = None
        if seqs is not None:
            if first_seq:
                raise ValueError("give first_seq or seqs, not both")
            self._seqs = np.ascontiguousarray(seqs, dtype=np.int64)
            if len(self._seqs) != n:
                raise ValueError("columns differ in length")
            self._first_seq = int(self._seqs[0]) if n else 0

    @property
    def first_seq(self) -> int:
        """The seq of the first quote (0 while unnumbered)."""
        return self._first_seq

    @first_seq.setter
    def first_seq(self, value: int) -> None:
        if self._seqs is not None:
            raise ValueError("a batch that carries its own seqs cannot be renumbered")
        if value < 0:
            raise ValueError(f"first_seq must not be negative, got {value}")
        self._first_seq = value

    @property
    def seqs(self) -> Any:
        """The seq of each quote as an int64 array (zeros while unnumbered)."""
        if self._seqs is not None:
            return self._seqs
        n = len(self.symbols)
        if not self._first_seq:
            return np.zeros(n, dtype=np.int64)
        return np.arange(self._first_seq, self._first_seq + n, dtype=np.int64)

    @classmethod
    def from_records(cls, records: Sequence[TopicRecord]) -> QuoteBatch:
        """The batch of quote records (``data`` holding bid, ask, bid_size, ask_size), seqs kept."""
        if isinstance(records, QuoteBatch):
            return records
        datas = [r.data for r in records]
        columns = (
            [r.key for r in records],
            [r.ts_ms for r in records],
            [d["bid"] for d in datas],
            [d["ask"] for d in datas],
            [d["bid_size"] for d in datas],
            [d["ask_size"] for d in datas],
        )
        seqs = [r.seq for r in records]
        if all(seq == seqs[0] + i for i, seq in enumerate(seqs)):
            return cls(*columns, first_seq=seqs[0] if seqs else 0)
        return cls(*columns, seqs=seqs)

    @staticmethod
    def concat(batches: Sequence[QuoteBatch]) -> QuoteBatch:
        """One batch of ``batches`` in order, their seqs kept."""
        if len(batches) == 1:
            return batches[0]
        if not batches:
            return QuoteBatch([], (), (), (), (), ())
        first_seq = batches[0].first_seq
        expected = first_seq
        consecutive = True
        symbols: list[str] = []
        for batch in batches:
            if batch._seqs is not None or batch.first_seq != expected:
                consecutive = False
            expected += len(batch)
            symbols.extend(batch.symbols)
        ts, bid, ask, bid_size, ask_size = (np.concatenate([getattr(b, name) for b in batches]) for name in _COLUMNS)
        if consecutive:
            return QuoteBatch(symbols, ts, bid, ask, bid_size, ask_size, first_seq)
        seqs = np.concatenate([b.seqs for b in batches])
        return QuoteBatch(symbols, ts, bid, ask, bid_size, ask_size, seqs=seqs if seqs.any() else None)

    def take(self, indices: Any) -> QuoteBatch:
        """The quotes at ``indices`` (an int array), in that order, unnumbered."""
        idx = np.asarray(indices, dtype=np.intp)
        symbols = self.symbols
        return QuoteBatch(
            [symbols[i] for i in idx.tolist()],
            self.ts_ms[idx],
            self.bid[idx],
            self.ask[idx],
            self.bid_size[idx],
            self.ask_size[idx],
        )

    def passing(self, min_ts_ms: int, max_ts_ms: int, positive_prices: bool) -> npt.NDArray[np.bool_] | None:
        """Which quotes pass SPEC section 1's numeric rules; None when every one does (no array then).

        The rules: ``min_ts_ms <= ts_ms <= max_ts_ms``; bid, ask, their sum and
        both sizes finite; with ``positive_prices``, bid and ask above 0.
        """
        bid, ask = self.bid, self.ask
        with np.errstate(all="ignore"):  # an overflowing sum is what the rule looks for
            ok = (self.ts_ms >= min_ts_ms) & (self.ts_ms <= max_ts_ms) & np.isfinite(bid + ask)
            ok &= np.isfinite(self.bid_size) & np.isfinite(self.ask_size)
            if positive_prices:
                ok &= (bid > 0.0) & (ask > 0.0)
        return None if ok.all() else ok

    def of_symbol(self, symbol: str) -> QuoteBatch:
        """The quotes of ``symbol``, seqs kept (the batch itself when every quote is one)."""
        picked = [i for i, s in enumerate(self.symbols) if s == symbol]
        if len(picked) == len(self.symbols):
            return self
        idx = np.asarray(picked, dtype=np.intp)
        ts, bid, ask, bid_size, ask_size = (getattr(self, name)[idx] for name in _COLUMNS)
        if self._seqs is None and not self._first_seq:
            return QuoteBatch([symbol] * len(picked), ts, bid, ask, bid_size, ask_size)
        return QuoteBatch([self.symbols[i] for i in picked], ts, bid, ask, bid_size, ask_size, seqs=self.seqs[idx])

    @property
    def last_seq(self) -> int:
        """The seq of the last quote (0 while unnumbered or empty)."""
        return self._seq(len(self.symbols) - 1) if self.symbols else 0

    def _seq(self, i: int) -> int:
        if self._seqs is not None:
            return int(self._seqs[i])
        return self._first_seq + i if self._first_seq else 0

    def __len__(self) -> int:
        return len(self.symbols)

    @overload
    def __getitem__(self, index: int) -> TopicRecord: ...
    @overload
    def __getitem__(self, index: slice) -> QuoteBatch: ...
    def __getitem__(self, index: int | slice) -> TopicRecord | QuoteBatch:
        n = len(self.symbols)
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step != 1:
                raise ValueError("a QuoteBatch slice must have step 1")
            stop = max(start, stop)
            ts, bid, ask, bid_size, ask_size = (getattr(self, name)[start:stop] for name in _COLUMNS)
            symbols = self.symbols[start:stop]
            if self._seqs is not None:
                return QuoteBatch(symbols, ts, bid, ask, bid_size, ask_size, seqs=self._seqs[start:stop])
            return QuoteBatch(symbols, ts, bid, ask, bid_size, ask_size, self._first_seq + start if self._first_seq else 0)
        i = index.__index__()
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("QuoteBatch index out of range")
        return self[i : i + 1].records()[0]

    def _rows(self) -> Iterator[tuple[str, int, float, float, float, float]]:
        """``(symbol, ts_ms, bid, ask, bid_size, ask_size)`` of each quote, as plain Python values."""
        columns = (self.ts_ms, self.bid, self.ask, self.bid_size, self.ask_size)
        return zip(self.symbols, *(c.tolist() for c in columns), strict=True)

    def __iter__(self) -> Iterator[TopicRecord]:
        return iter(self.records())

    def records(self) -> list[TopicRecord]:
        """Every quote as a :class:`TopicRecord` (for the consumers that want records)."""
        out = []
        for i, (symbol, ts, bid, ask, bid_size, ask_size) in enumerate(self._rows()):
            data = {"symbol": symbol, "bid": bid, "ask": ask, "bid_size": bid_size, "ask_size": ask_size, "ts_ms": ts}
            out.append(TopicRecord(ts, symbol, data, self._seq(i)))
        return out

    def __eq__(self, other: object) -> bool:
        """Equal to a batch of the same quotes and seqs, or to a list of the same records."""
        if isinstance(other, (list, tuple)):
            return self.records() == list(other)
        if not isinstance(other, QuoteBatch) and type(other).__name__ != "QuoteBatch":
            return NotImplemented
        return bool(
            self.symbols == other.symbols  # type: ignore[attr-defined]
            and np.array_equal(self.seqs, other.seqs)  # type: ignore[attr-defined]
            and all(np.array_equal(getattr(self, name), getattr(other, name)) for name in _COLUMNS)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"QuoteBatch({len(self.symbols)} quotes, first_seq={self._first_seq})"

    def __reduce__(self) -> tuple[Any, ...]:
        columns = (self.symbols, self.ts_ms, self.bid, self.ask, self.bid_size, self.ask_size)
        if self._seqs is not None:
            return (QuoteBatch, (*columns, 0, self._seqs))
        return (QuoteBatch, (*columns, self._first_seq))

    # --- JSON, written from the columns --------------------------------------

    @overload
    def payloads_json(self, framing: None = None) -> list[bytes]: ...
    @overload
    def payloads_json(self, framing: str) -> bytes: ...
    def payloads_json(self, framing: str | None = None) -> list[bytes] | bytes:
        """Each quote's six fields as a JSON object (what the ``json`` codec sends); with ``framing`` framed into one ``bytes``."""
        return _framed([line.encode() for line in self._data_json()], framing)

    def record_lines(self) -> bytes:
        """The SPEC section 1 form of every record as JSON lines, each ended by a newline."""
        return "".join(line + "\n" for line in self._record_json()).encode()

    def record_frames(self) -> bytes:
        """The raw-file log frames of every record's SPEC section 1 form: ``encode_checked_frames(record_lines())``."""
        return encode_checked_frames(self.record_lines())[0]

    def records_json(self, start: int = 0, stop: int | None = None, lead: bytes = b"[", tail: bytes = b"]") -> bytes:
        """The JSON array of the records' SPEC section 1 forms; of ``self[start:stop]`` between ``lead`` and ``tail``.

        ``lead=b","``, ``tail=b""`` give a piece of a longer array (the API's chunks).
        """
        part = self if start == 0 and stop is None else self[start:stop]
        return lead + ",".join(part._record_json()).encode() + tail

    def _data_json(self) -> list[str]:
        names: dict[str, str] = {}
        out = []
        for symbol, ts, bid, ask, bid_size, ask_size in self._rows():
            name = names.get(symbol)
            if name is None:
                name = names[symbol] = _json_str(symbol)
            out.append(
                f'{{"symbol":{name},"bid":{_json_float(bid)},"ask":{_json_float(ask)},'
                f'"bid_size":{_json_float(bid_size)},"ask_size":{_json_float(ask_size)},"ts_ms":{ts}}}'
            )
        return out

    def _record_json(self) -> list[str]:
        out = []
        names: dict[str, str] = {}
        for i, (symbol, data) in enumerate(zip(self.symbols, self._data_json(), strict=True)):
            name = names.get(symbol)
            if name is None:
                name = names[symbol] = _json_str(symbol)
            head = f'{{"ts_ms":{int(self.ts_ms[i])},"key":{name},"data":{data}'
            seq = self._seq(i)
            out.append(f'{head},"seq":{seq}}}' if seq else head + "}")
        return out


_COLUMNS = ("ts_ms", "bid", "ask", "bid_size", "ask_size")


def _json_str(value: str) -> str:
    return msgspec.json.encode(value).decode()


def _json_float(value: float) -> str:
    """``repr`` (the shortest text that reads back the same double); JSON has no NaN or infinity: ``null``."""
    return repr(value) if value - value == 0.0 else "null"


# --- any records as JSON ------------------------------------------------------

_JSON_DEPTH = 32
"""The nesting of a payload written by :func:`write_records_json` (deeper: the fallback)."""
_INT64 = (-(1 << 63), (1 << 63) - 1)


def write_records_json(
    records: Iterable[TopicRecord], fallback: Callable[[TopicRecord], bytes], start: int = 0, stop: int | None = None,
    lead: bytes = b"[", tail: bytes = b"]",
) -> bytes:  # fmt: skip
    """The JSON array of the records' SPEC section 1 forms; of ``records[start:stop]`` between ``lead`` and ``tail``.

    Records whose fields and payload are plain JSON data are written here
    (floats as ``repr`` writes them, as a :class:`QuoteBatch` does); any
    other is ``fallback(record)``, its JSON as ``bytes``.
    """
    items = records if isinstance(records, (list, tuple)) else list(records)
    return lead + b",".join(_record_json(r, fallback) for r in items[start:stop]) + tail


def write_record_lines(records: Iterable[TopicRecord], fallback: Callable[[TopicRecord], bytes]) -> bytes:
    """The records' SPEC section 1 forms as JSON lines, each ended by a newline (written as :func:`write_records_json` writes them)."""
    return b"".join(_record_json(r, fallback) + b"\n" for r in records)


def _record_json(record: TopicRecord, fallback: Callable[[TopicRecord], bytes]) -> bytes:
    if type(record) is TopicRecord and type(record.key) is str and _is_int64(record.ts_ms) and _is_int64(record.seq):
        data = _json_value(record.data, 0)
        if data is not None:
            head = f'{{"ts_ms":{record.ts_ms},"key":{_json_str(record.key)},"data":{data}'
            return (f'{head},"seq":{record.seq}}}' if record.seq else head + "}").encode()
    return fallback(record)


def _is_int64(value: object) -> bool:
    return type(value) is int and _INT64[0] <= value <= _INT64[1]


def _json_value(value: object, depth: int) -> str | None:
    """``value`` as JSON if it is plain JSON data (the compiled kernel's rule, exact types only), else None."""
    kind = type(value)
    if kind is float:
        return _json_float(value)  # type: ignore[arg-type]
    if kind is str:
        return _json_str(value)  # type: ignore[arg-type]
    if kind is int:
        return str(value) if _is_int64(value) else None
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if (kind is dict or kind is list or kind is tuple) and depth >= _JSON_DEPTH:
        return None
    parts = []
    if kind is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            text = _json_value(item, depth + 1) if type(key) is str else None
            if text is None:
                return None
            parts.append(f"{_json_str(key)}:{text}")
        return "{" + ",".join(parts) + "}"
    if kind is list or kind is tuple:
        for item in value:  # type: ignore[attr-defined]
            text = _json_value(item, depth + 1)
            if text is None:
                return None
            parts.append(text)
        return "[" + ",".join(parts) + "]"
    return None


_WS = b" \t\n\r"
_OPEN = re.compile(rb"[ \t\n\r]*\{")
_FIELD = re.compile(
    rb'[ \t\n\r]*"([^"\\]*)"[ \t\n\r]*:[ \t\n\r]*'
    rb'(?:"([^"\\\x00-\x1f\x7f-\xff]*)"|(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?))'
    rb"[ \t\n\r]*([,}])"
)
"""One ``"name": value`` of a plain quote object and what follows it; a symbol is printable ASCII, unescaped."""
_VALUE_FIELDS = {b"bid": 0, b"ask": 1, b"bid_size": 2, b"ask_size": 3}


class JsonQuoteParser:
    """Reads plain JSON quote objects straight into a :class:`QuoteBatch` (the ``json`` codec's fast path).

    ``parse(payloads)`` gives the batch of the payloads it could read and
    their positions in ``payloads``; the others (an escaped or non-ASCII
    symbol, unknown or repeated fields, a symbol of more than
    ``max_key_bytes`` bytes or none, any doubt) are left to the codec's
    general path. Values are exact: floats correctly rounded as ``float()``
    reads them, an integer read as a float as ``float(int)`` converts it.
    It checks types only; the rules of SPEC section 1 are the caller's
    (``QuoteCheck.check_columns``).
    """

    def __init__(self, max_key_bytes: int) -> None:
        if max_key_bytes < 1:
            raise ValueError(f"max_key_bytes must be at least 1, got {max_key_bytes}")
        self.max_key_bytes = max_key_bytes
        self._symbols: dict[bytes, str] = {}

    def parse(self, payloads: Sequence[bytes]) -> tuple[QuoteBatch, Any]:
        positions: list[int] = []
        rows: list[tuple[str, int, float, float, float, float]] = []
        for i, payload in enumerate(payloads):
            row = self._read(payload) if type(payload) is bytes else None
            if row is not None:
                positions.append(i)
                rows.append(row)
        columns: list[Any] = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(6)]
        return QuoteBatch(*columns), np.asarray(positions, dtype=np.int64)

    def _read(self, payload: bytes) -> tuple[str, int, float, float, float, float] | None:
        opened = _OPEN.match(payload)
        if opened is None:
            return None
        at = opened.end()
        symbol: str | None = None
        ts: int | None = None
        values: list[float | None] = [None, None, 0.0, 0.0]
        seen: set[bytes] = set()
        while True:
            field = _FIELD.match(payload, at)
            if field is None:
                return None
            name, text, number, end = field.groups()
            if name in seen:
                return None
            seen.add(name)
            if name == b"symbol":
                if text is None or not 0 < len(text) <= self.max_key_bytes:
                    return None
                symbol = self._symbols.get(text)
                if symbol is None:
                    if len(self._symbols) >= 1024:
                        self._symbols.clear()
                    symbol = self._symbols[text] = text.decode("ascii")
            elif name == b"ts_ms":
                if number is None or not number.isdigit() or len(number) > 18:
                    return None
                ts = int(number)
            elif name in _VALUE_FIELDS and number is not None:
                values[_VALUE_FIELDS[name]] = _number(number)
            else:
                return None
            at = field.end()
            if end == b"}":
                break
        if payload[at:].strip(_WS) or symbol is None or ts is None or values[0] is None or values[1] is None:
            return None
        return symbol, ts, values[0], values[1], values[2], values[3]  # type: ignore[return-value]


_NUMBER = rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_CSV_ROW = re.compile(rb"([\x20\x21\x23-\x2b\x2d-\x7e]+),(%s),(%s),(%s),(%s),(0|[1-9][0-9]{0,17})\Z" % ((_NUMBER,) * 4))
"""A plain quote row: a printable ASCII symbol without comma or quote, four JSON numbers, ``ts_ms`` digits."""


def _number(text: bytes) -> float:
    """``float()`` of a JSON number's text, an integer's as ``float(int)`` gives it (``-0`` is ``0.0``; past a double, inf)."""
    value = float(text)  # correctly rounded: the same double as float(int(text)) wherever that one exists
    return 0.0 if value == 0.0 and text.lstrip(b"-").isdigit() else value


class CsvQuoteParser:
    """Reads plain CSV quote rows (``symbol,bid,ask,bid_size,ask_size,ts_ms``) straight into a :class:`QuoteBatch`.

    Like :class:`JsonQuoteParser`: ``parse(payloads)`` gives the batch of
    the rows it could read and their positions; it takes only six unquoted
    fields, a printable ASCII symbol of 1 to ``max_key_bytes`` bytes, JSON
    numbers for the prices and sizes and at most 18 digits for ``ts_ms``, and
    leaves every other row (quoting, spaces, empty fields, ``nan``...) to the
    codec's general path. Values are exact: ``float()`` of the text, an
    integer as ``float(int)``.
    """

    def __init__(self, max_key_bytes: int) -> None:
        if max_key_bytes < 1:
            raise ValueError(f"max_key_bytes must be at least 1, got {max_key_bytes}")
        self.max_key_bytes = max_key_bytes

    def parse(self, payloads: Sequence[bytes]) -> tuple[QuoteBatch, Any]:
        positions: list[int] = []
        rows: list[tuple[str, int, float, float, float, float]] = []
        for i, payload in enumerate(payloads):
            row = _CSV_ROW.match(payload) if type(payload) is bytes else None
            if row is None or len(row[1]) > self.max_key_bytes:
                continue
            symbol, bid, ask, bid_size, ask_size, ts = row.groups()
            positions.append(i)
            rows.append((symbol.decode("ascii"), int(ts), _number(bid), _number(ask), _number(bid_size), _number(ask_size)))
        columns: list[Any] = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(6)]
        return QuoteBatch(*columns), np.asarray(positions, dtype=np.int64)


def _csv_field(text: str) -> str:
    """``text`` as a CSV field (RFC 4180: quoted when it holds a comma, a quote or a line break)."""
    if "," in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


@overload
def encode_csv_quotes(batch: QuoteBatch, framing: None = None) -> list[bytes]: ...
@overload
def encode_csv_quotes(batch: QuoteBatch, framing: str) -> bytes: ...
def encode_csv_quotes(batch: QuoteBatch, framing: str | None = None) -> list[bytes] | bytes:
    """One CSV row per quote, as the ``csv`` codec writes it: floats as ``repr``, the symbol quoted when RFC 4180 says so.

    With ``framing`` (``"lines"``, ``"length-prefixed"``) the rows come framed
    in one ``bytes``, as the framing's encoder would frame the list.
    Raises ``UnicodeEncodeError`` for a symbol that is not valid UTF-8 (a lone surrogate).
    """
    rows = [
        f"{_csv_field(symbol)},{bid!r},{ask!r},{bid_size!r},{ask_size!r},{ts}".encode()
        for symbol, ts, bid, ask, bid_size, ask_size in batch._rows()
    ]
    return _framed(rows, framing)


def _framed(payloads: list[bytes], framing: str | None) -> list[bytes] | bytes:
    """``payloads`` as they are (``None``), or framed into one ``bytes``."""
    if framing is None:
        return payloads
    if framing == "lines":
        return encode_lines(payloads)
    if framing == "length-prefixed":
        return encode_length_prefixed(payloads)
    raise ValueError(f"framing must be None, 'lines' or 'length-prefixed', not {framing!r}")


# --- framing ---------------------------------------------------------------


class LineDecoder:
    """Incremental decoder of ``lines`` framing (SPEC section 2).

    Frames end at ``\\n``; a trailing ``\\r`` is dropped; empty lines are
    skipped (keep-alives). A line longer than ``max_frame_bytes`` raises
    :class:`FrameTooLarge`, also while it is still arriving.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, spans: bool = False) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        self.max_frame_bytes = max_frame_bytes
        self.spans = spans
        """Accepted as the compiled decoder does; the twin always gives a list (a sequence of the frames too)."""
        self._pending = b""

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._pending + bytes(chunk) if self._pending else bytes(chunk)
        lines = data.split(b"\n")
        self._pending = lines.pop()
        limit = self.max_frame_bytes
        frames: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > limit:
                self._pending = b""
                raise FrameTooLarge(f"line of {len(line)} bytes exceeds max_frame_bytes={limit}", frames)
            if line:
                frames.append(line)
        # The pending tail may end in a "\r" that a later "\n" strips, so one
        # byte over the limit is allowed only when it is that "\r".
        size = len(self._pending)
        if size > limit and not (size == limit + 1 and self._pending.endswith(b"\r")):
            self._pending = b""
            raise FrameTooLarge(f"unterminated line of {size} bytes exceeds max_frame_bytes={limit}", frames)
        return frames


class LengthPrefixedDecoder:
    """Incremental decoder of ``length-prefixed`` framing: u32 BE length, payload."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, spans: bool = False) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        self.max_frame_bytes = max_frame_bytes
        self.spans = spans
        """Accepted as the compiled decoder does; the twin always gives a list (a sequence of the frames too)."""
        self._pending = b""

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._pending + bytes(chunk) if self._pending else bytes(chunk)
        frames: list[bytes] = []
        pos = 0
        end = len(data)
        limit = self.max_frame_bytes
        while end - pos >= 4:
            size = int.from_bytes(data[pos : pos + 4], "big")
            if size > limit:
                self._pending = b""
                raise FrameTooLarge(f"frame of {size} bytes exceeds max_frame_bytes={limit}", frames)
            if end - pos - 4 < size:
                break
            frames.append(data[pos + 4 : pos + 4 + size])
            pos += 4 + size
        self._pending = data[pos:]
        return frames


def encode_lines(payloads: Sequence[bytes]) -> bytes:
    """Frame a batch of payloads as lines (payloads must not contain ``\\n``)."""
    if not payloads:
        return b""
    for payload in payloads:
        if b"\n" in payload:
            raise ValueError("a lines payload must not contain a newline")
    return b"\n".join(payloads) + b"\n"


def encode_length_prefixed(payloads: Sequence[bytes]) -> bytes:
    """Frame a batch of payloads with u32 big-endian length prefixes."""
    parts = []
    for payload in payloads:
        size = len(payload)
        if size > _MAX_LENGTH_PREFIX:
            raise ValueError("payload too large for a u32 length prefix")
        parts.append(size.to_bytes(4, "big"))
        parts.append(bytes(payload))
    return b"".join(parts)


_CHECKED_HEADER = struct.Struct(">II")


def encode_checked_frames(lines: bytes) -> tuple[bytes, int]:
    """The log frames (u32 big-endian length, CRC-32, payload) of each ``\\n``-ended line of ``lines``.

    Returns ``(frames, count)``. A last line without its newline is an error:
    the caller hands whole lines (JSON lines, which hold no newline inside).
    """
    if not lines:
        return b"", 0
    if not lines.endswith(b"\n"):
        raise ValueError("the last line has no newline")
    payloads = lines.split(b"\n")
    payloads.pop()
    pack = _CHECKED_HEADER.pack
    parts: list[bytes] = []
    for payload in payloads:
        if len(payload) > _MAX_LENGTH_PREFIX:
            raise ValueError("payload too large for a u32 length prefix")
        parts.append(pack(len(payload), zlib.crc32(payload)))
        parts.append(payload)
    return b"".join(parts), len(payloads)


# --- ring buffers ----------------------------------------------------------


def _select(
    candidates: Iterable[tuple[int, int, int]],
    limit: int,
) -> tuple[list[int], bool]:
    """Pick the most recent ``limit`` of (ts_ms, seq, slot) and return slots ascending."""
    ordered = sorted(candidates)
    truncated = len(ordered) > limit
    if truncated:
        ordered = ordered[len(ordered) - limit :]
    return [slot for _, _, slot in ordered], truncated


class _RingIndex:
    """Slot bookkeeping shared by both ring layouts.

    Slots are written round-robin; ``_by_key`` keeps, per key, the seqs of its
    stored records in arrival order, so a key query touches only its own
    records. A seq maps to a slot as ``(seq - 1) % capacity`` because seqs
    arrive consecutively.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._count = 0
        self._first_seq = 0
        self._last_seq = 0
        self._by_key: dict[str, deque[int]] = {}
        self._keys: list[str | None] = [None] * capacity

    def __len__(self) -> int:
        return self._count

    @property
    def first_seq(self) -> int:
        return self._first_seq

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def _slot(self, seq: int) -> int:
        return (seq - 1) % self.capacity

    def _seq_of(self, slot: int) -> int:
        """The seq a slot holds: slots follow seqs round-robin from ``first_seq``'s."""
        cap = self.capacity
        return self._first_seq + (slot - (self._first_seq - 1) % cap) % cap

    def _claim(self, seq: int, key: str) -> int:
        """Reserve the slot for ``seq`` (evicting what it held) and index it."""
        if self._last_seq and seq != self._last_seq + 1:
            raise ValueError(f"seq {seq} does not follow {self._last_seq}")
        if seq < 1:
            raise ValueError(f"seq must be at least 1, got {seq}")
        slot = self._slot(seq)
        old_key = self._keys[slot]
        if old_key is not None:
            old = self._by_key[old_key]
            old.popleft()
            if not old:
                del self._by_key[old_key]
                self._key_gone(old_key)
            self._first_seq += 1
        else:
            self._count += 1
            if not self._first_seq:
                self._first_seq = seq
        self._keys[slot] = key
        bucket = self._by_key.get(key)
        if bucket is None:
            bucket = self._by_key[key] = deque()
        bucket.append(seq)
        self._last_seq = seq
        return slot

    def _key_gone(self, key: str) -> None:
        """Called when the ring no longer holds any record of ``key``."""

    def _candidate_seqs(self, key: str | None, since_seq: int | None) -> Iterable[int]:
        if key is not None:
            seqs: Iterable[int] = self._by_key.get(key, ())
        else:
            seqs = range(self._first_seq, self._last_seq + 1) if self._count else ()
        if since_seq is not None and since_seq >= self._first_seq:
            if key is not None:
                bucket = self._by_key.get(key)
                if not bucket:
                    return ()
                return [s for s in bucket if s > since_seq]
            return range(since_seq + 1, self._last_seq + 1)
        return seqs

    def _match(
        self,
        ts: Sequence[int] | np.ndarray,
        key: str | None,
        from_ms: int | None,
        to_ms: int | None,
        since_seq: int | None,
        limit: int,
    ) -> tuple[list[int], bool]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        cap = self.capacity
        out = []
        for seq in self._candidate_seqs(key, since_seq):
            slot = (seq - 1) % cap
            t = int(ts[slot])
            if (from_ms is None or from_ms <= t) and (to_ms is None or t < to_ms):
                out.append((t, seq, slot))
        return _select(out, limit)

    def _keys_from(self, ts: Sequence[int] | np.ndarray) -> list[tuple[str, int, int]]:
        """``(key, records, last_ts_ms)`` for each key held, sorted by key."""
        cap = self.capacity
        return sorted(
            (key, len(seqs), max(int(ts[(s - 1) % cap]) for s in seqs)) for key, seqs in self._by_key.items()
        )

    def _latest_slots(self, ts: Sequence[int] | np.ndarray, key: str | None) -> list[int]:
        cap = self.capacity
        keys = [key] if key is not None else list(self._by_key)
        slots = []
        for k in keys:
            seqs = self._by_key.get(k)
            if not seqs:
                continue
            best = max(seqs, key=lambda s: (int(ts[(s - 1) % cap]), s))
            slots.append((int(ts[(best - 1) % cap]), best, (best - 1) % cap))
        slots.sort()
        return [slot for _, _, slot in slots]


class RecordRing(_RingIndex):
    """Fixed-capacity store of any records; the oldest is overwritten.

    Records must be appended with consecutive ``seq`` numbers. Queries follow
    SPEC section 4: ``from_ms <= ts_ms < to_ms``, ``seq > since_seq``,
    ascending by ``ts_ms`` (then ``seq``), the most recent ``limit``.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._records: list[TopicRecord | None] = [None] * capacity
        self._ts = [0] * capacity

    def append(self, records: Sequence[TopicRecord]) -> None:
        for record in records:
            slot = self._claim(record.seq, record.key)
            self._records[slot] = record
            self._ts[slot] = record.ts_ms

    def query(
        self,
        key: str | None = None,
        from_ms: int | None = None,
        to_ms: int | None = None,
        since_seq: int | None = None,
        limit: int = 1000,
    ) -> tuple[list[TopicRecord], bool]:
        slots, truncated = self._match(self._ts, key, from_ms, to_ms, since_seq, limit)
        return [self._records[s] for s in slots], truncated  # type: ignore[misc]

    def latest(self, key: str | None = None) -> list[TopicRecord]:
        return [self._records[s] for s in self._latest_slots(self._ts, key)]  # type: ignore[misc]

    def keys(self) -> list[tuple[str, int, int]]:
        return self._keys_from(self._ts)


class QuoteRing(_RingIndex):
    """Columnar ring for quotes: numpy columns, 44 bytes a quote plus the key (a slot's seq follows from ``first_seq``).

    Keys are interned once in a symbol table; a slot holds a 4-byte symbol id.
    Query results are rebuilt as :class:`TopicRecord` with the six quote fields.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._sym = np.zeros(capacity, dtype=np.int32)
        self._ts = np.zeros(capacity, dtype=np.int64)
        self._bid = np.zeros(capacity, dtype=np.float64)
        self._ask = np.zeros(capacity, dtype=np.float64)
        self._bid_size = np.zeros(capacity, dtype=np.float64)
        self._ask_size = np.zeros(capacity, dtype=np.float64)
        self._symbols: list[str] = []
        self._symbol_ids: dict[str, int] = {}
        self._free_ids: list[int] = []  # ids of keys no longer held, reused first: the table stays bounded

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (the symbol table excluded)."""
        return sum(
            a.nbytes for a in (self._sym, self._ts, self._bid, self._ask, self._bid_size, self._ask_size)
        )

    def _symbol_id(self, key: str) -> int:
        sid = self._symbol_ids.get(key)
        if sid is None:
            if self._free_ids:
                sid = self._free_ids.pop()
                self._symbols[sid] = key
            else:
                sid = len(self._symbols)
                self._symbols.append(key)
            self._symbol_ids[key] = sid
        return sid

    def _key_gone(self, key: str) -> None:
        sid = self._symbol_ids.pop(key)
        self._symbols[sid] = ""
        self._free_ids.append(sid)

    def append(self, records: Sequence[TopicRecord]) -> None:
        """Append quote records (``data`` must hold bid, ask, bid_size, ask_size), or a numbered :class:`QuoteBatch`."""
        if isinstance(records, QuoteBatch) and records._seqs is None:
            if records.symbols:
                self.append_columns(
                    records.first_seq, records.symbols, records.ts_ms.tolist(), records.bid.tolist(),
                    records.ask.tolist(), records.bid_size.tolist(), records.ask_size.tolist(),
                )  # fmt: skip
            return
        for record in records:
            data = record.data
            # Read every field before claiming a slot: a bad record leaves the ring as it was.
            values = (float(data["bid"]), float(data["ask"]), float(data["bid_size"]), float(data["ask_size"]))
            slot = self._claim(record.seq, record.key)
            self._sym[slot] = self._symbol_id(record.key)
            self._ts[slot] = record.ts_ms
            self._bid[slot], self._ask[slot], self._bid_size[slot], self._ask_size[slot] = values

    def append_columns(
        self,
        first_seq: int,
        keys: Sequence[str],
        ts_ms: Sequence[int] | np.ndarray,
        bid: Sequence[float] | np.ndarray,
        ask: Sequence[float] | np.ndarray,
        bid_size: Sequence[float] | np.ndarray,
        ask_size: Sequence[float] | np.ndarray,
    ) -> None:
        """Append a decoded batch given as columns; seqs are ``first_seq, first_seq+1, ...``."""
        n = len(keys)
        if not (len(ts_ms) == len(bid) == len(ask) == len(bid_size) == len(ask_size) == n):
            raise ValueError("columns differ in length")
        for i in range(n):
            seq = first_seq + i
            slot = self._claim(seq, keys[i])
            self._sym[slot] = self._symbol_id(keys[i])
            self._ts[slot] = ts_ms[i]
            self._bid[slot] = bid[i]
            self._ask[slot] = ask[i]
            self._bid_size[slot] = bid_size[i]
            self._ask_size[slot] = ask_size[i]

    def _gather(self, slots: list[int]) -> QuoteBatch:
        """The quotes of ``slots``, in that order, with their seqs: answers are columns too."""
        idx = np.asarray(slots, dtype=np.intp)
        symbols = self._symbols
        return QuoteBatch(
            [symbols[self._sym[s]] for s in slots],
            self._ts[idx],
            self._bid[idx],
            self._ask[idx],
            self._bid_size[idx],
            self._ask_size[idx],
            seqs=[self._seq_of(s) for s in slots],
        )

    def query(
        self,
        key: str | None = None,
        from_ms: int | None = None,
        to_ms: int | None = None,
        since_seq: int | None = None,
        limit: int = 1000,
    ) -> tuple[QuoteBatch, bool]:
        slots, truncated = self._match(self._ts, key, from_ms, to_ms, since_seq, limit)
        return self._gather(slots), truncated

    def latest(self, key: str | None = None) -> QuoteBatch:
        return self._gather(self._latest_slots(self._ts, key))

    def keys(self) -> list[tuple[str, int, int]]:
        return self._keys_from(self._ts)


# --- OHLC aggregation ------------------------------------------------------


class _Bucket:
    __slots__ = ("start", "open", "high", "low", "close", "ticks", "open_ts", "close_ts")

    def __init__(self, start: int, ts: int, price: float) -> None:
        self.start = start
        self.open = self.high = self.low = self.close = price
        self.ticks = 1
        self.open_ts = self.close_ts = ts

    def add(self, ts: int, price: float) -> None:
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        if ts < self.open_ts:
            self.open_ts = ts
            self.open = price
        if ts >= self.close_ts:
            self.close_ts = ts
            self.close = price
        self.ticks += 1


class OhlcAggregator:
    """Mid-price OHLC candles per (key, timeframe), fed batches of quotes.

    ``timeframes_ms`` lists the candle widths; buckets start at
    ``ts - ts % width`` (UTC-aligned). For each key and timeframe the buckets
    within ``hold_buckets`` widths of the newest one stay open to
    out-of-order quotes; a quote for an older bucket is *late*: it is counted
    in ``late_counts[timeframe_index]`` and reported, never applied.

    Within a bucket, ``open`` is the earliest quote by ``ts_ms`` (the first to
    arrive among equal timestamps) and ``close`` the latest (the last to
    arrive among equal timestamps).

    With ``coalesce_open`` the newest bucket of each key and timeframe (the
    open candle) is not reported by :meth:`update` while it stays the newest:
    its changes are held until :meth:`take_open`, and a held change goes out
    with the batch that opens a newer bucket. So a batch over many symbols
    reports only the candles it closed or changed behind the newest.
    """

    def __init__(self, timeframes_ms: Sequence[int], hold_buckets: int = 2, coalesce_open: bool = False) -> None:
        if not timeframes_ms:
            raise ValueError("at least one timeframe is needed")
        if any(int(tf) < 1 for tf in timeframes_ms):
            raise ValueError("timeframes must be positive")
        if hold_buckets < 1:
            raise ValueError("hold_buckets must be at least 1")
        self.timeframes_ms = [int(tf) for tf in timeframes_ms]
        self.hold_buckets = hold_buckets
        self.coalesce_open = bool(coalesce_open)
        self.late_counts = [0] * len(self.timeframes_ms)
        # (key, tf_index) -> buckets ascending by start
        self._state: dict[tuple[str, int], list[_Bucket]] = {}
        self._held_keys: set[str] = set()
        self._held_open: dict[tuple[str, int], None] = {}  # (key, tf_index) whose open candle changed since take_open
        self.batch_keys: list[str] = []
        """The distinct keys of the last :meth:`update`, in order of first appearance."""

    def update(
        self,
        keys: Sequence[str],
        ts_ms: Sequence[int] | np.ndarray,
        bids: Sequence[float] | np.ndarray,
        asks: Sequence[float] | np.ndarray,
    ) -> tuple[list[tuple[str, int, int, float, float, float, float, int, bool]], list[tuple[int, int]]]:
        """Apply a batch of quotes given as columns.

        Returns ``(candles, late)``: each candle that changed, once, as
        ``(key, timeframe_ms, start_ms, open, high, low, close, ticks, is_open)``
        where ``is_open`` says the bucket is the newest of its key and
        timeframe; and ``(batch_index, timeframe_index)`` for each late quote.
        :attr:`batch_keys` then lists the batch's distinct keys.
        """
        n = len(keys)
        self.batch_keys = []
        if not (len(ts_ms) == len(bids) == len(asks) == n):
            raise ValueError("columns differ in length")
        changed: dict[tuple[str, int, int], _Bucket] = {}
        late: list[tuple[int, int]] = []
        hold = self.hold_buckets
        tfs = self.timeframes_ms
        state = self._state
        for i in range(n):
            key = keys[i]
            ts = int(ts_ms[i])
            price = (float(bids[i]) + float(asks[i])) / 2.0
            for t, width in enumerate(tfs):
                start = ts - ts % width
                buckets = state.get((key, t))
                if buckets is None:
                    bucket = _Bucket(start, ts, price)
                    state[(key, t)] = [bucket]
                    self._held_keys.add(key)
                    changed[(key, t, start)] = bucket
                    continue
                newest = buckets[-1].start
                if start > newest:
                    if (key, t) in self._held_open:  # the open candle's held changes go out now that it closes
                        changed.setdefault((key, t, newest), buckets[-1])
                    buckets.append(_Bucket(start, ts, price))
                    floor = start - (hold - 1) * width
                    while buckets[0].start < floor:
                        buckets.pop(0)
                    changed[(key, t, start)] = buckets[-1]
                    continue
                if start < newest - (hold - 1) * width:
                    self.late_counts[t] += 1
                    late.append((i, t))
                    continue
                pos = bisect.bisect_left([b.start for b in buckets], start)
                if pos < len(buckets) and buckets[pos].start == start:
                    buckets[pos].add(ts, price)
                else:
                    buckets.insert(pos, _Bucket(start, ts, price))
                changed[(key, t, start)] = buckets[pos]
        candles = []
        for (key, t, start), b in changed.items():
            is_open = state[(key, t)][-1].start == start
            if is_open and self.coalesce_open:
                self._held_open.setdefault((key, t))
                continue
            candles.append((key, tfs[t], start, b.open, b.high, b.low, b.close, b.ticks, is_open))
        self.batch_keys = list(dict.fromkeys(keys))
        return candles, late

    def take_open(self, key: str | None = None) -> list[tuple[str, int, int, float, float, float, float, int, bool]]:
        """The open candles changed since they were last taken (of ``key`` only, if given), each once.

        With ``coalesce_open``, what the processor publishes every interval
        (and, for one key, before it forgets it). In order of first change.
        """
        if key is None:
            slots = list(self._held_open)
            self._held_open.clear()
        else:
            slots = [(key, t) for t in range(len(self.timeframes_ms)) if (key, t) in self._held_open]
            for slot in slots:
                del self._held_open[slot]
        tfs = self.timeframes_ms
        candles = []
        for k, t in slots:
            b = self._state[(k, t)][-1]
            candles.append((k, tfs[t], b.start, b.open, b.high, b.low, b.close, b.ticks, True))
        return candles

    def update_records(
        self, records: Sequence[TopicRecord]
    ) -> tuple[list[tuple[str, int, int, float, float, float, float, int, bool]], list[tuple[int, int]]]:
        """Like :meth:`update`, reading key, ts_ms and data bid/ask of quote records."""
        return self.update(
            [r.key for r in records],
            [r.ts_ms for r in records],
            [r.data["bid"] for r in records],
            [r.data["ask"] for r in records],
        )

    @property
    def key_count(self) -> int:
        """Keys whose buckets are held."""
        return len(self._held_keys)

    def forget(self, key: str) -> bool:
        """Drop every bucket held for ``key`` (True if it had any), held open changes included; its next quote starts afresh."""
        slots = [(key, t) for t in range(len(self.timeframes_ms)) if (key, t) in self._state]
        for slot in slots:
            del self._state[slot]
            self._held_open.pop(slot, None)
        self._held_keys.discard(key)
        return bool(slots)

    def seed(self, key: str, timeframe_ms: int, start_ms: int, open: float, high: float, low: float, close: float, ticks: int) -> bool:
        """Hold a stored candle as the bucket ``start_ms`` of ``key``: quotes that follow extend it.

        For a symbol coming back after :meth:`forget` (a key with no held open
        changes), so that its candles go on from what was stored instead of
        starting afresh. The candle's
        first and last quote times are not stored: later quotes of the bucket
        set its close, none replaces its open. Returns False, changing
        nothing, when that bucket is held already, is older than the held
        window or does not start on the timeframe's grid (a multiple of
        ``timeframe_ms``: it is no candle of this timeframe).
        """
        t = self.timeframes_ms.index(timeframe_ms)
        width = self.timeframes_ms[t]
        if ticks < 1:
            raise ValueError("a stored candle has at least one tick")
        if start_ms % width:
            return False
        buckets = self._state.setdefault((key, t), [])
        self._held_keys.add(key)
        if buckets and start_ms < buckets[-1].start - (self.hold_buckets - 1) * width:
            return False
        starts = [b.start for b in buckets]
        pos = bisect.bisect_left(starts, start_ms)
        if pos < len(buckets) and buckets[pos].start == start_ms:
            return False
        bucket = _Bucket(start_ms, start_ms, float(open))
        bucket.high, bucket.low, bucket.close, bucket.ticks = float(high), float(low), float(close), int(ticks)
        buckets.insert(pos, bucket)
        floor = buckets[-1].start - (self.hold_buckets - 1) * width
        while buckets[0].start < floor:
            buckets.pop(0)
        return True

    def candle(self, key: str, timeframe_ms: int, start_ms: int) -> tuple[float, float, float, float, int] | None:
        """The held candle ``(open, high, low, close, ticks)``, or None."""
        t = self.timeframes_ms.index(timeframe_ms)
        for b in self._state.get((key, t), ()):
            if b.start == start_ms:
                return (b.open, b.high, b.low, b.close, b.ticks)
        return None


from gauss._pycodecs import *  # noqa: E402, F403 - the binary quote codecs (they need QuoteBatch above)
