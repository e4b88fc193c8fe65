"""Ingest cost of the durable storages' fsync policies (SPEC section 6, issue 10 item 5).

Appends the same numbered batches, in the same run, to:
- the ``memory`` storage (the baseline: nothing written),
- ``file`` (candle records, 100 keys, batches of 100 as the OHLC processor
  publishes them) and ``raw-file`` (quotes over 100 symbols, batches of 1000
  as a source hands them), each with ``fsync = "never" | "interval" | "always"``,
- with ``--before REV``, the same storages as they were at git revision REV
  (loaded from ``git show``), for a before/after beside each other.

Every append returns only after the batch is handed to the OS (``always``:
fsynced). Records per second include the periodic flush (interval fsync)
timer running as in the server. Figures are noisy on a shared machine;
compare rows of one run only.

    .venv/bin/python bench/bench_durability.py [--records 200000] [--dir DIR] [--before 0ba0219]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable

import gevent
from gauss_plugins.storage.file import FileStorage
from gauss_plugins.storage.memory import MemoryStorage
from gauss_plugins.storage.raw_file import RawFileStorage

from gauss.core import CORE, TopicRecord
from gauss.records import DataFormat

ROOT = Path(__file__).resolve().parent.parent


def candles(count: int, keys: int, batch: int) -> list[list[TopicRecord]]:
    out = []
    for start in range(0, count, batch):
        records = []
        for seq in range(start + 1, min(count, start + batch) + 1):
            key = f"SYM{seq % keys:03d}"
            ts = 60_000 * (seq // (keys * 4))  # each candle gets ~4 versions, as open candles do
            data = {"symbol": key, "timeframe": "1m", "ts_ms": ts, "open": 1.0, "high": 1.1, "low": 0.9, "close": 1.05, "ticks": seq % 50}
            records.append(TopicRecord(ts, key, data, seq))
        out.append(records)
    return out


def quotes(count: int, keys: int, batch: int) -> list[list[TopicRecord]]:
    out = []
    for start in range(0, count, batch):
        records = []
        for seq in range(start + 1, min(count, start + batch) + 1):
            key = f"SYM{seq % keys:03d}"
            ts = 1_732_406_400_000 + seq // 500
            data = {"symbol": key, "bid": 1.0850, "ask": 1.0852, "bid_size": 1e6, "ask_size": 1e6, "ts_ms": ts}
            records.append(TopicRecord(ts, key, data, seq))
        out.append(records)
    return out


def load_before(rev: str) -> types.SimpleNamespace:
    """The file and raw-file storage modules as they were at ``rev``."""
    modules = {}
    for name in ("file", "raw_file"):
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:plugins/storage/{name}.py"], capture_output=True, check=True
        ).stdout
        spec = importlib.util.spec_from_loader(f"_bench_before_{name}", loader=None)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        exec(compile(source, f"{rev}:plugins/storage/{name}.py", "exec"), module.__dict__)  # noqa: S102 - our own history
        modules[name] = module
    return types.SimpleNamespace(**modules)


def run(make: Callable[[Path], Any], fmt: DataFormat, batches: list[list[TopicRecord]], directory: Path) -> float:
    """Records per second appended (close included: what it leaves unwritten is written there)."""
    storage = make(directory)
    storage.open("bench", fmt)
    total = sum(len(b) for b in batches)
    started = time.perf_counter()
    for number, batch in enumerate(batches):
        storage.append(batch)
        if number % 16 == 0:
            gevent.sleep(0)  # let the flush timer run, as in the server
    storage.close()
    return total / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--dir", type=Path, default=None, help="where the storages write (default: a temporary directory)")
    parser.add_argument("--before", default=None, help="also run the storages of this git revision")
    args = parser.parse_args()
    candle_batches = candles(args.records, 100, 100)
    quote_batches = quotes(args.records, 100, 1000)
    before = load_before(args.before) if args.before else None
    rows: list[tuple[str, str, Callable[[Path], Any], DataFormat, list[list[TopicRecord]]]] = []
    for label, fmt, batches, durable in (
        ("candles", DataFormat.CANDLE, candle_batches, "file"),
        ("quotes", DataFormat.QUOTE, quote_batches, "raw-file"),
    ):
        rows.append((label, "memory (baseline)", lambda d: MemoryStorage(), fmt, batches))
        if before is not None:
            old = before.file.FileStorage if durable == "file" else before.raw_file.RawFileStorage
            rows.append((label, f"{durable} at {args.before} (buffered)", lambda d, old=old: old(d), fmt, batches))
        for policy in ("never", "interval", "always"):
            cls = FileStorage if durable == "file" else RawFileStorage
            rows.append((label, f"{durable} fsync={policy}", lambda d, cls=cls, policy=policy: cls(d, fsync=policy), fmt, batches))
    print(f"kernels: {CORE}; {args.records} records a row; candles: 100 keys, batches of 100; quotes: 100 symbols, batches of 1000")
    print(f"{'records':<8} {'storage':<36} {'records/s':>12} {'vs memory':>10}")
    base: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for number, (label, name, make, fmt, batches) in enumerate(rows):
            rate = run(make, fmt, batches, Path(tmp) / str(number))
            base.setdefault(label, rate)
            print(f"{label:<8} {name:<36} {rate:>12,.0f} {rate / base[label]:>9.2f}x")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
