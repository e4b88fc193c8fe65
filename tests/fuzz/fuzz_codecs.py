"""Fuzz targets of every codec (json, csv, protobuf, avro; SPEC section 2, docs/formats.md).

An input is a batch: a choice of checks, then payloads separated by the
byte ``0x1e``. The invariants:

- every payload gives exactly one outcome, a record or a ``Rejected``
  carrying the very payload and a reason; decoding a payload alone gives
  the outcome it has in the batch (one bad payload costs the others nothing);
- ``deserialize`` returns the decoded ``data`` of a record, and for a
  payload that ``decode`` rejected either raises ``DecodeError`` (the
  documented error class) or returns what the record rules refuse;
- a record has a non-empty ``str`` key and a non-zero ``int`` ``ts_ms``; a
  record that passes the source's checks (``RecordCheck``) re-encodes to
  one payload that decodes to the same record;
- a quote codec's fused ``decode_quotes`` gives exactly what ``decode``
  followed by ``QuoteCheck.check`` gives (the ``QuoteCodec`` protocol);
- avro: a datum the fast quote layout reads is the datum fastavro reads.
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable

import fastavro
from fuzz_input import FuzzInput

from gauss.core import QuoteBatch, TopicRecord
from gauss.errors import DecodeError
from gauss.quotes import QuoteCheck, RecordCheck
from gauss.registry import create

__all__ = ["CODECS", "check_codec", "seeds"]

SEPARATOR = b"\x1e"
CODECS: dict[str, Any] = {name: create("codec", name) for name in ("json", "csv", "protobuf", "avro")}
CHECKS = (
    QuoteCheck(max_future_ms=None),
    QuoteCheck(max_future_ms=None, check_prices=False),
    QuoteCheck(max_future_ms=None, max_key_bytes=4),
    QuoteCheck(),
)
RECORD_CHECK = RecordCheck()


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (a payload may carry one; a record that does is refused later)."""
    if type(a) is float and type(b) is float:
        return a == b or (math.isnan(a) and math.isnan(b))
    if type(a) is dict and type(b) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, QuoteBatch):  # quotes as columns compare as their records
        a = a.records()
    if isinstance(b, QuoteBatch):
        b = b.records()
    if type(a) is list and type(b) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, TopicRecord) and isinstance(b, TopicRecord):
        return a.ts_ms == b.ts_ms and a.key == b.key and a.seq == b.seq and same(a.data, b.data)
    return bool(a == b) and type(a) is type(b)


def same_outcome(a: Any, b: Any) -> bool:
    """Records equal, or rejects of the same payload (a reason may name an object's address)."""
    if isinstance(a, TopicRecord) or isinstance(b, TopicRecord):
        return same(a, b)
    return bool(a.raw == b.raw)


def _outcomes(codec: Any, payloads: list[bytes]) -> list[Any]:
    records, rejected = codec.decode(payloads)
    assert len(records) + len(rejected) == len(payloads), f"{len(payloads)} payloads, {len(records)} + {len(rejected)} outcomes"
    for bad in rejected:
        assert type(bad.reason) is str and bad.reason, f"a reject without a reason: {bad!r}"
    return [*records, *rejected]


def check_codec(name: str) -> Callable[[bytes], None]:
    codec = CODECS[name]

    def check(data: bytes) -> None:
        inp = FuzzInput(data)
        quote_check = inp.choice(CHECKS)
        payloads = inp.rest().split(SEPARATOR)[:8]
        alone = []
        for payload in payloads:
            (outcome,) = _outcomes(codec, [payload])
            alone.append(outcome)
            _check_one(codec, payload, outcome)
        together = _outcomes(codec, payloads)
        # decode returns the records, then the rejects; each keeps its arrival order
        expected = [o for o in alone if isinstance(o, TopicRecord)] + [o for o in alone if not isinstance(o, TopicRecord)]
        assert all(same_outcome(a, b) for a, b in zip(together, expected, strict=True)), f"a batch decodes unlike its payloads: {together!r} vs {expected!r}"
        decode_quotes = getattr(codec, "decode_quotes", None)
        if decode_quotes is not None:
            fused = decode_quotes(payloads, quote_check)
            records, rejected = codec.decode(payloads)
            good, refused = quote_check.check(records) if records else ([], [])
            assert same(fused[0], good), f"decode_quotes accepted {fused[0]!r}, decode + check {good!r}"
            for kind, theirs, ours in (("bad", fused[1], rejected), ("refused", fused[2], refused)):
                assert len(theirs) == len(ours) and all(map(same_outcome, theirs, ours)), (
                    f"decode_quotes: {kind} {theirs!r}, decode + check {ours!r}"
                )

    check.__name__ = f"check_{name}"
    return check


def _check_one(codec: Any, payload: bytes, outcome: Any) -> None:
    if not isinstance(outcome, TopicRecord):
        assert outcome.raw == payload, f"the reject carries {outcome.raw!r}, not the payload {payload!r}"
        try:
            data = codec.deserialize(payload)
        except DecodeError:
            return
        # deserialize may read what the record rules refuse (no key, no ts_ms, ...)
        _refused_by_record_rules(codec, data)
        return
    record = outcome
    assert type(record.key) is str and record.key, f"bad key {record.key!r}"
    assert type(record.ts_ms) is int and record.ts_ms != 0, f"bad ts_ms {record.ts_ms!r}"
    assert record.seq == 0, "a decoded record is not numbered yet"
    assert same(codec.deserialize(payload), record.data), "deserialize differs from the record's data"
    if codec.name == "avro":
        stream = io.BytesIO(payload)
        datum = fastavro.schemaless_reader(stream, codec.schema, None)
        assert stream.tell() == len(payload) and same(datum, record.data), f"fastavro reads {datum!r}"
    good, _ = RECORD_CHECK.check([record])
    if not good:
        return
    encoded = codec.encode(good)
    assert len(encoded) == 1, f"{codec.name} cannot re-encode an accepted record {record!r}"
    again = _outcomes(codec, encoded)
    assert same(again[0], record), f"re-encoded {encoded[0]!r} decodes to {again[0]!r}, not {record!r}"


def _refused_by_record_rules(codec: Any, data: Any) -> None:
    from gauss_plugins.format._payload import make_record

    try:
        make_record(data, codec.key_field, codec.ts_field)
    except ValueError:
        return
    raise AssertionError(f"decode rejected a payload that deserializes to the valid record data {data!r}")


def seeds(name: str) -> list[bytes]:
    codec = CODECS[name]
    quotes = [
        {"symbol": "EURUSD", "bid": 1.085, "ask": 1.0852, "bid_size": 1e6, "ask_size": 2e6, "ts_ms": 1732406400000},
        {"symbol": "X", "bid": 0.5, "ask": 0.25, "bid_size": 0.0, "ask_size": 0.0, "ts_ms": 1},
        {"symbol": "USDJPY", "bid": 151.5, "ask": 151.52, "bid_size": 1.0, "ask_size": 1.0, "ts_ms": 253402300799999},
    ]
    payloads = codec.serialize(quotes)
    out = [bytes([i]) + SEPARATOR.join(payloads) for i in range(len(CHECKS))]
    out += [b"\x00" + p for p in payloads]
    if name == "json":
        out += [b'\x00{"symbol":"A","ts_ms":1e3,"bid":1,"ask":2}', b'\x00{"symbol":"\\ud800","ts_ms":5,"bid":1,"ask":2}']
        out += [b'\x00{"symbol":"A","ts_ms":18446744073709551615,"bid":1e400,"ask":2}', b"\x00[1,2]"]
    if name == "csv":
        out += [b'\x00"E,U",1.5,1.6,,,7', b"\x00A,nan,1.0,1.0,1.0,5", b"\x00A,1,2,3,4,1_000"]
    return out
