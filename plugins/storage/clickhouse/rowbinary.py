"""RowBinary rows: how a data format maps to table columns, encoded and decoded exactly."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import msgspec

from gauss.core import TopicRecord
from gauss.records import DataFormat, encode_json

from .client import sql_name

__all__ = ["RowLayout", "layout_for", "read_string"]

def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return _varint(len(raw)) + raw


def read_string(buf: bytes, pos: int) -> tuple[str, int]:
    shift = 0
    length = 0
    while True:
        byte = buf[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    end = pos + length
    return buf[pos:end].decode("utf-8", "surrogatepass"), end


_json_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str
    """``key`` (equals the record's key), ``ts`` (equals its ts_ms), ``f64``, ``i64`` or ``str``."""


class RowLayout:
    """How one data format maps to table columns, and RowBinary both ways.

    Every table has ``topic, key, ts_ms, seq``, the typed columns of its
    format, then ``typed`` (1 when the payload fitted the typed columns) and
    ``payload`` (JSON: the fields beyond the typed ones, or the whole payload
    when ``typed`` is 0). A payload thus always comes back exactly as it went
    in, and SQL users still get plain columns for quotes and candles.
    """

    def __init__(self, data_format: DataFormat, fields: Sequence[_Field]) -> None:
        self.format = data_format
        self.fields = tuple(fields)
        self.numeric = tuple(f for f in fields if f.kind in ("f64", "i64"))
        self.strings = tuple(f for f in fields if f.kind == "str")
        self._known = frozenset(f.name for f in fields)
        self._struct = struct.Struct("<qQ" + "".join("d" if f.kind == "f64" else "q" for f in self.numeric))
        self._head = struct.Struct("<qQ")
        self._checks: tuple[tuple[str, type], ...] = tuple(
            (f.name, float if f.kind == "f64" else int) for f in self.numeric
        )

    @property
    def columns(self) -> list[tuple[str, str]]:
        cols = [("topic", "String"), ("key", "String"), ("ts_ms", "Int64"), ("seq", "UInt64")]
        cols += [(f.name, "Float64" if f.kind == "f64" else "Int64") for f in self.numeric]
        cols += [(f.name, "String") for f in self.strings]
        cols += [("typed", "UInt8"), ("payload", "String")]
        return cols

    def _fits(self, record: TopicRecord) -> bool:
        data = record.data
        if type(data) is not dict:
            return False
        for f in self.fields:
            if f.name not in data:
                return False
            value = data[f.name]
            if f.kind == "key":
                if value != record.key or type(value) is not str:
                    return False
            elif f.kind == "ts":
                if type(value) is not int or value != record.ts_ms:
                    return False
            elif f.kind == "f64":
                if type(value) is not float:
                    return False
            elif f.kind == "i64":
                if type(value) is not int or not -(1 << 63) <= value < (1 << 63):
                    return False
            elif type(value) is not str:
                return False
        return True

    def encode(self, topic: str, records: Iterable[TopicRecord]) -> bytes:
        """The RowBinary body inserting ``records`` (of ``topic``)."""
        topic_bytes = _string(topic)
        pack = self._struct.pack
        head = self._head.pack
        numeric = [f.name for f in self.numeric]
        strings = [f.name for f in self.strings]
        known = self._known
        zeros = [0.0 if f.kind == "f64" else 0 for f in self.numeric]
        key_cache: dict[str, bytes] = {}
        parts: list[bytes] = []
        append = parts.append
        for record in records:
            key = record.key
            key_bytes = key_cache.get(key)
            if key_bytes is None:
                key_bytes = _string(key)
                if len(key_cache) < 10_000:
                    key_cache[key] = key_bytes
            append(topic_bytes)
            append(key_bytes)
            if self.fields and self._fits(record):
                data = record.data
                append(pack(record.ts_ms, record.seq, *[data[n] for n in numeric]))
                for name in strings:
                    append(_string(data[name]))
                extra = {k: v for k, v in data.items() if k not in known} if len(data) != len(known) else None
                append(b"\x01")
                append(_string(encode_json(extra).decode()) if extra else b"\x00")
            else:
                append(pack(record.ts_ms, record.seq, *zeros) if self.numeric else head(record.ts_ms, record.seq))
                for _ in strings:
                    append(b"\x00")
                append(b"\x00")
                append(_string(encode_json(record.data).decode()))
        return b"".join(parts)

    def decode(self, buf: bytes, *, with_topic: bool = False) -> list[TopicRecord]:
        """Records from a RowBinary answer to ``SELECT <select_list>`` (``with_topic``: from an insert body)."""
        out: list[TopicRecord] = []
        unpack = self._struct.unpack_from
        size = self._struct.size
        numeric = self.numeric
        strings = self.strings
        fields = self.fields
        pos = 0
        end = len(buf)
        while pos < end:
            if with_topic:
                _, pos = read_string(buf, pos)
            key, pos = read_string(buf, pos)
            values = unpack(buf, pos)
            pos += size
            str_values = []
            for _ in strings:
                value, pos = read_string(buf, pos)
                str_values.append(value)
            typed = buf[pos]
            pos += 1
            payload, pos = read_string(buf, pos)
            ts_ms, seq = values[0], values[1]
            if typed:
                by_name: dict[str, Any] = {f.name: values[2 + i] for i, f in enumerate(numeric)}
                by_name.update((f.name, str_values[i]) for i, f in enumerate(strings))
                data: dict[str, Any] = {}
                for f in fields:
                    if f.kind == "key":
                        data[f.name] = key
                    elif f.kind == "ts":
                        data[f.name] = ts_ms
                    else:
                        data[f.name] = by_name[f.name]
                if payload:
                    data.update(_json_decode(payload))
                out.append(TopicRecord(ts_ms, key, data, seq))
            else:
                out.append(TopicRecord(ts_ms, key, _json_decode(payload), seq))
        return out

    @property
    def select_list(self) -> str:
        """The columns :meth:`decode` reads, in order."""
        return ", ".join(sql_name(name) for name, _ in self.columns[1:])


_QUOTE = RowLayout(
    DataFormat.QUOTE,
    [
        _Field("symbol", "key"),
        _Field("bid", "f64"),
        _Field("ask", "f64"),
        _Field("bid_size", "f64"),
        _Field("ask_size", "f64"),
        _Field("ts_ms", "ts"),
    ],
)
_CANDLE = RowLayout(
    DataFormat.CANDLE,
    [
        _Field("symbol", "key"),
        _Field("timeframe", "str"),
        _Field("ts_ms", "ts"),
        _Field("open", "f64"),
        _Field("high", "f64"),
        _Field("low", "f64"),
        _Field("close", "f64"),
        _Field("ticks", "i64"),
    ],
)
_ANY = RowLayout(DataFormat.ANY, [])


def layout_for(data_format: DataFormat) -> RowLayout:
    """The column layout of a data format's table."""
    return {DataFormat.QUOTE: _QUOTE, DataFormat.CANDLE: _CANDLE, DataFormat.ANY: _ANY}[DataFormat(data_format)]

