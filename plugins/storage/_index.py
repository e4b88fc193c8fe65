"""An in-memory, query-ready index of a topic's records.

Shared by the storages that keep records as Python objects: the ``memory``
storage for candle topics, and the ``file`` and ``raw-file`` storages for the
records they answer queries from. It keeps

- every record by ``seq`` in arrival order (an ``OrderedDict``: the oldest is
  evicted in O(1), and ``since_seq`` reads only the newest records),
- per key and overall, record ids sorted by time (SPEC section 4 answers
  ascend by ``ts_ms`` and keep the most recent ``limit``): ``(ts_ms, seq)``,
  or for upsert topics ``(ts_ms, key)``, which stays the same when a new
  version of a candle replaces the old one, so an update costs a few dict
  operations and no re-sorting (PERF: the candle path stores several
  thousand updates a second). Answers order ties in ``ts_ms`` by ``seq``
  all the same: a query sorts the boundary group of equal ``ts_ms``.

Bounds: ``capacity`` records overall (oldest ``seq`` evicted first),
``max_per_key`` per key and ``retention_ms`` per key (both evict the oldest
``ts_ms`` first; ``retention_ms`` keeps ``ts_ms > newest - retention_ms``),
and ``max_keys`` keys (the key added to longest ago is dropped whole, counted
in ``evicted_keys`` and reported to ``on_evict``; issue 11 item 3).

Adding is idempotent (issue 10 item 3): a ``seq`` already held is a no-op,
and for upsert topics a version older than the one held never replaces it,
so replaying records twice, or in any order, leaves the same index. Records
older than the newest seq (a key reloaded from disk, say) may come after
newer ones: the seq order is then restored lazily, when something needs it.
"""

from __future__ import annotations

from collections import OrderedDict
from operator import attrgetter
from typing import Any, Callable, Iterable

from sortedcontainers import SortedList

from gauss.core import QuoteBatch, TopicRecord
from gauss.records import KeyInfo

__all__ = ["RecordIndex"]

RecordId = tuple[int, Any]


_by_time: Callable[[TopicRecord], tuple[int, int]] = attrgetter("ts_ms", "seq")
"""The order of answers: ``(ts_ms, seq)`` (PERF: a C getter, no Python call per record sorted)."""


class RecordIndex:
    """Records of one topic, indexed for the queries of SPEC section 4."""

    def __init__(
        self,
        *,
        upsert: bool,
        capacity: int | None = None,
        max_per_key: int | None = None,
        retention_ms: int | None = None,
        max_keys: int | None = None,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        limits = (("capacity", capacity), ("max_per_key", max_per_key), ("retention_ms", retention_ms), ("max_keys", max_keys))
        for name, value in limits:
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        self.upsert = upsert
        self.capacity = capacity
        self.max_per_key = max_per_key
        self.retention_ms = retention_ms
        self.max_keys = max_keys
        self.evicted_keys = 0
        """Keys dropped whole because more than ``max_keys`` were held."""
        self._on_evict = on_evict
        self._by_seq: OrderedDict[int, TopicRecord] = OrderedDict()
        self._unordered = False  # _by_seq holds a seq below a later one: sort before reading it in order
        self._current: dict[RecordId, TopicRecord] = {}  # upsert: (ts_ms, key) -> current version
        self._all: SortedList = SortedList()
        self._by_key: dict[str, SortedList] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()  # max_keys: keys, least recently added to first
        self._last_seq = 0

    def __len__(self) -> int:
        return len(self._by_seq)

    @property
    def last_seq(self) -> int:
        """The highest ``seq`` ever added (evicted or replaced records included)."""
        return self._last_seq

    def _id(self, record: TopicRecord) -> RecordId:
        return (record.ts_ms, record.key) if self.upsert else (record.ts_ms, record.seq)

    def _resolve(self, rid: RecordId) -> TopicRecord:
        return self._current[rid] if self.upsert else self._by_seq[rid[1]]

    def _resolve_all(self, rids: Iterable[RecordId]) -> list[TopicRecord]:
        """:meth:`_resolve` of each id (PERF: a C lookup per id, no method call)."""
        if self.upsert:
            return list(map(self._current.__getitem__, rids))
        by_seq = self._by_seq
        return [by_seq[seq] for _, seq in rids]

    def add(self, records: Iterable[TopicRecord]) -> None:
        """Index numbered records, then apply the bounds.

        A seq already held is skipped, and so is an upsert version older
        than the one held: adding is idempotent.
        """
        capacity = self.capacity
        if (
            capacity is not None
            and not self.upsert
            and isinstance(records, (list, tuple, QuoteBatch))
            and len(records) > capacity
            and self.max_per_key is None
            and self.retention_ms is None
            and self.max_keys is None
        ):
            # PERF: the older records of a batch beyond capacity would be evicted at once
            # (a tick log's tail of 1 record spent 80 % of its time adding and evicting).
            newest = records.last_seq if isinstance(records, QuoteBatch) else max(r.seq for r in records)
            self._last_seq = max(self._last_seq, newest)
            records = records[-capacity:]
        touched: set[str] = set()
        by_seq = self._by_seq
        by_key = self._by_key
        current = self._current
        upsert = self.upsert
        last_seq = self._last_seq
        for record in records:
            seq = record.seq
            if seq in by_seq:
                continue
            key = record.key
            if upsert:
                rid: RecordId = (record.ts_ms, key)
                old = current.get(rid)
                if old is not None:
                    if old.seq > seq:
                        continue  # an older version of a candle held newer
                    del by_seq[old.seq]
                    current[rid] = record
                    by_seq[seq] = record
                    if seq > last_seq:
                        last_seq = seq
                    else:
                        self._unordered = True
                    touched.add(key)
                    continue
                current[rid] = record
            else:
                rid = (record.ts_ms, seq)
            by_seq[seq] = record
            if seq > last_seq:
                last_seq = seq
            else:
                self._unordered = True
            self._all.add(rid)
            bucket = by_key.get(key)
            if bucket is None:
                bucket = by_key[key] = SortedList()
            bucket.add(rid)
            touched.add(key)
        self._last_seq = last_seq
        if self.max_per_key is not None or self.retention_ms is not None:
            for key in touched:
                self._trim_key(key)
        if self.max_keys is not None:
            self._evict_idle(touched)
        if self.capacity is not None and len(self._by_seq) > self.capacity:
            self._ensure_order()
            while len(self._by_seq) > self.capacity:
                _, oldest = self._by_seq.popitem(last=False)
                self._unlink(oldest, in_seq=False)

    def _evict_idle(self, touched: set[str]) -> None:
        idle = self._idle
        for key in touched:
            if key in self._by_key:
                idle[key] = None
                idle.move_to_end(key)
        while len(self._by_key) > self.max_keys:  # type: ignore[operator]
            key, _ = idle.popitem(last=False)
            self.drop_key(key)
            self.evicted_keys += 1
            if self._on_evict is not None:
                self._on_evict(key)

    def drop_key(self, key: str) -> int:
        """Forget every record of ``key``; return how many there were."""
        bucket = self._by_key.pop(key, None)
        self._idle.pop(key, None)
        if bucket is None:
            return 0
        resolve = self._resolve
        for rid in bucket:
            record = resolve(rid)
            del self._by_seq[record.seq]
            self._all.remove(rid)
            if self.upsert:
                del self._current[rid]
        return len(bucket)

    def _ensure_order(self) -> None:
        if self._unordered:
            self._by_seq = OrderedDict(sorted(self._by_seq.items()))
            self._unordered = False

    def _unlink(self, record: TopicRecord, *, in_seq: bool = True) -> None:
        if in_seq:
            del self._by_seq[record.seq]
        rid = self._id(record)
        self._all.remove(rid)
        bucket = self._by_key[record.key]
        bucket.remove(rid)
        if not bucket:
            del self._by_key[record.key]
            self._idle.pop(record.key, None)
        if self.upsert:
            del self._current[rid]

    def _trim_key(self, key: str) -> None:
        bucket = self._by_key.get(key)
        if bucket is None:
            return
        excess = 0 if self.max_per_key is None else len(bucket) - self.max_per_key
        if self.retention_ms is not None:
            horizon = bucket[-1][0] - self.retention_ms
            expired = bucket.bisect_left((horizon + 1,))
            excess = max(excess, expired)
        if excess <= 0:
            return
        for rid in list(bucket.islice(0, excess)):
            self._unlink(self._resolve(rid))

    def records(self) -> Iterable[TopicRecord]:
        """Every record held, ascending by ``seq``."""
        self._ensure_order()
        return self._by_seq.values()

    def records_of(self, key: str) -> list[TopicRecord]:
        """The records of ``key``, ascending by ``ts_ms``."""
        resolve = self._resolve
        return [resolve(rid) for rid in self._by_key.get(key, ())]

    def key_names(self) -> list[str]:
        """The keys held, unsorted (cheaper than :meth:`keys` when only names are needed)."""
        return list(self._by_key)

    def has_key(self, key: str) -> bool:
        return key in self._by_key

    def key_count(self, key: str) -> int:
        bucket = self._by_key.get(key)
        return 0 if bucket is None else len(bucket)

    def query(
        self,
        key: str | None = None,
        from_ms: int | None = None,
        to_ms: int | None = None,
        since_seq: int | None = None,
        limit: int = 1000,
    ) -> tuple[list[TopicRecord], bool]:
        """Records with ``from_ms <= ts_ms < to_ms`` and ``seq > since_seq``.

        Ascending by ``ts_ms``; when more than ``limit`` match, the most
        recent ``limit`` and ``True``.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        ordered = self._all if key is None else self._by_key.get(key)
        if ordered is None:
            return [], False
        lo = 0 if from_ms is None else ordered.bisect_left((from_ms,))
        hi = len(ordered) if to_ms is None else ordered.bisect_left((to_ms,))
        if hi <= lo:
            return [], False
        resolve = self._resolve
        if since_seq is None or since_seq < 1:
            truncated = hi - lo > limit
            start = max(lo, hi - limit)
            if not self.upsert:
                return self._resolve_all(ordered.islice(start, hi)), truncated
            # Ties in ts_ms are ordered by key here, but answers order them by seq:
            # take the whole group of the boundary ts_ms, then sort (nearly sorted: cheap).
            start = max(lo, ordered.bisect_left((ordered[start][0],)))
            picked = self._resolve_all(ordered.islice(start, hi))
            picked.sort(key=_by_time)
            return picked[max(0, len(picked) - limit) :], truncated
        if since_seq >= self._last_seq:
            return [], False
        if self._last_seq - since_seq < hi - lo:
            self._ensure_order()
            # NOTE: fewer new seqs than records in the time range: read the newest by seq.
            found = []
            for seq in reversed(self._by_seq):
                if seq <= since_seq:
                    break
                record = self._by_seq[seq]
                if (key is None or record.key == key) and (from_ms is None or record.ts_ms >= from_ms):
                    if to_ms is None or record.ts_ms < to_ms:
                        found.append(record)
        else:
            found = []
            boundary: int | None = None
            for record in map(resolve, ordered.islice(lo, hi, reverse=True)):
                if boundary is not None and record.ts_ms != boundary:
                    break  # the boundary's ts_ms group is complete
                if record.seq > since_seq:
                    found.append(record)
                    if len(found) > limit and boundary is None:
                        boundary = record.ts_ms
        found.sort(key=_by_time)
        truncated = len(found) > limit
        return found[len(found) - limit :] if truncated else found, truncated

    def latest(self, key: str | None = None) -> list[TopicRecord]:
        """The newest record (by ``ts_ms``) of each key, or of ``key``; ascending."""
        if key is not None:
            bucket = self._by_key.get(key)
            return [self._resolve(bucket[-1])] if bucket else []
        return sorted((self._resolve(bucket[-1]) for bucket in self._by_key.values()), key=_by_time)

    def keys(self) -> list[KeyInfo]:
        """``(key, records, last_ts_ms)`` of every key held, sorted by key."""
        return [KeyInfo(key, len(bucket), bucket[-1][0]) for key, bucket in sorted(self._by_key.items())]

    def bounds(self) -> tuple[int, int]:
        """Oldest and newest ``seq`` held; ``(0, 0)`` when empty."""
        if not self._by_seq:
            return (0, 0)
        self._ensure_order()
        return (next(iter(self._by_seq)), next(reversed(self._by_seq)))
