"""Candle path cost: quotes -> ohlc processor (8 timeframes) -> file storage, per quote.

Prints quotes/s for, in the same run:
- baseline: the OhlcAggregator kernel alone on the same batches (no records built),
- the ohlc processor publishing into a no-op context,
- the ohlc processor publishing into 8 file storages (numbered, indexed), with the
  open-candle flush every 0.25 s and the storage flush every 1 s of wall time, as
  in the server; quote timestamps advance ``--per-ms`` quotes a millisecond (500 by
  default: the 500,000 quotes/s target rate in real time; 1 replays history as
  bench_ingest.py's quotes do, so every second of stream time closes candles).

Batches are ``QuoteBatch`` columns, as a quote topic hands them to the processor.

With ``--fsync`` the file storage rows are run once per listed policy, and
with ``--before REV`` once more with the file storage of git revision REV
(bench_durability.load_before).

Numbers are noisy on a shared 2-core machine; compare rows of one run only.

    .venv/bin/python bench/bench_storage.py [--quotes 400000] [--symbols 100] [--per-ms 500] [--batch 1000] [--fsync interval,never] [--before REV]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np
from gauss_plugins.stage.ohlc import DEFAULT_TIMEFRAMES, OhlcProcessor, parse_timeframe
from gauss_plugins.storage.file import FileStorage

from gauss.core import CORE, OhlcAggregator, QuoteBatch, TopicRecord
from gauss.records import DataFormat


def make_batches(count: int, symbols: int, batch: int, per_ms: int) -> list[QuoteBatch]:
    rng = random.Random(7)
    names = [f"SYM{i:05d}" for i in range(symbols)]
    ts = 1_732_406_400_000
    out = []
    for start in range(0, count, batch):
        size = min(batch, count - start)
        keys, stamps, bids = [], [], []
        for i in range(size):
            ts += (start + i) % per_ms == 0  # stream time: per_ms quotes a millisecond
            keys.append(rng.choice(names))
            stamps.append(ts)
            bids.append(1.0 + rng.random())
        bid = np.array(bids)
        out.append(QuoteBatch(keys, stamps, bid, bid + 0.0002, np.ones(size), np.ones(size)))
    return out


class NullContext:
    def publish(self, topic: str, records: Sequence[TopicRecord]) -> None:
        pass


class StoringContext:
    """Numbers records per topic and appends them to that topic's file storage, like a topic."""

    def __init__(self, directory: str, make: Callable[[str], Any]) -> None:
        self.storages: dict[str, Any] = {}
        self.seq: dict[str, int] = {}
        self.directory = directory
        self.make = make

    def publish(self, topic: str, records: Sequence[TopicRecord]) -> None:
        storage = self.storages.get(topic)
        if storage is None:
            storage = self.storages[topic] = self.make(f"{self.directory}/{topic}")
            self.seq[topic] = storage.open(topic, DataFormat.CANDLE)[1]
        seq = self.seq[topic]
        numbered = [TopicRecord(r.ts_ms, r.key, r.data, seq + i) for i, r in enumerate(records, 1)]
        self.seq[topic] = seq + len(records)
        storage.append(numbered)

    def flush(self) -> None:
        for storage in self.storages.values():
            storage.flush()

    def close(self) -> None:
        for storage in self.storages.values():
            storage.close()


def run(batches: list[QuoteBatch], mode: str, make: Callable[[str], Any] | None = None) -> float:
    total = sum(len(b) for b in batches)
    if mode == "kernel":
        agg = OhlcAggregator([parse_timeframe(t) for t in DEFAULT_TIMEFRAMES], 2)
        started = time.perf_counter()
        for batch in batches:
            agg.update(batch.symbols, batch.ts_ms, batch.bid, batch.ask)
        return total / (time.perf_counter() - started)
    processor = OhlcProcessor()
    with tempfile.TemporaryDirectory() as directory:
        context = StoringContext(directory, make) if make is not None else NullContext()
        started = time.perf_counter()
        next_open = started + processor.flush_interval  # type: ignore[operator]
        next_store = started + 1.0
        for batch in batches:
            processor.process("quotes.raw", batch, context)  # type: ignore[arg-type]
            now = time.perf_counter()
            if now >= next_open:  # the engine's flush timer
                processor.flush(context)  # type: ignore[arg-type]
                next_open = now + processor.flush_interval  # type: ignore[operator]
            if isinstance(context, StoringContext) and now >= next_store:  # the storage's own timer
                context.flush()
                next_store = now + 1.0
        processor.stop(context)  # type: ignore[arg-type]
        if isinstance(context, StoringContext):
            context.close()
        return total / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quotes", type=int, default=400_000)
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--per-ms", type=int, default=500, help="quotes a millisecond of stream time")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--fsync", default="interval", help="comma-separated fsync policies of the file storage rows")
    parser.add_argument("--before", default=None, help="also run the file storage of this git revision")
    args = parser.parse_args()
    batches = make_batches(args.quotes, args.symbols, args.batch, args.per_ms)
    print(
        f"kernels: {CORE}; {args.quotes} quotes, {args.symbols} symbols, {args.per_ms} a millisecond of stream time, "
        f"batches of {args.batch}, 8 timeframes"
    )
    base = run(batches, "kernel")
    print(f"{'path':<52} {'quotes/s':>12} {'vs kernel':>10}")
    print(f"{'OhlcAggregator.update (baseline)':<52} {base:>12,.0f} {1.0:>9.2f}x")
    rows: list[tuple[str, Callable[[str], Any] | None]] = [("ohlc processor -> no-op publish", None)]
    if args.before:
        from bench_durability import load_before

        old = load_before(args.before).file.FileStorage
        rows.append((f"ohlc processor -> 8 file storages at {args.before}", lambda d: old(d, flush_interval=3600)))
    for policy in args.fsync.split(","):
        rows.append((f"ohlc processor -> 8 file storages, fsync={policy}", lambda d, policy=policy: FileStorage(d, fsync=policy)))
    for label, make in rows:
        rate = run(batches, "file" if make is not None else "null", make)
        print(f"{label:<52} {rate:>12,.0f} {rate / base:>9.2f}x")


if __name__ == "__main__":
    main()
