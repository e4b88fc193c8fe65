"""``protobuf`` codec: one proto3 message per payload (SPEC section 2).

The message type comes from a compiled ``FileDescriptorSet`` (``.desc``),
so any message a user compiles can be decoded without generated Python
code: options (:class:`ProtobufConfig`) ``descriptor`` (default: the
shipped ``schemas/quote.desc``) and ``message`` (default ``gauss.Quote``). A payload becomes a dict of the
message's fields by name (scalars as Python numbers and strings, nested
messages as dicts, repeated fields as lists). Proto3 cannot tell ``""`` or
``0`` from absent, so an empty key or a zero timestamp counts as missing.

PERF: when the message has the wire form of the shipped ``gauss.Quote``
(:func:`is_quote_message`), :meth:`ProtobufCodec.decode_quotes` reads
messages straight into columns with the compiled ``ProtobufQuoteParser``
(what it refuses takes the general path, which decides and explains), and
:meth:`ProtobufCodec.encode` writes a ``QuoteBatch`` from its columns with
``encode_protobuf_quotes``, byte for byte what ``SerializeToString`` writes
(tests/plugins/format/test_binary_quote_columns.py holds both to the library).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Annotated, Any, Callable, Sequence

import msgspec
from gauss_plugins.format._payload import (
    ColumnEncode,
    EncodeFailureLog,
    PayloadConfig,
    QuotePath,
    QuoteValues,
    check_fields,
    decode_records,
)
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gauss.core import QUOTE_FIELDS, ProtobufQuoteParser, QuoteBatch, TopicRecord, encode_protobuf_quotes
from gauss.errors import ConfigError, DecodeError
from gauss.records import Rejected
from gauss.resources import resource_path

__all__ = ["ProtobufCodec", "ProtobufConfig", "load_message_class", "is_quote_message", "DEFAULT_MESSAGE"]

log = logging.getLogger(__name__)

DEFAULT_MESSAGE = "gauss.Quote"

_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_SFIXED32,
    }
)


@functools.lru_cache(maxsize=32)
def _pool(descriptor_path: str) -> descriptor_pool.DescriptorPool:
    """A private pool per ``.desc`` file, so two files may define the same names."""
    blob = Path(descriptor_path).read_bytes()
    file_set = descriptor_pb2.FileDescriptorSet.FromString(blob)
    pool = descriptor_pool.DescriptorPool()
    for file_proto in file_set.file:
        pool.Add(file_proto)
    return pool


def load_message_class(descriptor_path: Path, message_name: str) -> type[message.Message]:
    """The message class named ``message_name`` in the descriptor set at ``descriptor_path``."""
    pool = _pool(str(descriptor_path))
    descriptor = pool.FindMessageTypeByName(message_name)
    return message_factory.GetMessageClass(descriptor)


# The wire form of schemas/quote.proto: field number -> (name, type).
_QUOTE_WIRE = {
    1: ("symbol", FieldDescriptor.TYPE_STRING),
    2: ("bid", FieldDescriptor.TYPE_DOUBLE),
    3: ("ask", FieldDescriptor.TYPE_DOUBLE),
    4: ("bid_size", FieldDescriptor.TYPE_DOUBLE),
    5: ("ask_size", FieldDescriptor.TYPE_DOUBLE),
    6: ("ts_ms", FieldDescriptor.TYPE_INT64),
}


def is_quote_message(descriptor: Descriptor) -> bool:
    """Whether messages of ``descriptor`` are written and read exactly as the shipped ``gauss.Quote``.

    The same six fields, numbers and types, none repeated, all of implicit
    presence (proto3: a zero or empty value is not written), as the compiled
    column codecs assume.
    """
    fields = descriptor.fields
    return len(fields) == len(_QUOTE_WIRE) and all(
        _QUOTE_WIRE.get(field.number) == (field.name, field.type) and not _is_repeated(field) and not field.has_presence
        for field in fields
    )


def _is_repeated(field: FieldDescriptor) -> bool:
    # protobuf >= 6 exposes is_repeated; older releases only the label.
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return field.label == FieldDescriptor.LABEL_REPEATED  # type: ignore[attr-defined]


class _Shape:
    """How to turn one message type into a dict and back (precomputed per type)."""

    def __init__(self, descriptor: Descriptor) -> None:
        self.scalars: list[str] = []
        self.repeated: list[str] = []
        self.messages: list[tuple[str, _Shape]] = []
        self.repeated_messages: list[tuple[str, _Shape]] = []
        self.integers: set[str] = set()
        self.names: set[str] = set()
        for field in descriptor.fields:
            self.names.add(field.name)
            if field.type in _INTEGER_TYPES:
                self.integers.add(field.name)
            is_message = field.type == FieldDescriptor.TYPE_MESSAGE
            if is_message and field.message_type.GetOptions().map_entry:
                raise ConfigError("message", f"map field {field.full_name!r} is not supported")
            if is_message:
                shape = _Shape(field.message_type)
                (self.repeated_messages if _is_repeated(field) else self.messages).append((field.name, shape))
            else:
                (self.repeated if _is_repeated(field) else self.scalars).append(field.name)

    def to_dict(self, msg: Any) -> dict[str, Any]:
        data = {name: getattr(msg, name) for name in self.scalars}
        for name in self.repeated:
            data[name] = list(getattr(msg, name))
        for name, shape in self.messages:
            if msg.HasField(name):
                data[name] = shape.to_dict(getattr(msg, name))
        for name, shape in self.repeated_messages:
            data[name] = [shape.to_dict(item) for item in getattr(msg, name)]
        return data

    def fill(self, msg: Any, data: Any) -> None:
        integers = self.integers
        for name in self.scalars:
            value = data.get(name)
            if value is None:
                continue
            if name in integers and type(value) is float and value.is_integer():
                value = int(value)
            setattr(msg, name, value)
        for name in self.repeated:
            values = data.get(name)
            if values:
                getattr(msg, name).extend(values)
        for name, shape in self.messages:
            value = data.get(name)
            if value is not None:
                shape.fill(getattr(msg, name), value)
        for name, shape in self.repeated_messages:
            for item in data.get(name) or ():
                shape.fill(getattr(msg, name).add(), item)


class ProtobufConfig(PayloadConfig):
    """The ``protobuf`` codec's options; the message must exist and have the key and timestamp fields."""

    descriptor: Path | None = None
    """The compiled ``FileDescriptorSet`` (``.desc``); None: the shipped ``schemas/quote.desc``."""
    message: Annotated[str, msgspec.Meta(min_length=1)] = DEFAULT_MESSAGE
    """The full name of the message type of a payload."""

    def __post_init__(self) -> None:
        # A relative path is checked once the registry has made it absolute (against the config file's directory).
        if self.descriptor is None or self.descriptor.is_absolute():
            _message_class(self)


def _message_class(config: ProtobufConfig) -> type[message.Message]:
    """The message class ``config`` names; raises ``ConfigError`` naming the option at fault."""
    path = config.descriptor if config.descriptor is not None else resource_path("schemas/quote.desc")
    message_name = config.message
    try:
        message_class = load_message_class(path, message_name)
    except OSError as exc:
        raise ConfigError("descriptor", f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except message.DecodeError as exc:
        raise ConfigError("descriptor", f"{str(path)!r} is not a compiled FileDescriptorSet: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError("message", f"no message {message_name!r} in {str(path)!r}: {exc}") from None
    _Shape(message_class.DESCRIPTOR)  # refuses what the codec cannot map
    check_fields(config, [field.name for field in message_class.DESCRIPTOR.fields], message_name)
    return message_class


class ProtobufCodec(QuotePath):
    """Codec and FormatSerializer for one protobuf message type."""

    name = "protobuf"
    text = False
    Config = ProtobufConfig

    def __init__(
        self,
        message_class: type[message.Message],
        key_field: str = "symbol",
        ts_field: str = "ts_ms",
    ) -> None:
        self.message_class = message_class
        self.key_field = key_field
        self.ts_field = ts_field
        self._shape = _Shape(message_class.DESCRIPTOR)
        self._parse = message_class.FromString
        self._encode_failures = EncodeFailureLog(log, self.name)
        shape = self._shape
        self.quote_layout = (
            sorted(shape.scalars) == sorted(QUOTE_FIELDS)
            and not (shape.repeated or shape.messages or shape.repeated_messages)
            and (key_field, ts_field) == ("symbol", "ts_ms")
        )
        """The message is the shipped quote's shape: :meth:`decode_quotes` reads the six fields directly."""
        self.quote_wire = is_quote_message(message_class.DESCRIPTOR)
        """The message is written as the shipped quote: the compiled column codecs apply."""

    @classmethod
    def from_config(cls, config: ProtobufConfig) -> ProtobufCodec:
        return cls(_message_class(config), config.key_field, config.ts_field)

    def deserialize(self, payload: bytes) -> dict[str, Any]:
        """The payload dict of one message; raises ``DecodeError``."""
        try:
            msg = self._parse(payload)
        except (message.DecodeError, ValueError) as exc:
            raise DecodeError(f"bad protobuf {self.message_class.DESCRIPTOR.full_name}: {exc}") from None
        return self._shape.to_dict(msg)

    def decode(self, payloads: Sequence[bytes]) -> tuple[list[TopicRecord], list[Rejected]]:
        """Records of the good messages, and the bad ones with the reason."""
        return decode_records(payloads, self.deserialize, self.key_field, self.ts_field)

    @property
    def read_quote(self) -> Callable[[bytes], QuoteValues | None] | None:
        return self._read_quote if self.quote_layout else None

    def _read_quote(self, payload: bytes) -> QuoteValues | None:
        try:
            msg: Any = self._parse(payload)
        except (message.DecodeError, ValueError):  # the general path explains
            return None
        return msg  # type: ignore[no-any-return]  # the shipped Quote message: the six attributes

    @property
    def column_parser(self) -> type[ProtobufQuoteParser] | None:
        return ProtobufQuoteParser if self.quote_layout and self.quote_wire else None

    @property
    def column_encoder(self) -> ColumnEncode | None:
        return encode_protobuf_quotes if self.quote_wire else None

    def encode(self, records: Sequence[TopicRecord]) -> list[bytes]:
        """One message per record's ``data``; a record that does not fit is logged and skipped.

        PERF: quotes as columns for the shipped message are written from the columns
        (``encode_protobuf_quotes``), no message object each; a batch holding a symbol it
        cannot write (not a string, a lone surrogate) takes the record path, which logs and skips it.
        """
        if self.quote_wire and isinstance(records, QuoteBatch):
            try:
                return encode_protobuf_quotes(records)
            except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
                pass
        return self.serialize([record.data for record in records])

    def serialize(self, datas: Sequence[Any]) -> list[bytes]:
        message_class = self.message_class
        fill = self._shape.fill
        out: list[bytes] = []
        for data in datas:
            msg = message_class()
            try:
                fill(msg, data)
                out.append(msg.SerializeToString(deterministic=True))
            except (TypeError, ValueError, AttributeError, OverflowError, message.EncodeError) as exc:
                self._encode_failures.record(data, exc)
        return out
