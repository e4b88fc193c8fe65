"""Sustained quote insert rate into ClickHouse: through Gauss, beside a direct batched insert.

    .venv/bin/python bench/bench_clickhouse.py [--quotes 500000] [--batch-size 10000] [--url URL]

Without ``--url`` it starts a private clickhouse-server (the one the tests use,
``tests/support/clickhouse.py:ClickHouseServer``) in a temporary directory.

- ``direct``: the storage's own client and row encoder, one synchronous
  ``INSERT ... FORMAT RowBinary`` per ``batch-size`` quotes: the ceiling for
  this client on this machine.
- ``gauss``: quotes published to a quote topic (numbering, the storage's
  spool, its background worker's batched inserts), timed twice: until the
  last ``publish`` returned (the ingest side: what the spool's ``fsync``
  policy costs a source) and until ClickHouse holds every one
  (``buffered == 0``). Once per ``fsync`` policy, and once without a spool
  (``spool_dir = false``: batches wait in memory only, not durable).

All are wall-clock rates in one run; the machine is shared, so figures are
noisy: compare the two columns, not runs on different days.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from gauss_plugins.storage.clickhouse import ClickHouseClient, layout_for

from gauss.core import TopicRecord
from gauss.records import DataFormat
from gauss.registry import create
from gauss.topics import TopicRegistry

ROOT = Path(__file__).resolve().parents[1]


def private_server(root: Path) -> Any:
    spec = importlib.util.spec_from_file_location("gauss_test_conftest", ROOT / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # makes tests/support importable as ``support``
    from support.clickhouse import ClickHouseServer, clickhouse_binary

    binary = clickhouse_binary()
    if binary is None:
        sys.exit("clickhouse-server is not installed; pass --url of a running ClickHouse")
    server = ClickHouseServer(root, binary)
    server.start()
    return server


def make_quotes(count: int, seed: int) -> list[TopicRecord]:
    rnd = random.Random(seed)
    symbols = ["EURUSD", "USDJPY", "GBPUSD", "BTCUSD", "XAUUSD", "AUDUSD", "USDCHF", "ETHUSD"]
    start = int(time.time() * 1000) - count
    out = []
    for i in range(count):
        symbol = symbols[i % len(symbols)]
        bid = 1.0 + rnd.random()
        data = {"symbol": symbol, "bid": bid, "ask": bid + 0.0002, "bid_size": 1e6, "ask_size": 1e6, "ts_ms": start + i}
        out.append(TopicRecord(start + i, symbol, data))
    return out


def bench_direct(url: str, database: str, quotes: list[TopicRecord], batch_size: int) -> float:
    storage = create("storage", {"type": "clickhouse", "url": url, "database": database, "table": "direct", "spool_dir": False})
    storage.open("bench.direct", DataFormat.QUOTE)
    storage.close()
    client = ClickHouseClient(url)
    layout = layout_for(DataFormat.QUOTE)
    columns = ", ".join(name for name, _ in layout.columns)
    numbered = [TopicRecord(q.ts_ms, q.key, q.data, i + 1) for i, q in enumerate(quotes)]
    started = time.perf_counter()
    for start in range(0, len(numbered), batch_size):
        body = layout.encode("bench.direct", numbered[start : start + batch_size])
        client.execute(f"INSERT INTO {database}.direct ({columns}) FORMAT RowBinary", body)
    elapsed = time.perf_counter() - started
    client.close()
    return len(quotes) / elapsed


def bench_gauss(
    url: str, database: str, quotes: list[TopicRecord], batch_size: int, publish_batch: int, spool: Path | None, fsync: str
) -> tuple[float, float]:
    """``(quotes/s until the last publish returned, quotes/s until ClickHouse held them all)``."""
    label = fsync if spool is not None else "memory"
    storage = create(
        "storage", {"type": "clickhouse", "url": url, "database": database, "table": f"gauss_{label}", "batch_size": batch_size,
         "spool_dir": str(spool / label) if spool is not None else False, "fsync": fsync, "flush_interval": 0.2}
    )  # fmt: skip
    topics = TopicRegistry()
    topic = topics.create("bench.gauss", format=DataFormat.QUOTE, storage=storage)
    started = time.perf_counter()
    for start in range(0, len(quotes), publish_batch):
        topic.publish(quotes[start : start + publish_batch])
    published = time.perf_counter() - started
    storage.flush()
    while storage.buffered:
        time.sleep(0.001)
    elapsed = time.perf_counter() - started
    assert storage.count() == len(quotes), "every quote must have landed"
    topics.close()
    return len(quotes) / published, len(quotes) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quotes", type=int, default=500_000)
    parser.add_argument("--batch-size", type=int, default=10_000, help="rows per INSERT (both paths)")
    parser.add_argument("--publish-batch", type=int, default=500, help="quotes per publish (as a source hands them)")
    parser.add_argument("--url", help="a running ClickHouse (default: start a private one)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    server = None
    with tempfile.TemporaryDirectory(prefix="bench-clickhouse-") as tmp:
        if args.url is None:
            server = private_server(Path(tmp))
            url = server.url
        else:
            url = args.url
        try:
            database = "bench_" + uuid.uuid4().hex[:8]
            quotes = make_quotes(args.quotes, args.seed)
            direct = bench_direct(url, database, quotes, args.batch_size)
            rows = [
                (f"through Gauss, {name}", bench_gauss(url, database, quotes, args.batch_size, args.publish_batch, spool, fsync))
                for name, spool, fsync in (
                    ("no spool (memory)", None, "never"),
                    ("spool, fsync=never", Path(tmp) / "spool", "never"),
                    ("spool, fsync=interval", Path(tmp) / "spool", "interval"),
                    ("spool, fsync=always", Path(tmp) / "spool", "always"),
                )
            ]
            ClickHouseClient(url).execute(f"DROP DATABASE IF EXISTS {database}")
        finally:
            if server is not None:
                server.stop()
    print(f"quotes: {args.quotes}, rows per INSERT: {args.batch_size}, quotes per publish: {args.publish_batch}")
    print(f"{'path':<40}{'ingest q/s':>12}{'landed q/s':>12}{'vs direct':>11}")
    print(f"{'direct batched insert (baseline)':<40}{'':>12}{direct:>12,.0f}{1.0:>10.2f}x")
    for name, (ingest, landed) in rows:
        print(f"{name:<40}{ingest:>12,.0f}{landed:>12,.0f}{landed / direct:>10.2f}x")


if __name__ == "__main__":
    main()
