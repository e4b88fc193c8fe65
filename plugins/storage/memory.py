"""``memory`` storage: a bounded in-memory topic, gone at restart.

Quotes live in the columnar :class:`~gauss.core.QuoteRing`, any other records
in :class:`~gauss.core.RecordRing` (both kernels; the oldest record is
overwritten when full). Candle topics upsert: one record per
``(key, ts_ms)``, a later version replaces the earlier and takes its new
``seq``; when full the candle updated longest ago is evicted. The epoch is a
new random string at every :meth:`open`, and ``seq`` restarts at 1.

A ring holds consecutive seqs only. Seqs skip only when a topic rebuilds
the storage from a journal that lost records (a damaged frame moved aside):
a new ring starts after the hole and the one before it is kept, read-only,
so every intact record stays served (SPEC section 6). Queries read all of
them; an older ring is let go once the rings after it hold ``capacity``
records (by then a single ring would have overwritten all of it).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Sequence

import msgspec
import numpy as np
from gauss_plugins.storage._index import RecordIndex
from gauss_plugins.storage._support import new_epoch

from gauss.core import QuoteBatch, QuoteRing, RecordRing, TopicRecord
from gauss.records import DataFormat, KeyInfo, QueryResult, TopicQuery
from gauss.registry import PluginConfig

__all__ = ["MemoryStorage", "MemoryConfig", "DEFAULT_QUOTE_CAPACITY", "DEFAULT_CAPACITY"]

log = logging.getLogger(__name__)

DEFAULT_QUOTE_CAPACITY = 1_000_000
DEFAULT_CAPACITY = 100_000


class MemoryConfig(PluginConfig, frozen=True, kw_only=True):
    """Options of the ``memory`` storage."""

    capacity: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """The most records held; None: ``DEFAULT_QUOTE_CAPACITY`` for quotes, ``DEFAULT_CAPACITY`` for other records."""


class MemoryStorage:
    """Volatile storage of one topic, bounded by ``capacity`` records."""

    name = "memory"
    durable = False
    Config = MemoryConfig

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.topic = ""
        self.epoch = ""
        self._store: QuoteRing | RecordRing | RecordIndex | None = None
        self._older: list[QuoteRing | RecordRing] = []
        """Rings from before holes in the seqs, oldest first (empty but after a damaged journal)."""

    @classmethod
    def from_config(cls, config: MemoryConfig) -> MemoryStorage:
        return cls(config.capacity)

    def open(self, topic: str, data_format: DataFormat) -> tuple[str, int]:
        fmt = DataFormat(data_format)
        if fmt is DataFormat.QUOTE:
            self._store = QuoteRing(self.capacity or DEFAULT_QUOTE_CAPACITY)
        elif fmt.upsert:
            self._store = RecordIndex(upsert=True, capacity=self.capacity or DEFAULT_CAPACITY)
        else:
            self._store = RecordRing(self.capacity or DEFAULT_CAPACITY)
        self._older = []
        self.topic = topic
        self.epoch = new_epoch()
        return self.epoch, 0

    @property
    def _opened(self) -> QuoteRing | RecordRing | RecordIndex:
        if self._store is None:
            raise RuntimeError("memory storage used before open()")
        return self._store

    def append(self, records: Sequence[TopicRecord]) -> None:
        store = self._opened
        if isinstance(store, RecordIndex):
            store.add(records)
        elif not records or _follows(store.last_seq, records):
            store.append(records)
            if self._older:
                self._let_go_of_older()
        else:
            self._append_across_holes(store, records)

    def _append_across_holes(self, store: QuoteRing | RecordRing, records: Sequence[TopicRecord]) -> None:
        """Append ``records`` whose seqs skip: each run of consecutive seqs after a hole starts a new ring."""
        seqs = [int(r.seq) for r in records]
        start = 0
        for i in range(1, len(seqs) + 1):
            if i < len(seqs) and seqs[i] == seqs[i - 1] + 1:
                continue
            first, last_held = seqs[start], store.last_seq
            if last_held and first != last_held + 1:
                log.warning(
                    "memory storage of %s: seqs %d..%d are missing (a journal that lost records?); "
                    "the %d records before them stay held",
                    self.topic, last_held + 1, first - 1, len(store),
                )  # fmt: skip
                self._older.append(store)
                store = type(store)(store.capacity)
                self._store = store
            store.append(records[start:i])
            start = i
        self._let_go_of_older()

    def _let_go_of_older(self) -> None:
        """Drop the older rings once the rings after them hold ``capacity`` records (one ring would have overwritten them)."""
        rings = self._rings()
        after = 0
        for i in range(len(rings) - 1, 0, -1):
            after += len(rings[i])
            if after >= rings[i].capacity:
                self._older = self._older[i:]
                return

    def _rings(self) -> list[Any]:
        return [*self._older, self._opened]

    def query(self, query: TopicQuery) -> QueryResult:
        args = (query.key, query.from_ms, query.to_ms, query.since_seq, query.limit)
        if not self._older:
            records, truncated = self._opened.query(*args)
            return QueryResult(records, truncated)  # quotes stay columns (QuoteRing answers a QuoteBatch)
        parts, truncated = [], False
        for ring in self._rings():
            found, more = ring.query(*args)
            parts.append(found)
            truncated = truncated or more
        merged = _by_ts(parts)
        if len(merged) > query.limit:
            merged, truncated = merged[len(merged) - query.limit :], True
        return QueryResult(merged, truncated)

    def latest(self, key: str | None = None) -> list[TopicRecord]:
        if not self._older:
            return list(self._opened.latest(key))
        newest: dict[str, TopicRecord] = {}
        for record in _by_ts([ring.latest(key) for ring in self._rings()]):
            newest[record.key] = record  # ascending (ts_ms, seq): the last one of a key wins
        return sorted(newest.values(), key=_ts_seq)

    def keys(self) -> list[KeyInfo]:
        if not self._older:
            return [KeyInfo(*info) for info in self._opened.keys()]
        merged: dict[str, list[int]] = {}
        for ring in self._rings():
            for key, count, last_ts in ring.keys():
                entry = merged.setdefault(key, [0, last_ts])
                entry[0] += count
                entry[1] = max(entry[1], last_ts)
        return [KeyInfo(key, count, last_ts) for key, (count, last_ts) in sorted(merged.items())]

    def count(self) -> int:
        return sum(len(ring) for ring in self._rings()) if self._older else len(self._opened)

    def bounds(self) -> tuple[int, int]:
        store = self._opened
        if isinstance(store, RecordIndex):
            return store.bounds()
        held = [ring for ring in self._rings() if len(ring)]
        if not held:
            return (0, 0)
        return (held[0].first_seq, held[-1].last_seq)

    def flush(self) -> None:
        """Nothing to write: memory is the medium."""

    def close(self) -> None:
        """Nothing to release early: the records stay readable until the storage is dropped."""


def _ts_seq(record: TopicRecord) -> tuple[int, int]:
    return (record.ts_ms, record.seq)


def _by_ts(parts: list[Any]) -> Any:
    """The records of ``parts`` (answers of several rings) in one answer, ascending by (ts_ms, seq)."""
    if parts and all(isinstance(part, QuoteBatch) for part in parts):
        batch = QuoteBatch.concat(parts)
        order = np.lexsort((batch.seqs, batch.ts_ms))
        taken = batch.take(order)  # unnumbered: the seqs go with it
        return QuoteBatch(taken.symbols, taken.ts_ms, taken.bid, taken.ask, taken.bid_size, taken.ask_size, seqs=batch.seqs[order])
    return sorted((record for part in parts for record in part), key=_ts_seq)


def _follows(last_seq: int, records: Sequence[TopicRecord]) -> bool:
    """Whether ``records`` (numbered, ascending) continue a ring holding up to ``last_seq`` without a hole."""
    first = records[0].seq
    return (not last_seq or first == last_seq + 1) and records[-1].seq - first == len(records) - 1
