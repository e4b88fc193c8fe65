"""``memory`` storage: a bounded in-memory topic, gone at restart.

Quotes live in the columnar :class:`~gauss.core.QuoteRing`, any other records
in :class:`~gauss.core.RecordRing` (both kernels; the oldest record is
overwritten when full). Candle topics upsert: one record per
``(key, ts_ms)``, a later version replaces the earlier and takes its new
``seq``; when full the candle updated longest ago is evicted. The epoch is a
new random string at every :meth:`open`, and ``seq`` restarts at 1.

The rings hold consecutive seqs only. Seqs skip only when a topic rebuilds
the storage from a journal that lost records (a damaged frame moved aside):
the ring then restarts after the hole, as if what came before had been
evicted, and says so in the log; the journal keeps those records on disk.
"""

from __future__ import annotations

import logging
from typing import Annotated, Sequence

import msgspec
from gauss_plugins.storage._index import RecordIndex
from gauss_plugins.storage._support import new_epoch

from gauss.core import QuoteRing, RecordRing, TopicRecord
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
        else:
            self._append_across_holes(store, records)

    def _append_across_holes(self, store: QuoteRing | RecordRing, records: Sequence[TopicRecord]) -> None:
        """Append ``records`` whose seqs skip: each run of consecutive seqs after a hole restarts the ring."""
        seqs = [int(r.seq) for r in records]
        start = 0
        for i in range(1, len(seqs) + 1):
            if i < len(seqs) and seqs[i] == seqs[i - 1] + 1:
                continue
            first, last_held = seqs[start], store.last_seq
            if last_held and first != last_held + 1:
                log.warning(
                    "memory storage of %s: seqs %d..%d are missing (a journal that lost records?); "
                    "the %d records before seq %d are no longer held",
                    self.topic, last_held + 1, first - 1, len(store), first,
                )  # fmt: skip
                store = type(store)(store.capacity)
                self._store = store
            store.append(records[start:i])
            start = i

    def query(self, query: TopicQuery) -> QueryResult:
        records, truncated = self._opened.query(query.key, query.from_ms, query.to_ms, query.since_seq, query.limit)
        return QueryResult(records, truncated)  # quotes stay columns (QuoteRing answers a QuoteBatch)

    def latest(self, key: str | None = None) -> list[TopicRecord]:
        return list(self._opened.latest(key))

    def keys(self) -> list[KeyInfo]:
        return [KeyInfo(*info) for info in self._opened.keys()]

    def count(self) -> int:
        return len(self._opened)

    def bounds(self) -> tuple[int, int]:
        store = self._opened
        if isinstance(store, RecordIndex):
            return store.bounds()
        if not len(store):
            return (0, 0)
        return (store.first_seq, store.last_seq)

    def flush(self) -> None:
        """Nothing to write: memory is the medium."""

    def close(self) -> None:
        """Nothing to release early: the records stay readable until the storage is dropped."""


def _follows(last_seq: int, records: Sequence[TopicRecord]) -> bool:
    """Whether ``records`` (numbered, ascending) continue a ring holding up to ``last_seq`` without a hole."""
    first = records[0].seq
    return (not last_seq or first == last_seq + 1) and records[-1].seq - first == len(records) - 1
