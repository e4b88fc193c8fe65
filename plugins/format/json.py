"""``json`` codec: one JSON object per payload, UTF-8 (SPEC section 2).

PERF: msgspec rather than ujson. Measured on the 2-core dev box (noisy),
1000 six-field quotes, best of 5 (bench/bench_codecs.py has the full table):

    json.loads          2337 ns/quote     json.dumps    2706 ns/quote
    ujson.loads          741 ns/quote     ujson.dumps    668 ns/quote
    msgspec per frame    343 ns/quote     msgspec        253 ns/quote
    msgspec batch        340 ns/quote  (b"[" + b",".join(frames) + b"]")

Decoding the whole batch as one array gains nothing for untyped decoding
(340 vs 343 ns) and can mis-assign values when a bad frame holds unbalanced
brackets that a later bad frame closes, so each frame is decoded on its
own: one bad frame costs nothing for the others, by construction.

PERF: :meth:`JsonCodec.decode_quotes` is the fused path a source takes for
a quote topic: a typed ``msgspec`` decoder (:class:`QuoteStruct`) checks the
field types in C (192 ns a quote against 395 ns untyped, and no per-field
Python afterwards), then :meth:`~gauss.quotes.QuoteCheck.quote` applies the
rules of SPEC section 1 (the same call the generic path makes). A frame the
typed decoder or those rules refuse goes through the generic path
(:meth:`JsonCodec.decode` + :class:`~gauss.quotes.QuoteCheck`), which
decides and explains, so both paths accept and reject exactly the same
frames and the reject reasons stay those of the generic path.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import msgspec
from gauss_plugins.format._payload import (
    ColumnEncode,
    EncodeFailureLog,
    PayloadConfig,
    QuoteFields,
    QuotePath,
    QuoteValues,
    make_record,
)

from gauss.core import JsonQuoteParser, QuoteBatch, TopicRecord
from gauss.errors import DecodeError
from gauss.quotes import TS_RANGE
from gauss.records import Rejected

__all__ = ["JsonCodec", "JsonConfig", "QuoteStruct"]

log = logging.getLogger(__name__)


QuoteStruct = QuoteFields
"""What the typed decoder reads a quote payload into (see :class:`~gauss_plugins.format._payload.QuoteFields`)."""


class JsonConfig(PayloadConfig):
    """The ``json`` codec's options: only the key and timestamp fields."""


class JsonCodec(QuotePath):
    """Codec and FormatSerializer for JSON objects."""

    name = "json"
    text = True
    Config = JsonConfig

    def __init__(self, key_field: str = "symbol", ts_field: str = "ts_ms") -> None:
        self.key_field = key_field
        self.ts_field = ts_field
        self._decode = msgspec.json.Decoder().decode
        self._decode_quote = msgspec.json.Decoder(QuoteStruct).decode
        self._encode = msgspec.json.Encoder().encode
        self._encode_failures = EncodeFailureLog(log, self.name)

    @classmethod
    def from_config(cls, config: JsonConfig) -> JsonCodec:
        return cls(config.key_field, config.ts_field)

    def decode(self, payloads: Sequence[bytes]) -> tuple[list[TopicRecord], list[Rejected]]:
        """Records of the good payloads, and the bad ones with the reason."""
        decode = self._decode
        key_field = self.key_field
        ts_field = self.ts_field
        records: list[TopicRecord] = []
        rejected: list[Rejected] = []
        append = records.append
        for payload in payloads:
            try:
                data = decode(payload)
            except ValueError as exc:  # msgspec.DecodeError, UnicodeDecodeError
                rejected.append(Rejected(bytes(payload), f"bad JSON: {exc}"))
                continue
            # Fast path for the common case; make_record repeats these checks
            # and explains what is wrong otherwise.
            if type(data) is dict:
                key = data.get(key_field)
                ts = data.get(ts_field)
                if type(key) is str and key and type(ts) is int and ts in TS_RANGE:
                    append(TopicRecord(ts, key, data))
                    continue
            try:
                append(make_record(data, key_field, ts_field))
            except ValueError as exc:
                rejected.append(Rejected(bytes(payload), str(exc)))
        return records, rejected

    # NOTE: the typed decoder skips unknown fields without validating their UTF-8, so a
    # payload that is not ASCII takes the generic path, which does (found by tests/fuzz).
    ascii_only = True

    @property
    def read_quote(self) -> Callable[[bytes], QuoteValues | None] | None:
        return self._decode_quote if (self.key_field, self.ts_field) == ("symbol", "ts_ms") else None

    @property
    def column_parser(self) -> type[JsonQuoteParser] | None:
        return JsonQuoteParser if self.read_quote is not None else None

    @property
    def column_encoder(self) -> ColumnEncode:
        return QuoteBatch.payloads_json

    def encode(self, records: Sequence[TopicRecord]) -> list[bytes]:
        """The JSON of each record's ``data``; a record that cannot be encoded is logged and skipped.

        PERF: quotes as columns are written from the columns (``QuoteBatch.payloads_json``), no dict each.
        """
        if isinstance(records, QuoteBatch):
            return records.payloads_json()
        return self.serialize([record.data for record in records])

    def serialize(self, datas: Sequence[Any]) -> list[bytes]:
        encode = self._encode
        try:
            return [encode(data) for data in datas]
        except (TypeError, ValueError, OverflowError):
            pass
        out: list[bytes] = []
        for data in datas:
            try:
                out.append(encode(data))
            except (TypeError, ValueError, OverflowError) as exc:
                self._encode_failures.record(data, exc)
        return out

    def deserialize(self, payload: bytes) -> Any:
        try:
            return self._decode(payload)
        except ValueError as exc:
            raise DecodeError(f"bad JSON: {exc}") from None
