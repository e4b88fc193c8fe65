"""Throughput of each compiled kernel beside its pure-Python twin, same run.

Usage: ``.venv/bin/python bench/bench_kernels.py [--quick]``

Prints one row per kernel: the compiled rate, the twin's rate and their
ratio. Each figure is the best of several repeats (the machine is shared and
numbers are noisy; compare the ratio, not one absolute figure). Inputs:

- framing: ~100-byte JSON-like lines in 64 KiB chunks (frames/s);
- OHLC: batches of 1000 quotes over 20 symbols, 8 timeframes 1s..1d
  (quote-timeframe updates/s);
- ring append: batches of 1000 quotes arriving as columns (keys a list of
  str, ts an int64 numpy array, prices float64 numpy arrays) into a
  full 100,000-slot QuoteRing that overwrites its oldest (quotes/s); also
  TopicRecord batches into a RecordRing;
- records JSON: 10,000 one-second candles, also against ``as_dict()`` + one
  msgspec call (what the kernel replaced).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from types import ModuleType
from typing import Callable

import numpy as np

import gauss._pycore as pure

try:
    import gauss._core as compiled
except ImportError:  # pragma: no cover - depends on the build
    sys.exit("gauss._core is not built: run `.venv/bin/pip install -e . --no-deps` first")

SYMBOLS = [f"SYM{i:02d}" for i in range(20)]
TIMEFRAMES = [1_000, 5_000, 60_000, 300_000, 900_000, 3_600_000, 14_400_000, 86_400_000]


def best_rate(run: Callable[[], int], repeats: int) -> float:
    """Items per second of the fastest of ``repeats`` runs (run returns its item count)."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        items = run()
        elapsed = time.perf_counter() - start
        best = max(best, items / elapsed)
    return best


def line_chunks(n: int) -> list[bytes]:
    rng = random.Random(1)
    lines = []
    for i in range(n):
        sym = SYMBOLS[i % len(SYMBOLS)]
        bid = 1.0 + rng.random()
        line = f'{{"symbol":"{sym}","bid":{bid:.5f},"ask":{bid + 0.0002:.5f},"bid_size":1000000.0,"ask_size":1,"ts_ms":{1732406400000 + i}}}'
        lines.append(line.encode())
    wire = b"\n".join(lines) + b"\n"
    return [wire[i : i + 65536] for i in range(0, len(wire), 65536)]


def bench_lines(kernels: ModuleType, chunks: list[bytes], frames: int) -> Callable[[], int]:
    def run() -> int:
        decoder = kernels.LineDecoder()
        count = 0
        for chunk in chunks:
            count += len(decoder.feed(chunk))
        assert count == frames
        return count

    return run


def bench_length_prefixed(kernels: ModuleType, chunks: list[bytes], frames: int) -> Callable[[], int]:
    def run() -> int:
        decoder = kernels.LengthPrefixedDecoder()
        count = 0
        for chunk in chunks:
            count += len(decoder.feed(chunk))
        assert count == frames
        return count

    return run


def bench_encode(kernels: ModuleType, payloads: list[bytes]) -> Callable[[], int]:
    batches = [payloads[i : i + 1000] for i in range(0, len(payloads), 1000)]

    def run() -> int:
        for batch in batches:
            kernels.encode_lines(batch)
        return len(payloads)

    return run


def quote_batches(n_batches: int, size: int = 1000) -> list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(2)
    batches = []
    ts0 = 1732406400000
    for b in range(n_batches):
        keys = [SYMBOLS[i] for i in rng.integers(0, len(SYMBOLS), size)]
        ts = ts0 + b * size * 10 + np.arange(size, dtype=np.int64) * 10 + rng.integers(-20, 1, size)
        bid = 1.0 + rng.random(size)
        batches.append((keys, ts.astype(np.int64), bid, bid + 0.0002))
    return batches


def bench_ohlc(kernels: ModuleType, batches: list, quotes: int) -> Callable[[], int]:
    def run() -> int:
        agg = kernels.OhlcAggregator(TIMEFRAMES, hold_buckets=2)
        for keys, ts, bid, ask in batches:
            agg.update(keys, ts, bid, ask)
        return quotes * len(TIMEFRAMES)

    return run


RING_CAPACITY = 100_000


def bench_ring_columns(kernels: ModuleType, batches: list, quotes: int) -> Callable[[], int]:
    """Steady state: the ring is created (and its pages touched) outside the timing, then overwrites."""
    sizes = [np.full(len(b[0]), 1e6) for b in batches]
    ring = kernels.QuoteRing(RING_CAPACITY)
    next_seq = [1]

    def run() -> int:
        seq = next_seq[0]
        for (keys, ts, bid, ask), size in zip(batches, sizes, strict=True):
            ring.append_columns(seq, keys, ts, bid, ask, size, size)
            seq += len(keys)
        next_seq[0] = seq
        return quotes

    run()
    return run


def bench_ring_records(kernels: ModuleType, batches: list, quotes: int) -> Callable[[], int]:
    record_batches = []
    seq = 1
    for keys, ts, bid, ask in batches:
        batch = []
        for i, key in enumerate(keys):
            t = int(ts[i])
            data = {"symbol": key, "bid": float(bid[i]), "ask": float(ask[i]), "bid_size": 1.0, "ask_size": 1.0, "ts_ms": t}
            batch.append(kernels.TopicRecord(t, key, data, seq))
            seq += 1
        record_batches.append(batch)

    def run() -> int:
        # Records carry their seq, so each run starts a fresh ring (outside the timing would
        # need renumbering); its capacity is small enough that allocation does not dominate.
        ring = kernels.RecordRing(RING_CAPACITY)
        for batch in record_batches:
            ring.append(batch)
        return quotes

    return run


def bench_query(kernels: ModuleType, batches: list) -> Callable[[], int]:
    ring = kernels.QuoteRing(RING_CAPACITY)
    seq = 1
    for keys, ts, bid, ask in batches:
        ring.append_columns(seq, keys, ts, bid, ask, bid, ask)
        seq += len(keys)

    def run() -> int:
        for sym in SYMBOLS:
            ring.query(sym, limit=1000)
        return len(SYMBOLS)

    return run


def bench_records(kernels: ModuleType, n: int) -> Callable[[], int]:
    cls = kernels.TopicRecord
    data = {"bid": 1.0}

    def run() -> int:
        for i in range(n):
            cls(i, "EURUSD", data)
        return n

    return run


def bench_record_frames(kernels: ModuleType, batches: list, quotes: int) -> Callable[[], int]:
    """The tick log's frames (length, CRC-32, record JSON) written straight from a batch's columns."""
    columns = [kernels.QuoteBatch(keys, ts, bid, ask, np.full(len(keys), 1e6), np.full(len(keys), 5e5)) for keys, ts, bid, ask in batches]
    for batch in columns:
        batch.first_seq = 1_000_000

    def run() -> int:
        for batch in columns:
            batch.record_frames()
        return quotes

    return run


def bench_checked_frames(kernels: ModuleType, batches: list, quotes: int) -> Callable[[], int]:
    """Length and CRC-32 framed around JSON lines that exist already (the log's frames of records, not quotes)."""
    lines = [pure.QuoteBatch(keys, ts, bid, ask, np.full(len(keys), 1e6), np.full(len(keys), 5e5)).record_lines() for keys, ts, bid, ask in batches]

    def run() -> int:
        for chunk in lines:
            kernels.encode_checked_frames(chunk)
        return quotes

    return run


def candle_records(kernels: ModuleType, n: int) -> list:
    """``n`` one-second candles of 20 symbols as the OHLC processor publishes them (its data fields, in its order)."""
    out = []
    for i in range(n):
        symbol, start, price = SYMBOLS[i % 20], 1_700_000_000_000 + i // 20 * 1000, round(1.1 + (i % 977) * 1e-5, 5)
        data = {
            "symbol": symbol, "timeframe": "1s", "ts_ms": start, "open": price, "high": round(price + 3e-5, 5),
            "low": round(price - 2e-5, 5), "close": round(price + 1e-5, 5), "ticks": 1 + i % 40,
        }  # fmt: skip
        out.append(kernels.TopicRecord(start, symbol, data, i + 1))
    return out


def bench_records_json(kernels: ModuleType, n: int) -> Callable[[], int]:
    """The REST/WebSocket JSON of candle records (``write_records_json``, msgspec only as the fallback)."""
    import msgspec

    records, fallback = candle_records(kernels, n), msgspec.json.Encoder().encode

    def run() -> int:
        kernels.write_records_json(records, lambda r: fallback(r.as_dict()))
        return n

    return run


def bench_records_msgspec(n: int) -> Callable[[], int]:
    """What ``write_records_json`` replaced: each record's ``as_dict()``, then one msgspec call."""
    import msgspec

    records, encode = candle_records(compiled, n), msgspec.json.Encoder().encode

    def run() -> int:
        encode([r.as_dict() for r in records])
        return n

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats")
    args = parser.parse_args()
    scale = 1 if args.quick else 4
    repeats = 3 if args.quick else 5

    frames = 50_000 * scale
    chunks = line_chunks(frames)
    payloads = [line for chunk in [b"".join(chunks)] for line in chunk.split(b"\n") if line]
    lp_wire = pure.encode_length_prefixed(payloads)
    lp_chunks = [lp_wire[i : i + 65536] for i in range(0, len(lp_wire), 65536)]
    batches = quote_batches(50 * scale)
    quotes = sum(len(b[0]) for b in batches)

    cases: list[tuple[str, str, Callable[[ModuleType], Callable[[], int]], int]] = [
        ("lines decode (~100 B lines)", "frames/s", lambda k: bench_lines(k, chunks, frames), repeats),
        ("length-prefixed decode", "frames/s", lambda k: bench_length_prefixed(k, lp_chunks, frames), repeats),
        ("encode_lines (1000/batch)", "frames/s", lambda k: bench_encode(k, payloads), repeats),
        ("OHLC update, 8 timeframes", "quote-tf/s", lambda k: bench_ohlc(k, batches, quotes), repeats),
        ("QuoteRing.append_columns", "quotes/s", lambda k: bench_ring_columns(k, batches, quotes), repeats),
        ("RecordRing.append records", "records/s", lambda k: bench_ring_records(k, batches, quotes), repeats),
        ("QuoteRing key query, limit 1000", "queries/s", lambda k: bench_query(k, batches), repeats),
        ("TopicRecord(...) creation", "records/s", lambda k: bench_records(k, 200_000 * scale), repeats),
        ("QuoteBatch.record_frames (tick log)", "quotes/s", lambda k: bench_record_frames(k, batches, quotes), repeats),
        ("encode_checked_frames (~170 B lines)", "frames/s", lambda k: bench_checked_frames(k, batches, quotes), repeats),
        ("write_records_json (10,000 candles)", "records/s", lambda k: bench_records_json(k, 10_000), repeats * 2),
    ]
    print(f"gauss kernels, {quotes} quotes, {frames} frames; best of {repeats}; the machine is shared: numbers are noisy")
    print(f"{'kernel':34} {'unit':11} {'compiled':>14} {'pure twin':>14} {'ratio':>8}")
    for name, unit, make, reps in cases:
        fast = best_rate(make(compiled), reps)
        slow = best_rate(make(pure), max(1, reps // 2))
        print(f"{name:34} {unit:11} {fast:14,.0f} {slow:14,.0f} {fast / slow:7.1f}x")
    kernel, before = best_rate(bench_records_json(compiled, 10_000), repeats * 2), best_rate(bench_records_msgspec(10_000), repeats * 2)
    print(f"candle records JSON: compiled {kernel:,.0f} records/s, as_dict + msgspec (the path before) {before:,.0f}: {kernel / before:.2f}x")


if __name__ == "__main__":
    main()
