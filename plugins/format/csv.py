"""``csv`` codec: one row per payload, no header (SPEC section 2).

Columns default to the quote's ``symbol,bid,ask,bid_size,ask_size,ts_ms``
and are configurable (``columns``). On decode the key column stays a
string; every other column that parses as a number becomes an ``int`` or a
``float``, an empty field is left out of the payload, anything else stays a
string. Floats are written with ``repr`` so they round-trip exactly.
Quoting follows RFC 4180 (the ``csv`` module's rules): a field holding a
comma, a quote or a line break is quoted. A line break inside a field
cannot ride on ``lines`` framing; use ``length-prefixed`` for such data.

PERF: with the default columns, key and timestamp fields, plain rows take a
fast path: a quote of exact types (str symbol needing no quoting, float
prices, int ``ts_ms``) is written with one f-string, and a row of six
non-empty unquoted fields whose prices hold a ``.`` and whose ``ts_ms`` is
ASCII digits is read with ``str.split``, ``float`` and ``int``. Anything
else takes the general path, so both give the same bytes, payloads and
rejections (tests/plugins/format/test_csv_quotes.py checks it).
"""

from __future__ import annotations

import csv as _csv
import logging
from typing import Any, Callable, Sequence

from gauss_plugins.format._payload import (
    ColumnEncode,
    EncodeFailureLog,
    FieldName,
    PayloadConfig,
    QuoteFields,
    QuotePath,
    QuoteValues,
    decode_records,
    plain_quote,
)

from gauss.core import QUOTE_FIELDS, CsvQuoteParser, QuoteBatch, TopicRecord, encode_csv_quotes
from gauss.errors import ConfigError, DecodeError
from gauss.quotes import TS_RANGE
from gauss.records import Rejected

__all__ = ["CsvCodec", "CsvConfig", "DEFAULT_COLUMNS"]

log = logging.getLogger(__name__)

DEFAULT_COLUMNS: tuple[str, ...] = tuple(QUOTE_FIELDS)

_float_repr = float.__repr__


def _number_or_text(text: str) -> Any:
    # PERF: float() first; a failed int() attempt on every price costs an exception.
    try:
        number = float(text)
    except ValueError:
        return text
    if "." in text or "e" in text or "E" in text or "n" in text or "N" in text:
        return number
    try:
        return int(text)  # exact, also past 2**53
    except ValueError:
        return number


def _quote(text: str) -> str:
    if "," in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _format(value: Any) -> str:
    kind = type(value)
    if kind is float:
        return _float_repr(value)
    if kind is str:
        return _quote(value)
    if kind is int:
        return str(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        raise TypeError(f"cannot write boolean {value!r} as a CSV field")
    if isinstance(value, float):
        return _float_repr(float(value))
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        return _quote(str(value))
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a CSV field")


def _read_values(payload: bytes) -> QuoteValues | None:
    """The six values of a plain default-column row, or ``None`` for the general path to decide."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if '"' in text or "\n" in text or "\r" in text:
        return None
    fields = text.split(",")
    if len(fields) != 6:
        return None
    symbol, bid, ask, bid_size, ask_size, ts_text = fields
    if (
        not symbol
        or "." not in bid
        or "." not in ask
        or "." not in bid_size
        or "." not in ask_size
        or not ts_text.isascii()
        or not ts_text.isdigit()
    ):
        return None
    try:
        values = QuoteFields(symbol, float(bid), float(ask), int(ts_text), float(bid_size), float(ask_size))
    except ValueError:
        return None
    if values.ts_ms not in TS_RANGE:  # zero or past 9999: the general path explains
        return None
    return values


def _read_quote(payload: bytes) -> TopicRecord | None:
    """The record of a plain default-column row, or ``None`` for the general path to decide."""
    values = _read_values(payload)
    if values is None:
        return None
    data = {"symbol": values.symbol, "bid": values.bid, "ask": values.ask, "bid_size": values.bid_size,
            "ask_size": values.ask_size, "ts_ms": values.ts_ms}  # fmt: skip
    return TopicRecord(values.ts_ms, values.symbol, data)


def _write_quote(data: Any) -> bytes | None:
    """The row of a quote of exact types needing no quoting, or ``None`` for the general path."""
    quote = plain_quote(data)
    if quote is None:
        return None
    symbol, bid, ask, bid_size, ask_size, ts = quote
    if "," in symbol or '"' in symbol or "\n" in symbol or "\r" in symbol:
        return None
    try:
        return f"{symbol},{bid!r},{ask!r},{bid_size!r},{ask_size!r},{ts}".encode()
    except UnicodeEncodeError:
        return None


class CsvConfig(PayloadConfig):
    """The ``csv`` codec's options; the key and timestamp fields must be columns."""

    columns: tuple[FieldName, ...] = DEFAULT_COLUMNS
    """The payload field of each column, in row order (no repeats)."""

    def __post_init__(self) -> None:
        columns = self.columns
        if len(set(columns)) != len(columns):
            raise ConfigError("columns", f"must not repeat a column, got {list(columns)!r}")
        for option, field in (("key_field", self.key_field), ("ts_field", self.ts_field)):
            if field not in columns:
                raise ConfigError(option, f"{field!r} is not one of the columns ({', '.join(columns)})")


class CsvCodec(QuotePath):
    """Codec and FormatSerializer for CSV rows."""

    name = "csv"
    text = True
    Config = CsvConfig

    def __init__(
        self, columns: Sequence[str] = DEFAULT_COLUMNS, key_field: str = "symbol", ts_field: str = "ts_ms"
    ) -> None:
        self.columns = tuple(columns)
        self.key_field = key_field
        self.ts_field = ts_field
        self._key_index = self.columns.index(key_field)
        self.quote_layout = self.columns == DEFAULT_COLUMNS and key_field == "symbol" and ts_field == "ts_ms"
        self._encode_failures = EncodeFailureLog(log, self.name)

    @classmethod
    def from_config(cls, config: CsvConfig) -> CsvCodec:
        return cls(config.columns, config.key_field, config.ts_field)

    def _split(self, payload: bytes) -> list[str]:
        text = payload.decode("utf-8")
        if '"' in text or "\n" in text or "\r" in text:
            rows = list(_csv.reader((text,), strict=True))
            if len(rows) != 1:
                raise ValueError(f"expected one CSV row, got {len(rows)}")
            fields = rows[0]
        else:
            fields = text.split(",")
        if len(fields) != len(self.columns):
            raise ValueError(f"expected {len(self.columns)} columns ({','.join(self.columns)}), got {len(fields)}")
        return fields

    def deserialize(self, payload: bytes) -> dict[str, Any]:
        """The payload dict of one row; raises ``DecodeError``."""
        try:
            fields = self._split(payload)
        except UnicodeDecodeError as exc:
            raise DecodeError(f"bad UTF-8: {exc}") from None
        except (ValueError, _csv.Error) as exc:
            raise DecodeError(f"bad CSV: {exc}") from None
        data = {column: _number_or_text(text) for column, text in zip(self.columns, fields, strict=True) if text}
        key_field = self.key_field
        if key_field in data:
            data[key_field] = fields[self._key_index]
        return data

    def decode(self, payloads: Sequence[bytes]) -> tuple[list[TopicRecord], list[Rejected]]:
        """Records of the good rows, and the bad ones with the reason."""
        quick = _read_quote if self.quote_layout else None
        return decode_records(payloads, self.deserialize, self.key_field, self.ts_field, quick)

    @property
    def read_quote(self) -> Callable[[bytes], QuoteValues | None] | None:
        return _read_values if self.quote_layout else None

    @property
    def column_parser(self) -> type[CsvQuoteParser] | None:
        return CsvQuoteParser if self.quote_layout else None

    @property
    def column_encoder(self) -> ColumnEncode | None:
        return encode_csv_quotes if self.quote_layout else None

    def encode(self, records: Sequence[TopicRecord]) -> list[bytes]:
        """One row per record's ``data``; a record that cannot be written is logged and skipped.

        PERF: quotes as columns are written from the columns (``encode_csv_quotes``), no dict each.
        """
        if self.quote_layout and isinstance(records, QuoteBatch):
            try:
                return encode_csv_quotes(records)
            except UnicodeEncodeError:  # a symbol that cannot be UTF-8: the general path skips and logs it
                pass
        return self.serialize([record.data for record in records])

    def serialize(self, datas: Sequence[Any]) -> list[bytes]:
        columns = self.columns
        out: list[bytes] = []
        fast = self.quote_layout
        for data in datas:
            if fast:
                row = _write_quote(data)
                if row is not None:
                    out.append(row)
                    continue
            try:
                get = data.get
                out.append(",".join([_format(get(column)) for column in columns]).encode("utf-8"))
            except (TypeError, ValueError, AttributeError, UnicodeEncodeError) as exc:
                self._encode_failures.record(data, exc)
        return out
