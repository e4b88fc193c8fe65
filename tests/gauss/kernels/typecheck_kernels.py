"""Typed use of the kernels, checked by mypy against ``gauss/_core.pyi`` (tox env ``mypy``).

Not a pytest module: mypy reads it, nothing runs it. Each ``reveal_type``-free
line states a type the stub must produce; a wrong stub makes mypy fail.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gauss._core import (
    DEFAULT_MAX_FRAME_BYTES,
    QUOTE_FIELDS,
    CsvQuoteParser,
    JsonQuoteParser,
    LengthPrefixedDecoder,
    LineDecoder,
    OhlcAggregator,
    QuoteBatch,
    QuoteRing,
    RecordRing,
    TopicRecord,
    encode_checked_frames,
    encode_csv_quotes,
    encode_length_prefixed,
    encode_lines,
)


def framing() -> list[bytes]:
    decoder = LineDecoder(max_frame_bytes=DEFAULT_MAX_FRAME_BYTES)
    frames: Sequence[bytes] = decoder.feed(memoryview(b"a\nb"))
    spans: Sequence[bytes] = LineDecoder(spans=True).feed(b"c\nd\n")
    pending: int = decoder.buffered
    wire: bytes = encode_lines([*frames, *spans]) + encode_length_prefixed([bytearray(b"x")])
    checked, count = encode_checked_frames(wire)
    assert count >= 0 and isinstance(checked, bytes)
    return [*LengthPrefixedDecoder().feed(wire), bytes(pending)]


def rings() -> tuple[int, bool]:
    record = TopicRecord(1, "EURUSD", {"bid": 1.0}).with_seq(1)
    ring = RecordRing(10)
    ring.append([record])
    records, truncated = ring.query(key="EURUSD", from_ms=0, to_ms=None, since_seq=0, limit=5)
    first: TopicRecord = records[0]
    quotes = QuoteRing(100)
    quotes.append_columns(
        1, ["A"], np.array([5], dtype=np.int64), np.array([1.0]), [1.1], [1.0], [2.0]
    )
    name, count, last_ts = quotes.keys()[0]
    latest: QuoteBatch = quotes.latest()
    return first.seq + count + last_ts + quotes.nbytes + len(latest) + len(name), truncated


def columns() -> int:
    batch, positions = JsonQuoteParser(64).parse([b'{"symbol":"A","bid":1.0,"ask":2.0,"ts_ms":5}'])
    rows, _ = CsvQuoteParser(64).parse([b"A,1.0,2.0,0.0,0.0,5"])
    joined: QuoteBatch = QuoteBatch.concat([batch, rows[:1]])
    joined.first_seq = 1
    record: TopicRecord = joined[0]
    lines: bytes = joined.record_lines() + joined.records_json()
    payloads: list[bytes] = joined.payloads_json() + encode_csv_quotes(joined)
    return record.seq + len(lines) + len(payloads) + int(positions[0]) + int(joined.seqs[-1]) + joined.last_seq


def candles() -> float:
    agg = OhlcAggregator([1000, 60_000], hold_buckets=2)
    changed, late = agg.update(["A"], [1], [1.0], [1.2])
    key, tf, start, open_, high, low, close, ticks, is_open = changed[0]
    index, timeframe_index = late[0] if late else (0, 0)
    held = agg.candle("A", 1000, 0)
    total: float = open_ + high + low + close + ticks + tf + start + index + timeframe_index
    if held is not None:
        total += held[0]
    return total + len(key) + int(is_open) + sum(agg.late_counts) + len(QUOTE_FIELDS)
