"""``avro`` codec: one schemaless Avro binary datum per payload (SPEC section 2).

The writer schema is ``schema`` (a ``.avsc`` path; default the shipped
``schemas/quote.avsc``, record ``gauss.Quote``). Both ends must use the same
schema: a schemaless datum does not carry it. A datum must be consumed to
its last byte; trailing bytes make the payload bad.
"""

from __future__ import annotations

import io
import json
import logging
import struct
from pathlib import Path
from typing import Any, Sequence

import fastavro
from fastavro.schema import SchemaParseException, UnknownType
from gauss_plugins.format._payload import EncodeFailureLog, make_record, read_field_options

from gauss.core import TopicRecord
from gauss.errors import ConfigError, DecodeError
from gauss.records import Rejected
from gauss.registry import Options
from gauss.resources import resource_path

__all__ = ["AvroCodec", "create", "load_schema"]

log = logging.getLogger(__name__)

# What fastavro raises on a corrupt or truncated datum.
_READ_ERRORS = (EOFError, ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error, MemoryError)


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


class AvroCodec:
    """Codec and FormatSerializer for schemaless Avro datums."""

    name = "avro"
    text = False

    def __init__(self, schema: Any, key_field: str = "symbol", ts_field: str = "ts_ms") -> None:
        self.schema = schema
        self.key_field = key_field
        self.ts_field = ts_field
        self._encode_failures = EncodeFailureLog(log, self.name)

    def deserialize(self, payload: bytes) -> Any:
        """The datum of one payload; raises ``DecodeError``."""
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
        records: list[TopicRecord] = []
        rejected: list[Rejected] = []
        key_field = self.key_field
        ts_field = self.ts_field
        for payload in payloads:
            try:
                records.append(make_record(self.deserialize(payload), key_field, ts_field))
            except ValueError as exc:
                rejected.append(Rejected(bytes(payload), str(exc)))
        return records, rejected

    def encode(self, records: Sequence[TopicRecord]) -> list[bytes]:
        """One datum per record's ``data``; a record that does not fit the schema is logged and skipped."""
        return self.serialize([record.data for record in records])

    def serialize(self, datas: Sequence[Any]) -> list[bytes]:
        schema = self.schema
        write = fastavro.schemaless_writer
        out: list[bytes] = []
        stream = io.BytesIO()
        for data in datas:
            stream.seek(0)
            stream.truncate()
            try:
                write(stream, schema, data)
            except (TypeError, ValueError, KeyError, AttributeError, OverflowError, struct.error) as exc:
                self._encode_failures.record(data, exc)
                continue
            out.append(stream.getvalue())
        return out


def create(table: dict[str, Any]) -> AvroCodec:
    opts = Options(table)
    schema_path = opts.path("schema", None)
    key_field, ts_field = read_field_options(opts)
    opts.done()
    schema = load_schema(schema_path if schema_path is not None else resource_path("schemas/quote.avsc"))
    if isinstance(schema, dict) and schema.get("type") == "record":
        fields = [field["name"] for field in schema.get("fields", ())]
        for option, name in (("key_field", key_field), ("ts_field", ts_field)):
            if name not in fields:
                raise ConfigError(option, f"schema record has no field {name!r}; fields: {', '.join(fields)}")
    return AvroCodec(schema, key_field, ts_field)
