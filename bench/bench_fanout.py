"""Publishing cost with subscribers that never read, beside the same topic without them, same run.

Usage: ``.venv/bin/python bench/bench_fanout.py [--quick]``

A quote topic (memory ring) is published batches of 256 quotes over 100
symbols; each stalled subscriber has a queue of 1,000 records that is full
after the first batches, so every later batch is shed under its policy
(``drop``, ``drop_oldest``, ``conflate``). Prints records/s published for 0,
100, 200 and 1,000 stalled subscribers and the ratio to 0 (issue 13: a full
subscriber should cost O(1) a batch, 200 of them at least 90 % of the rate
without). Each figure is the best of several repeats (the machine is shared).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from gauss_plugins.storage.memory import MemoryStorage

from gauss.core import TopicRecord
from gauss.records import DataFormat, OverflowPolicy
from gauss.topics import Topic

BATCH = 256
SYMBOLS = [f"SYM{i:03d}" for i in range(100)]


def quotes(start_ms: int) -> list[TopicRecord]:
    out = []
    for i in range(BATCH):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        ts = start_ms + i
        data: dict[str, Any] = {"symbol": symbol, "bid": 1.0, "ask": 1.0002, "bid_size": 1.0, "ask_size": 1.0, "ts_ms": ts}
        out.append(TopicRecord(ts, symbol, data))
    return out


def rate(subscribers: int, policy: OverflowPolicy, batches: int, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        topic = Topic("bench.quotes", DataFormat.QUOTE, MemoryStorage(100_000))
        for _ in range(subscribers):
            topic.subscribe(policy=policy, capacity=1_000, kind="client")
        made = [quotes(1_700_000_000_000 + b * BATCH) for b in range(batches)]
        for batch in made[:8]:  # fill every queue first
            topic.publish(batch)
        started = time.perf_counter()
        for batch in made[8:]:
            topic.publish(batch)
        elapsed = time.perf_counter() - started
        best = max(best, (batches - 8) * BATCH / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches and repeats")
    args = parser.parse_args()
    batches, repeats = (200, 3) if args.quick else (800, 5)
    print(f"{'policy':<12} {'stalled':>8} {'records/s':>12} {'vs 0':>7}")
    for policy in (OverflowPolicy.DROP, OverflowPolicy.DROP_OLDEST, OverflowPolicy.CONFLATE):
        baseline = rate(0, policy, batches, repeats)
        print(f"{policy.value:<12} {0:>8} {baseline:>12,.0f} {1:>7.2f}")
        for subscribers in (100, 200, 1_000):
            got = rate(subscribers, policy, batches // 4 if subscribers >= 1_000 else batches, repeats)
            print(f"{policy.value:<12} {subscribers:>8} {got:>12,.0f} {got / baseline:>7.2f}")


if __name__ == "__main__":
    main()
