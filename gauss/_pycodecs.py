"""Pure-Python twins of the compiled binary quote codecs (``_codecs.pxi``, part of ``_core.pyx``).

Same names, same refusals, same bytes: the parsers read datums of the
shipped avro schema and protobuf message by hand (``struct`` for the
doubles), exactly as the compiled readers do, and refuse what they refuse.
"""

from __future__ import annotations

import re
import struct
from typing import Any, Callable, Sequence, overload

import numpy as np

from gauss._pycore import QuoteBatch, _framed

__all__ = ["AvroQuoteParser", "encode_avro_quotes", "ProtobufQuoteParser", "encode_protobuf_quotes"]

_PRICES = struct.Struct("<4d")
_DOUBLE = struct.Struct("<d")
_ZERO_DOUBLE = bytes(8)
_PRINTABLE = re.compile(rb"[\x20-\x7e]+")
_Quote = tuple[bytes, int, float, float, float, float]
"""``(symbol, ts_ms, bid, ask, bid_size, ask_size)`` of one datum, the symbol as its bytes."""


def _varint_at(payload: bytes, i: int, n: int) -> tuple[int, int] | None:
    """``(value, end)`` of the base-128 varint at ``payload[i]``; None if truncated or more than 64 bits.

    At most 10 bytes and the 10th holding bit 63 only: fastavro and protobuf
    silently drop what lies beyond, so such a varint is left to them.
    """
    value = 0
    shift = 0
    while i < n:
        b = payload[i]
        i += 1
        if shift == 63:
            return (value | (b << 63), i) if b <= 1 else None
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
    return None


def _varint(value: int) -> bytes:
    """The base-128 varint of ``0 <= value < 2**64``."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _utf8(symbol: Any) -> bytes:
    """The UTF-8 of a batch's symbol; ``TypeError`` if not a ``str``, ``UnicodeEncodeError`` for a lone surrogate."""
    if not isinstance(symbol, str):
        raise TypeError(f"symbol must be a string, got {symbol!r}")
    return symbol.encode("utf-8")


def _rows(batch: QuoteBatch) -> Any:
    if not isinstance(batch, QuoteBatch):
        raise TypeError(f"batch must be a QuoteBatch, got {type(batch).__name__}")
    return batch._rows()


class _BinaryQuoteParser:
    """What the binary quote parsers share: the key bound, the symbol cache, the loop over payloads.

    ``parse(payloads)`` gives the batch of the payloads the format's reader
    took and their positions in ``payloads``; it takes ``bytes`` only and a
    printable ASCII symbol of 1 to ``max_key_bytes`` bytes, and leaves any
    doubt to the codec's general path. It checks types only; the rules of
    SPEC section 1 are the caller's (``QuoteCheck.check_columns``).
    """

    def __init__(self, max_key_bytes: int) -> None:
        if max_key_bytes < 1:
            raise ValueError(f"max_key_bytes must be at least 1, got {max_key_bytes}")
        self.max_key_bytes = max_key_bytes
        self._symbols: dict[bytes, str] = {}

    def _parse(self, payloads: Sequence[bytes], read: Callable[[bytes, int], _Quote | None]) -> tuple[QuoteBatch, Any]:
        positions: list[int] = []
        rows: list[_Quote] = []
        max_key = self.max_key_bytes
        for k, payload in enumerate(payloads):
            q = read(payload, max_key) if type(payload) is bytes else None
            if q is not None:
                positions.append(k)
                rows.append(q)
        columns: list[Any] = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(6)]
        symbols = self._symbols
        for row, raw in enumerate(columns[0]):
            symbol = symbols.get(raw)
            if symbol is None:
                if len(symbols) >= 1024:
                    symbols.clear()
                symbol = symbols[raw] = raw.decode("ascii")
            columns[0][row] = symbol
        return QuoteBatch(*columns), np.asarray(positions, dtype=np.int64)


# --- avro --------------------------------------------------------------------


def _read_avro_quote(payload: bytes, max_key: int) -> _Quote | None:
    """A datum of schemas/quote.avsc filling ``payload`` exactly: length, symbol, 4 doubles, zigzag ts_ms."""
    n = len(payload)
    got = _varint_at(payload, 0, n)
    if got is None:
        return None
    z, i = got
    if z == 0 or z & 1 or z >> 1 > max_key:  # an empty or negative length, or too long
        return None
    size = z >> 1
    if n - i < size + 33 or not _PRINTABLE.fullmatch(payload, i, i + size):
        return None
    bid, ask, bid_size, ask_size = _PRICES.unpack_from(payload, i + size)
    got = _varint_at(payload, i + size + 32, n)
    if got is None or got[1] != n:
        return None
    z = got[0]
    return payload[i : i + size], (z >> 1) ^ -(z & 1), bid, ask, bid_size, ask_size


class AvroQuoteParser(_BinaryQuoteParser):
    """Reads schemaless Avro datums of the shipped quote schema straight into a :class:`QuoteBatch` (the ``avro`` codec's fast path).

    It refuses what is not exactly that layout consumed to its last byte, a
    varint of more than 64 bits, a symbol not printable ASCII; fastavro decides those.
    """

    def parse(self, payloads: Sequence[bytes]) -> tuple[QuoteBatch, Any]:
        return self._parse(payloads, _read_avro_quote)


@overload
def encode_avro_quotes(batch: QuoteBatch, framing: None = None) -> list[bytes]: ...
@overload
def encode_avro_quotes(batch: QuoteBatch, framing: str) -> bytes: ...
def encode_avro_quotes(batch: QuoteBatch, framing: str | None = None) -> list[bytes] | bytes:
    """One schemaless datum of schemas/quote.avsc per quote: fastavro's ``schemaless_writer`` bytes.

    ``framing``: as :func:`~gauss._pycore.encode_csv_quotes`.
    Raises ``TypeError`` for a symbol that is not a ``str``, ``UnicodeEncodeError`` for a lone surrogate.
    """
    heads: dict[str, bytes] = {}
    out = []
    for symbol, ts, bid, ask, bid_size, ask_size in _rows(batch):
        head = heads.get(symbol)
        if head is None:
            raw = _utf8(symbol)
            head = heads[symbol] = _varint(len(raw) << 1) + raw
        out.append(
            head + _PRICES.pack(bid, ask, bid_size, ask_size) + _varint(((ts << 1) ^ (ts >> 63)) & 0xFFFFFFFFFFFFFFFF)
        )
    return _framed(out, framing)


# --- protobuf ----------------------------------------------------------------

_PB_SYMBOL = 0x0A  # field 1, length-delimited
_PB_TS = 0x30  # field 6, varint
_PB_DOUBLES = {0x11: 0, 0x19: 1, 0x21: 2, 0x29: 3}
"""The tags of fields 2 to 5 (fixed64) and their place in bid, ask, bid_size, ask_size."""
_PB_DOUBLE_TAGS = [bytes([tag]) for tag in _PB_DOUBLES]
_PB_VARINT = rb"([\x80-\xff]{0,8}[\x00-\x7f]|[\x80-\xff]{9}[\x00\x01])"  # at most 64 bits
_PB_FULL_TAIL = re.compile(rb"\x11.{8}\x19.{8}\x21.{8}\x29.{8}\x30" + _PB_VARINT, re.DOTALL)
_PB_TAIL = re.compile(rb"(?:\x11(.{8}))?(?:\x19(.{8}))?(?:\x21(.{8}))?(?:\x29(.{8}))?\x30" + _PB_VARINT, re.DOTALL)
"""What follows the symbol of a message written in field order (as the encoders write it): the doubles there, ts_ms."""
_PB_PRICES = struct.Struct("<dxdxdxd")
"""The four doubles of a full tail, from the byte after its first tag."""
_unpack_double = _DOUBLE.unpack


def _read_proto_quote(payload: bytes, max_key: int) -> _Quote | None:
    """A proto3 ``gauss.Quote`` of known fields each at most once, in any order; symbol and ts_ms present.

    PERF: a message in field order with a one-byte symbol length (what the
    encoders write for a symbol under 128 bytes) is matched by one regular
    expression; any other goes through the field loop, which reads the same
    values from it.
    """
    size = payload[1] if len(payload) > 2 and payload[0] == _PB_SYMBOL else 0x80
    if 0 < size <= max_key and size < 0x80:
        symbol = payload[2 : 2 + size]
        if len(symbol) == size and _PRINTABLE.fullmatch(symbol):
            tail = _PB_FULL_TAIL.fullmatch(payload, 2 + size)
            if tail is not None:  # all four doubles: one unpack
                bid, ask, bid_size, ask_size = _PB_PRICES.unpack_from(payload, 3 + size)
                stamp = tail[1]
            else:
                tail = _PB_TAIL.fullmatch(payload, 2 + size)
                if tail is None:
                    return _read_proto_fields(payload, max_key)
                *doubles, stamp = tail.groups()
                bid, ask, bid_size, ask_size = (0.0 if raw is None else _unpack_double(raw)[0] for raw in doubles)
            u = 0
            for shift, b in enumerate(stamp):
                u |= (b & 0x7F) << (7 * shift)
            return symbol, u - (1 << 64) if u >> 63 else u, bid, ask, bid_size, ask_size
    return _read_proto_fields(payload, max_key)


def _read_proto_fields(payload: bytes, max_key: int) -> _Quote | None:
    """:func:`_read_proto_quote` of any message, field by field."""
    n = len(payload)
    i = 0
    seen: set[int] = set()
    values = [0.0, 0.0, 0.0, 0.0]
    start = size = ts = 0
    while i < n:
        tag = payload[i]
        i += 1
        if tag in seen:  # a repeat: the last one wins, which the library decides
            return None
        seen.add(tag)
        if tag == _PB_SYMBOL:
            got = _varint_at(payload, i, n)
            if got is None:
                return None
            size, i = got
            if size == 0 or size > max_key or size > n - i or not _PRINTABLE.fullmatch(payload, i, i + size):
                return None
            start = i
            i += size
        elif tag == _PB_TS:
            got = _varint_at(payload, i, n)
            if got is None:
                return None
            u, i = got
            ts = u - (1 << 64) if u >> 63 else u
        elif tag in _PB_DOUBLES and n - i >= 8:
            values[_PB_DOUBLES[tag]] = _DOUBLE.unpack_from(payload, i)[0]
            i += 8
        else:  # an unknown field, a wrong wire type, a tag of more than one byte, a truncated double
            return None
    if _PB_SYMBOL not in seen or _PB_TS not in seen:  # no symbol (empty) or no ts_ms (zero)
        return None
    return payload[start : start + size], ts, values[0], values[1], values[2], values[3]


class ProtobufQuoteParser(_BinaryQuoteParser):
    """Reads proto3 ``gauss.Quote`` messages straight into a :class:`QuoteBatch` (the ``protobuf`` codec's fast path).

    An absent double is 0.0, as the library reads it; a message with an
    unknown field, a wrong wire type, a repeated field, no symbol or no
    ``ts_ms``, a varint of more than 64 bits or a symbol not printable ASCII
    is left to the library.
    """

    def parse(self, payloads: Sequence[bytes]) -> tuple[QuoteBatch, Any]:
        return self._parse(payloads, _read_proto_quote)


@overload
def encode_protobuf_quotes(batch: QuoteBatch, framing: None = None) -> list[bytes]: ...
@overload
def encode_protobuf_quotes(batch: QuoteBatch, framing: str) -> bytes: ...
def encode_protobuf_quotes(batch: QuoteBatch, framing: str | None = None) -> list[bytes] | bytes:
    """One proto3 ``gauss.Quote`` per quote: the library's ``SerializeToString()`` bytes.

    ``framing``: as :func:`~gauss._pycore.encode_csv_quotes`.
    Implicit presence: an empty symbol, a double whose bits are all zero
    (0.0, not -0.0) and a zero ``ts_ms`` are not written; fields in number order.
    Raises ``TypeError`` for a symbol that is not a ``str``, ``UnicodeEncodeError`` for a lone surrogate.
    """
    heads: dict[str, bytes] = {}
    out = []
    for symbol, ts, *prices in _rows(batch):
        head = heads.get(symbol)
        if head is None:
            raw = _utf8(symbol)
            head = heads[symbol] = b"\x0a" + _varint(len(raw)) + raw if raw else b""
        parts = [head]
        for tag, price in zip(_PB_DOUBLE_TAGS, prices, strict=True):
            bits = _DOUBLE.pack(price)
            if bits != _ZERO_DOUBLE:
                parts += (tag, bits)
        if ts:
            parts += (b"\x30", _varint(ts & 0xFFFFFFFFFFFFFFFF))
        out.append(b"".join(parts))
    return _framed(out, framing)
