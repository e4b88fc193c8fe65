"""Data frames as Grafana reads them: Arrow IPC files for QueryData, JSON for stream packets.

Only the types the plugin SDK decodes are written (GRAFANA.md, SDK
``data/arrow.go``): ``timestamp[ns]`` without a time zone (the SDK reads every
timestamp as nanoseconds), ``float64``, ``int64`` and ``utf8``. A frame is
one symbol's wide time series; each value field carries the ``symbol`` label.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

__all__ = [
    "CANDLE_FIELDS",
    "QUOTE_FIELDS",
    "Field",
    "Frame",
    "candle_frame",
    "quote_frame",
    "to_arrow",
    "to_json",
]

FieldType = Literal["time", "float64", "int64", "string"]

_ARROW_TYPES: dict[str, pa.DataType] = {
    "time": pa.timestamp("ns"),
    "float64": pa.float64(),
    "int64": pa.int64(),
    "string": pa.string(),
}
# Field metadata ``tstype``: the frontend's FieldType for each Arrow type.
_TSTYPES = {"time": "time", "float64": "number", "int64": "number", "string": "string"}
# Stream packets (SDK data/frame_json.go): the schema's ``typeInfo.frame`` names the Go type.
_GO_TYPES = {"time": "time.Time", "float64": "float64", "int64": "int64", "string": "string"}

CANDLE_FIELDS: tuple[tuple[str, FieldType], ...] = (
    ("open", "float64"),
    ("high", "float64"),
    ("low", "float64"),
    ("close", "float64"),
    ("ticks", "int64"),
)
QUOTE_FIELDS: tuple[tuple[str, FieldType], ...] = (
    ("bid", "float64"),
    ("ask", "float64"),
    ("mid", "float64"),
    ("bid_size", "float64"),
    ("ask_size", "float64"),
)


@dataclass
class Field:
    """One column: ``values`` are ms since the epoch for ``time``; ``None`` is a null."""

    name: str
    type: FieldType
    values: list[Any]
    labels: dict[str, str] | None = None
    config: dict[str, Any] | None = None

    @property
    def nullable(self) -> bool:
        return any(value is None for value in self.values)


@dataclass
class Frame:
    """A data frame: ``name``, the query's ``ref_id``, columns of equal length, optional FrameMeta."""

    name: str
    ref_id: str
    fields: list[Field]
    meta: dict[str, Any] | None = field(default=None)

    def __len__(self) -> int:
        return len(self.fields[0].values) if self.fields else 0


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def to_arrow(frame: Frame) -> bytes:
    """Encode ``frame`` as an Arrow IPC *file* (``ARROW1`` at both ends), the form QueryData returns."""
    lengths = {len(f.values) for f in frame.fields}
    if len(lengths) > 1:
        raise ValueError(f"frame {frame.name!r}: fields differ in length {sorted(lengths)}")
    arrow_fields = []
    columns = []
    for f in frame.fields:
        metadata = {"name": f.name, "tstype": _TSTYPES[f.type]}
        if f.labels:
            metadata["labels"] = _json_text(f.labels)
        if f.config:
            metadata["config"] = _json_text(f.config)
        arrow_type = _ARROW_TYPES[f.type]
        values = f.values
        if f.type == "time":
            values = [None if v is None else int(v) * 1_000_000 for v in values]
        elif f.type == "float64":
            values = [None if v is None else float(v) for v in values]
        arrow_fields.append(pa.field(f.name, arrow_type, nullable=f.nullable, metadata=metadata))
        columns.append(pa.array(values, type=arrow_type))
    schema_meta = {"name": frame.name, "refId": frame.ref_id}
    if frame.meta:
        schema_meta["meta"] = _json_text(frame.meta)
    schema = pa.schema(arrow_fields, metadata=schema_meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(pa.record_batch(columns, schema=schema))
    return bytes(sink.getvalue().to_pybytes())


def to_json(frame: Frame, *, schema: bool = True) -> bytes:
    """Encode ``frame`` in the SDK's JSON form for a stream packet (schema optional, data always).

    Times are epoch milliseconds; NaN and ±Inf are written as ``null`` and
    listed under ``entities`` so the frontend restores them.
    """
    values: list[list[Any]] = []
    entities: list[dict[str, list[int]] | None] = []
    for f in frame.fields:
        column, special = _json_column(f)
        values.append(column)
        entities.append(special or None)
    data: dict[str, Any] = {"values": values}
    if any(entities):
        data["entities"] = entities
    packet: dict[str, Any] = {"data": data}
    if schema:
        packet = {"schema": _json_schema(frame), "data": data}
    return _json_text(packet).encode("utf-8")


def _json_schema(frame: Frame) -> dict[str, Any]:
    fields = []
    for f in frame.fields:
        type_info: dict[str, Any] = {"frame": _GO_TYPES[f.type]}
        if f.nullable:
            type_info["nullable"] = True
        entry: dict[str, Any] = {"name": f.name, "type": _TSTYPES[f.type], "typeInfo": type_info}
        if f.labels:
            entry["labels"] = f.labels
        if f.config:
            entry["config"] = f.config
        fields.append(entry)
    schema: dict[str, Any] = {"name": frame.name}
    if frame.ref_id:
        schema["refId"] = frame.ref_id
    if frame.meta:
        schema["meta"] = frame.meta
    schema["fields"] = fields
    return schema


def _json_column(f: Field) -> tuple[list[Any], dict[str, list[int]]]:
    if f.type == "time":
        return [None if v is None else int(v) for v in f.values], {}
    if f.type != "float64":
        return list(f.values), {}
    column: list[Any] = []
    special: dict[str, list[int]] = {}
    for index, value in enumerate(f.values):
        if value is not None and not math.isfinite(value):
            name = "NaN" if math.isnan(value) else ("Inf" if value > 0 else "NegInf")
            special.setdefault(name, []).append(index)
            column.append(None)
        else:
            column.append(value)
    return column, special


def _number(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def candle_frame(symbol: str, records: Iterable[Mapping[str, Any]], *, ref_id: str = "", meta: dict[str, Any] | None = None) -> Frame:
    """A wide frame ``time, open, high, low, close, ticks`` of one symbol's candle records.

    Records are TopicRecord JSON objects (``ts_ms``, ``key``, ``data``); a later
    version of the same candle (same ``ts_ms``) replaces the earlier one.
    """
    latest: dict[int, Mapping[str, Any]] = {}
    for record in records:
        latest[int(record["ts_ms"])] = record.get("data") or {}
    times = sorted(latest)
    labels = {"symbol": symbol}
    fields = [Field("time", "time", times)]
    for name, kind in CANDLE_FIELDS:
        if kind == "int64":
            column: list[Any] = [_int(latest[t].get(name)) for t in times]
        else:
            column = [_number(latest[t], name) for t in times]
        fields.append(Field(name, kind, column, labels=labels))
    return Frame(symbol, ref_id, fields, meta)


def quote_frame(symbol: str, records: Sequence[Mapping[str, Any]], *, ref_id: str = "", meta: dict[str, Any] | None = None) -> Frame:
    """A wide frame ``time, bid, ask, mid, bid_size, ask_size`` of one symbol's quote records."""
    times = [int(record["ts_ms"]) for record in records]
    payloads = [record.get("data") or {} for record in records]
    labels = {"symbol": symbol}
    fields = [Field("time", "time", times)]
    for name, kind in QUOTE_FIELDS:
        if name == "mid":
            column = [_mid(p) for p in payloads]
        else:
            column = [_number(p, name) for p in payloads]
        fields.append(Field(name, kind, column, labels=labels))
    return Frame(symbol, ref_id, fields, meta)


def _mid(payload: Mapping[str, Any]) -> float | None:
    bid, ask = _number(payload, "bid"), _number(payload, "ask")
    return None if bid is None or ask is None else (bid + ask) / 2


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value)
