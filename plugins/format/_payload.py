"""What every codec shares: payload dict -> record, the common options, encode-error logging.

A codec turns a payload into ``TopicRecord(ts_ms=data[ts_field],
key=data[key_field], data=data)`` (SPEC section 1). The key must be a
non-empty string and the timestamp an integer in
:data:`gauss.quotes.TS_RANGE` (an empty symbol or a zero ``ts_ms`` counts as
missing): the rule of :func:`gauss.quotes.check_ts`, which every codec's
fast path applies as ``ts in TS_RANGE``. The key's length, finite numbers
and the quote checks are the source's job (:mod:`gauss.quotes`), not the
codec's.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Callable, ClassVar, Protocol, Sequence

import msgspec
import numpy as np

from gauss.core import QuoteBatch, TopicRecord
from gauss.errors import ConfigError
from gauss.quotes import TS_RANGE, QuoteCheck, as_int_ts, check_ts
from gauss.ratelimit import RateLimitedLog
from gauss.records import Rejected
from gauss.registry import PluginConfig

__all__ = [
    "DEFAULT_KEY_FIELD",
    "DEFAULT_TS_FIELD",
    "FieldName",
    "PayloadConfig",
    "check_fields",
    "decode_records",
    "make_record",
    "EncodeFailureLog",
    "plain_quote",
    "QuoteFields",
    "QuoteValues",
    "QuotePath",
    "decode_quotes",
    "decode_quote_columns",
    "ColumnEncode",
    "FUSED_FRAMINGS",
]

DEFAULT_KEY_FIELD = "symbol"
DEFAULT_TS_FIELD = "ts_ms"


FieldName = Annotated[str, msgspec.Meta(min_length=1)]
"""A payload field's name (never empty)."""


class PayloadConfig(PluginConfig, frozen=True, kw_only=True):
    """The options every codec has (each codec's config inherits them)."""

    key_field: FieldName = DEFAULT_KEY_FIELD
    """The payload field holding the record's key."""
    ts_field: FieldName = DEFAULT_TS_FIELD
    """The payload field holding the record's timestamp (``ts_ms``)."""


def decode_records(
    payloads: Sequence[bytes],
    deserialize: Callable[[bytes], Any],
    key_field: str,
    ts_field: str,
    read_record: Callable[[bytes], TopicRecord | None] | None = None,
) -> tuple[list[TopicRecord], list[Rejected]]:
    """Records of the good payloads, and the bad ones with the reason: the general decode of a codec.

    ``read_record`` is the codec's quick reader of a plain payload (None
    where it cannot tell); the rest is ``deserialize`` then :func:`make_record`.
    """
    records: list[TopicRecord] = []
    rejected: list[Rejected] = []
    append = records.append
    for payload in payloads:
        if read_record is not None:
            record = read_record(payload)
            if record is not None:
                append(record)
                continue
        try:
            append(make_record(deserialize(payload), key_field, ts_field))
        except ValueError as exc:  # DecodeError is a ValueError
            rejected.append(Rejected(bytes(payload), str(exc)))
    return records, rejected


def check_fields(config: PayloadConfig, fields: Sequence[str], what: str) -> None:
    """Refuse a key or timestamp field that ``what`` (a schema, a message type) lacks, naming the option."""
    for option, name in (("key_field", config.key_field), ("ts_field", config.ts_field)):
        if name not in fields:
            raise ConfigError(option, f"{what} has no field {name!r}; fields: {', '.join(fields)}")


def make_record(data: Any, key_field: str, ts_field: str) -> TopicRecord:
    """The record of one decoded payload; raises ``ValueError`` saying what is wrong."""
    if type(data) is not dict:
        raise ValueError(f"payload must be an object, got {type(data).__name__}")
    key = data.get(key_field)
    if type(key) is not str or not key:
        if key is None or key == "":
            raise ValueError(f"missing key field {key_field!r}")
        if not isinstance(key, str):
            raise ValueError(f"key field {key_field!r} must be a string, got {key!r}")
        key = str(key)
    ts = data.get(ts_field)
    if type(ts) is not int or ts not in TS_RANGE:
        if ts is None:
            raise ValueError(f"missing timestamp field {ts_field!r}")
        ts = as_int_ts(ts)
        if ts == 0:
            raise ValueError(f"missing timestamp field {ts_field!r} (zero)")
        ts = check_ts(ts, ts_field)
    return TopicRecord(ts, key, data)


class EncodeFailureLog:
    """Rate-limited warning for records a codec cannot encode (they are skipped).

    A sink must keep serving the records it can encode; one record of the
    wrong shape is logged (at most once per ``interval`` seconds, with a
    count of the ones not logged) and left out of the batch.
    """

    def __init__(self, logger: logging.Logger, codec: str, interval: float = 10.0) -> None:
        self._log = RateLimitedLog(logger, interval)
        self._codec = codec
        self.count = 0

    def record(self, data: Any, exc: BaseException) -> None:
        self.count += 1
        self._log("%s codec: cannot encode payload %.200r: %s; skipped", self._codec, data, exc)


PlainQuote = tuple[str, float, float, float, float, int]


def plain_quote(data: Any) -> PlainQuote | None:
    """``(symbol, bid, ask, bid_size, ask_size, ts_ms)`` of a quote dict of exact types, else None.

    What a codec's quote encoder may write without its general path (which
    decides, and explains, everything else); shared by csv and avro.
    """
    if type(data) is not dict:
        return None
    get = data.get
    symbol = get("symbol")
    bid = get("bid")
    ask = get("ask")
    bid_size = get("bid_size")
    ask_size = get("ask_size")
    ts = get("ts_ms")
    if (
        type(symbol) is not str
        or type(bid) is not float
        or type(ask) is not float
        or type(bid_size) is not float
        or type(ask_size) is not float
        or type(ts) is not int
    ):
        return None
    return symbol, bid, ask, bid_size, ask_size, ts


class QuoteFields(msgspec.Struct, gc=False):
    """The six quote values as a codec's reader found them in one payload.

    The json codec decodes straight into it (extra fields ignored, ints
    accepted as floats; ``ts_ms`` as ``1.0`` or a bid of ``1e400`` fail there
    and take the general path, which accepts or refuses them as SPEC section
    1 says). Any object with these six attributes will do (a parsed
    protobuf message does).
    """

    symbol: str
    bid: float
    ask: float
    ts_ms: int
    bid_size: float = 0.0
    ask_size: float = 0.0


QuoteValues = QuoteFields
"""What a codec's ``read_quote`` gives: the six quote attributes."""

GeneralDecode = Callable[[Sequence[bytes]], tuple[list[TopicRecord], list[Rejected]]]


def decode_quotes(
    payloads: Sequence[bytes],
    check: QuoteCheck,
    read_quote: Callable[[bytes], QuoteValues | None] | None,
    decode: GeneralDecode,
    *,
    ascii_only: bool = False,
) -> tuple[list[TopicRecord], list[Rejected], list[Rejected]]:
    """The fused quote path every codec shares (:class:`~gauss.protocols.QuoteCodec`).

    ``read_quote`` is the codec's own reader of the six quote values, None
    where it cannot tell (an odd payload); :meth:`QuoteCheck.quote` checks
    them (SPEC section 1) and builds the record in the same step. A payload
    either refuses, and a codec without a reader (``None``: other field
    names), goes through ``decode`` and ``check.check``, which explain; the
    result is the same as that general path's, in arrival order. With
    ``ascii_only`` a payload that is not ASCII goes there too.

    PERF: the reader is called directly (json's is msgspec's own ``decode``)
    and the values read as attributes: no wrapper call or tuple a quote.
    """
    if read_quote is None:
        decoded, not_decoded = decode(payloads)
        checked, not_checked = check.check(decoded) if decoded else ([], [])
        return checked, not_decoded, not_checked
    latest_ts = check.latest_ts()
    quote = check.quote
    records: list[TopicRecord] = []
    bad: list[Rejected] = []
    refused: list[Rejected] = []
    append = records.append
    for payload in payloads:
        q = None
        if not ascii_only or payload.isascii():
            try:
                q = read_quote(payload)
            except ValueError:  # the general path explains
                pass
        if q is not None:
            try:
                append(quote(q.symbol, q.bid, q.ask, q.bid_size, q.ask_size, q.ts_ms, latest_ts))
                continue
            except ValueError:  # the general path explains
                pass
        records.extend(_general(payload, decode, check, bad, refused))
    return records, bad, refused


def _general(
    payload: bytes, decode: GeneralDecode, check: QuoteCheck, bad: list[Rejected], refused: list[Rejected]
) -> list[TopicRecord]:
    """The general path of one payload a fast path left: its good records; the rejects are added to ``bad``/``refused``."""
    decoded, rejected = decode((payload,))
    if rejected:
        bad.extend(rejected)
        return []
    good, refusals = check.check(decoded)
    refused.extend(refusals)
    return good


ColumnParse = Callable[[Sequence[bytes]], tuple[QuoteBatch, Any]]
ColumnEncode = Callable[[QuoteBatch, Any], bytes]
"""A compiled quote writer called with a framing's name (``encode_csv_quotes(batch, "lines")``)."""

FUSED_FRAMINGS = frozenset({"lines", "length-prefixed"})
"""The framings the compiled quote writers frame in place (SPEC section 2)."""


class ColumnParser(Protocol):
    """A compiled quote parser (``JsonQuoteParser``...): the payloads it read into columns, and their positions."""

    def parse(self, payloads: Sequence[bytes]) -> tuple[QuoteBatch, Any]: ...


def decode_quote_columns(
    payloads: Sequence[bytes], check: QuoteCheck, parse: ColumnParse, decode: GeneralDecode
) -> tuple[QuoteBatch, list[Rejected], list[Rejected]]:
    """The columnar quote path: ``parse`` reads what it can into columns, the rest takes the general path.

    ``parse(payloads)`` is a codec's compiled reader (``JsonQuoteParser.parse``):
    the batch of the payloads it read and their positions.
    :meth:`QuoteCheck.check_columns` applies SPEC section 1 to the columns
    at once. A payload either refuses goes through ``decode`` and
    ``check.check``, which decide and explain; their quotes join the batch at
    their place, so the result is the general path's, in arrival order.
    """
    batch, positions = parse(payloads)
    ok = check.check_columns(batch)
    if ok is None and len(batch) == len(payloads):
        return batch, [], []
    if ok is not None:
        positions = positions[ok]
        batch = batch.take(np.flatnonzero(ok))
    read = np.zeros(len(payloads), dtype=bool)
    read[positions] = True
    general: list[TopicRecord] = []
    general_positions: list[int] = []
    bad: list[Rejected] = []
    refused: list[Rejected] = []
    for i in np.flatnonzero(~read).tolist():
        good = _general(payloads[i], decode, check, bad, refused)
        general.extend(good)
        general_positions.extend([i] * len(good))
    if not general:
        return batch, bad, refused
    merged = QuoteBatch.concat([batch, QuoteBatch.from_records(general)])
    order = np.argsort(np.concatenate([positions, np.asarray(general_positions, dtype=np.int64)]), kind="stable")
    return merged.take(order), bad, refused


class QuotePath:
    """The :class:`~gauss.protocols.QuoteCodec` path of a built-in codec, through its ``read_quote``.

    A codec's ``read_quote`` is its reader of the six values of a plain
    payload, or None where it has none (other field names, another schema):
    then every payload takes ``decode`` and the check.
    """

    decode: GeneralDecode  # each codec's own general path
    ascii_only: ClassVar[bool] = False
    """Only ASCII payloads are given to ``read_quote`` (the others take ``decode``)."""

    @property
    def read_quote(self) -> Callable[[bytes], QuoteValues | None] | None:
        return None

    @property
    def column_parser(self) -> Callable[[int], ColumnParser] | None:
        """The compiled parser of this codec's shipped layout, made from ``max_key_bytes`` (None: another layout)."""
        return None

    @property
    def column_encoder(self) -> ColumnEncode | None:
        """The compiled writer of this codec's shipped layout (``encode_csv_quotes``...), None for another layout."""
        return None

    def encode_quotes_framed(self, batch: QuoteBatch, framing: str) -> bytes | None:
        """:class:`~gauss.protocols.FramedQuoteEncoder`: the batch written and framed in place by the compiled writer.

        None (the general path decides, logs and skips) for another layout or
        framing, a symbol the writer cannot write, or a lines payload that
        would hold a newline.
        """
        encode = self.column_encoder
        if encode is None or framing not in FUSED_FRAMINGS:
            return None
        try:
            return encode(batch, framing)
        except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
            return None

    def decode_quotes(
        self, payloads: Sequence[bytes], check: QuoteCheck
    ) -> tuple[QuoteBatch, list[Rejected], list[Rejected]]:
        """``(quotes, bad frames, refused quotes)`` of a batch, as ``decode`` then ``check.check`` gives them.

        With a :attr:`column_parser` the payloads are read straight into
        columns (one parser per ``max_key_bytes``; a source has one);
        otherwise ``read_quote`` reads the six values of each.
        """
        make = self.column_parser
        if make is None:
            records, bad, refused = decode_quotes(payloads, check, self.read_quote, self.decode, ascii_only=self.ascii_only)
            return QuoteBatch.from_records(records), bad, refused
        parsers: dict[int, ColumnParser] = self.__dict__.setdefault("_column_parsers", {})  # made on first use
        parser = parsers.get(check.max_key_bytes)
        if parser is None:
            parser = parsers[check.max_key_bytes] = make(check.max_key_bytes)
        return decode_quote_columns(payloads, check, parser.parse, self.decode)
