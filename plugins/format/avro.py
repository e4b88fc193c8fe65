"""``avro`` codec: one schemaless Avro binary datum per payload (SPEC section 2).

The writer schema is option ``schema`` (:class:`AvroConfig`; a ``.avsc``
path, default the shipped ``schemas/quote.avsc``, record ``gauss.Quote``). Both ends must use the same
schema: a schemaless datum does not carry it. A datum must be consumed to
its last byte; trailing bytes make the payload bad.

PERF: when the schema's binary layout is exactly the shipped quote schema
(a record of ``symbol`` string, ``bid``/``ask``/``bid_size``/``ask_size``
double, ``ts_ms`` long, in that order), :class:`QuoteLayout` encodes and
decodes datums with ``struct`` and a varint helper instead of fastavro's
per-datum call (bench/README.md, Codecs). It only takes the plain cases
(a dict with exactly typed values, a varint of at most 9 bytes, strict
UTF-8, no trailing bytes); anything else goes to fastavro, which decides and
explains, so both paths give the same bytes, the same datums and the same
rejections (tests/plugins/format/test_avro_quotes.py checks it against
fastavro with hypothesis).

PERF: for that layout, :meth:`AvroCodec.decode_quotes` reads datums straight
into columns with the compiled ``AvroQuoteParser`` (what it refuses takes
the general path, which decides and explains), and :meth:`AvroCodec.encode`
writes a ``QuoteBatch`` from its columns with ``encode_avro_quotes``
(tests/plugins/format/test_binary_quote_columns.py holds both to fastavro).
"""

from __future__ import annotations

import io
import json
import logging
import struct
from pathlib import Path
from typing import Any, Callable, Sequence

import fastavro
from fastavro.schema import SchemaParseException, UnknownType
from gauss_plugins.format._payload import (
    ColumnEncode,
    EncodeFailureLog,
    PayloadConfig,
    QuoteFields,
    QuotePath,
    QuoteValues,
    check_fields,
    decode_records,
    plain_quote,
)

from gauss.core import AvroQuoteParser, QuoteBatch, TopicRecord, encode_avro_quotes
from gauss.errors import ConfigError, DecodeError
from gauss.quotes import TS_RANGE
from gauss.records import Rejected
from gauss.resources import resource_path

__all__ = ["AvroCodec", "AvroConfig", "QuoteLayout", "load_schema"]

log = logging.getLogger(__name__)

# What fastavro raises on a corrupt or truncated datum.
_READ_ERRORS = (EOFError, ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error, MemoryError)


# The binary layout of schemas/quote.avsc: (field name, Avro type) in order.
QUOTE_FIELDS = (
    ("symbol", "string"),
    ("bid", "double"),
    ("ask", "double"),
    ("bid_size", "double"),
    ("ask_size", "double"),
    ("ts_ms", "long"),
)

_LONG_MIN = -(1 << 63)
_LONG_MAX = (1 << 63) - 1
_PRICES = struct.Struct("<4d")
_unpack_prices = _PRICES.unpack_from
_pack_prices = _PRICES.pack
# Zigzag varints of 0..63 and -64..-1, the string lengths of nearly every symbol.
# _HIGH_BITS[k]: the high bit of each of the first k bytes (little-endian int).
_HIGH_BITS = [int.from_bytes(b"\x80" * k, "little") for k in range(9)]
_SMALL_VARINTS = {n: bytes([((n << 1) ^ (n >> 63)) & 0xFF]) for n in range(-64, 64)}


def is_quote_schema(schema: Any) -> bool:
    """Whether ``schema`` (parsed) has exactly the binary layout of the shipped quote schema."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return False
    fields = schema.get("fields")
    if not isinstance(fields, list) or len(fields) != len(QUOTE_FIELDS):
        return False
    return all(
        isinstance(field, dict) and field.get("name") == name and field.get("type") == kind
        for field, (name, kind) in zip(fields, QUOTE_FIELDS, strict=True)
    )


def _varint(n: int) -> bytes:
    """The zigzag varint of the Avro long ``n`` (``_LONG_MIN <= n <= _LONG_MAX``)."""
    small = _SMALL_VARINTS.get(n)
    if small is not None:
        return small
    z = ((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


class QuoteLayout:
    """Encoder and decoder of quote-schema datums without fastavro (the plain cases only)."""

    @staticmethod
    def encode(data: Any) -> bytes | None:
        """The datum of ``data``, or ``None`` when fastavro must decide (odd types, out of range)."""
        quote = plain_quote(data)
        if quote is None:
            return None
        symbol, bid, ask, bid_size, ask_size, ts = quote
        if not _LONG_MIN <= ts <= _LONG_MAX:
            return None
        try:
            raw = symbol.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: fastavro's error
            return None
        size = len(raw)
        head = _SMALL_VARINTS.get(size) or _varint(size)
        return head + raw + _pack_prices(bid, ask, bid_size, ask_size) + _varint(ts)

    @staticmethod
    def decode(payload: bytes) -> dict[str, Any] | None:
        """The datum of ``payload``, or ``None`` when fastavro must decide (bad, truncated, long varints)."""
        q = QuoteLayout.read(payload)
        if q is None:
            return None
        return {"symbol": q.symbol, "bid": q.bid, "ask": q.ask, "bid_size": q.bid_size, "ask_size": q.ask_size, "ts_ms": q.ts_ms}

    @staticmethod
    def read(payload: bytes) -> QuoteValues | None:
        """The six values of the datum in ``payload``, or ``None`` when fastavro must decide."""
        end = len(payload)
        if not end:
            return None
        # string length: zigzag varint (one byte for any symbol under 64 bytes)
        b = payload[0]
        if b < 0x80:
            size = (b >> 1) ^ -(b & 1)
            pos = 1
        else:
            got = _read_varint(payload, 0, end)
            if got is None:
                return None
            size, pos = got
        if size < 0:
            return None
        stop = pos + size
        if stop + 33 > end:  # 4 doubles and at least one varint byte must follow
            return None
        try:
            symbol = str(payload[pos:stop], "utf-8")
        except UnicodeDecodeError:
            return None
        bid, ask, bid_size, ask_size = _unpack_prices(payload, stop)
        start = stop + 32
        tail = end - start
        if tail <= 8:
            # the varint must fill the tail: every byte but the last has its high bit set
            x = int.from_bytes(payload[start:end], "little")
            if x & _HIGH_BITS[tail] != _HIGH_BITS[tail - 1]:
                return None
            x &= 0x7F7F7F7F7F7F7F7F  # 7-bit groups, packed together in three steps
            x = (x & 0x007F007F007F007F) | ((x & 0x7F007F007F007F00) >> 1)
            x = (x & 0x00003FFF00003FFF) | ((x & 0x3FFF00003FFF0000) >> 2)
            n = (x & 0x0FFFFFFF) | ((x & 0x0FFFFFFF00000000) >> 4)
            ts = (n >> 1) ^ -(n & 1)
        else:
            got = _read_varint(payload, start, end)
            if got is None or got[1] != end:
                return None
            ts = got[0]
        return QuoteFields(symbol, bid, ask, ts, bid_size, ask_size)


def _read_record(payload: bytes) -> TopicRecord | None:
    """The record of a plain quote datum, or ``None`` for fastavro and make_record to decide."""
    datum = QuoteLayout.decode(payload)
    if datum is None:
        return None
    symbol = datum["symbol"]
    ts = datum["ts_ms"]
    return TopicRecord(ts, symbol, datum) if symbol and ts in TS_RANGE else None  # else make_record explains


def _read_varint(payload: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """``(value, next position)`` of the zigzag varint at ``pos``; ``None`` if truncated or over 9 bytes."""
    n = 0
    shift = 0
    limit = min(end, pos + 9)
    while pos < limit:
        b = payload[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
    return None


def load_schema(path: Path) -> Any:
    """The parsed schema in ``path``; raises ``ConfigError`` naming ``schema``."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("schema", f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError("schema", f"{str(path)!r} is not JSON: {exc}") from None
    try:
        return fastavro.parse_schema(raw)
    except (SchemaParseException, UnknownType, ValueError, TypeError, KeyError) as exc:
        raise ConfigError("schema", f"{str(path)!r} is not a valid Avro schema: {exc}") from None


class AvroConfig(PayloadConfig):
    """The ``avro`` codec's options; a record schema must have the key and timestamp fields."""

    schema: Path | None = None
    """The writer schema (``.avsc``); None: the shipped ``schemas/quote.avsc``."""

    def __post_init__(self) -> None:
        # A relative path is checked once the registry has made it absolute (against the config file's directory).
        if self.schema is None or self.schema.is_absolute():
            _schema(self)


def _schema(config: AvroConfig) -> Any:
    """The parsed schema ``config`` names; raises ``ConfigError`` naming the option at fault."""
    schema = load_schema(config.schema if config.schema is not None else resource_path("schemas/quote.avsc"))
    if isinstance(schema, dict) and schema.get("type") == "record":
        check_fields(config, [field["name"] for field in schema.get("fields", ())], "schema record")
    return schema


class AvroCodec(QuotePath):
    """Codec and FormatSerializer for schemaless Avro datums."""

    name = "avro"
    text = False
    Config = AvroConfig

    def __init__(self, schema: Any, key_field: str = "symbol", ts_field: str = "ts_ms") -> None:
        self.schema = schema
        self.key_field = key_field
        self.ts_field = ts_field
        self._encode_failures = EncodeFailureLog(log, self.name)
        self.quote_layout = is_quote_schema(schema)

    @classmethod
    def from_config(cls, config: AvroConfig) -> AvroCodec:
        return cls(_schema(config), config.key_field, config.ts_field)

    @property
    def read_quote(self) -> Callable[[bytes], QuoteValues | None] | None:
        plain = self.quote_layout and (self.key_field, self.ts_field) == ("symbol", "ts_ms")
        return QuoteLayout.read if plain else None

    def deserialize(self, payload: bytes) -> Any:
        """The datum of one payload; raises ``DecodeError``."""
        if self.quote_layout:
            datum = QuoteLayout.decode(payload)
            if datum is not None:
                return datum
        return self._read(payload)

    def _read(self, payload: bytes) -> Any:
        """The datum of one payload by fastavro; raises ``DecodeError``."""
        stream = io.BytesIO(payload)
        try:
            datum = fastavro.schemaless_reader(stream, self.schema, None)
        except _READ_ERRORS as exc:
            raise DecodeError(f"bad Avro datum: {str(exc) or type(exc).__name__}") from None
        left = len(payload) - stream.tell()
        if left:
            raise DecodeError(f"bad Avro datum: {left} bytes after the datum")
        return datum

    def decode(self, payloads: Sequence[bytes]) -> tuple[list[TopicRecord], list[Rejected]]:
        """Records of the good datums, and the bad ones with the reason."""
        quick = _read_record if self.read_quote is not None else None
        return decode_records(payloads, self.deserialize, self.key_field, self.ts_field, quick)

    @property
    def column_parser(self) -> type[AvroQuoteParser] | None:
        return AvroQuoteParser if self.read_quote is not None else None

    @property
    def column_encoder(self) -> ColumnEncode | None:
        return encode_avro_quotes if self.quote_layout else None

    def encode(self, records: Sequence[TopicRecord]) -> list[bytes]:
        """One datum per record's ``data``; a record that does not fit the schema is logged and skipped.

        PERF: quotes as columns in the shipped layout are written from the columns
        (``encode_avro_quotes``), no dict each; a batch holding a symbol it cannot
        write (not a string, a lone surrogate) takes the record path, which logs and skips it.
        """
        if self.quote_layout and isinstance(records, QuoteBatch):
            try:
                return encode_avro_quotes(records)
            except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
                pass
        return self.serialize([record.data for record in records])

    def serialize(self, datas: Sequence[Any]) -> list[bytes]:
        schema = self.schema
        write = fastavro.schemaless_writer
        out: list[bytes] = []
        stream = io.BytesIO()
        fast_encode = QuoteLayout.encode if self.quote_layout else None
        for data in datas:
            if fast_encode is not None:
                datum = fast_encode(data)
                if datum is not None:
                    out.append(datum)
                    continue
            stream.seek(0)
            stream.truncate()
            try:
                write(stream, schema, data)
            except (TypeError, ValueError, KeyError, AttributeError, OverflowError, struct.error) as exc:
                self._encode_failures.record(data, exc)
                continue
            out.append(stream.getvalue())
        return out
