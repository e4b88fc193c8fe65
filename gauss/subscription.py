"""Bounded queues of published batches and the overflow policies of SPEC section 5.

Every consumer of a topic (processor, sink client, WebSocket client, a
library callback) reads through a :class:`Subscription`: a queue with a
capacity counted in records and a policy saying what happens when a batch
does not fit. Policies that shed count what they shed and remember the seq
range shed, which the next :meth:`BoundedQueue.take` reports as a
:class:`Gap`. Sources use the same :class:`BoundedQueue` between their
connections and their topic.

A full subscriber costs its topic O(1) a batch under every policy (issue 13):
a full ``drop``, ``drop_oldest`` or ``conflate`` :class:`Subscription` is
*stalled*, no longer offered batches, and works out what it missed when its
consumer next takes; a ``conflate`` queue conflates at take, not at offer
(the consumer pays).

Everything here is cooperative (gevent): a ``back_pressure`` publisher and a
waiting consumer yield to other greenlets, never to the OS.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterator, Sequence

import gevent.event

from gauss.core import QuoteBatch, TopicRecord
from gauss.records import OverflowPolicy, encode_records

if TYPE_CHECKING:
    from gauss.topics import Topic

__all__ = [
    "PublishedBatch",
    "Gap",
    "Delivery",
    "BoundedQueue",
    "Subscription",
    "StallBacklog",
    "DEFAULT_CAPACITY",
    "CONFLATE_BACKLOG",
]

DEFAULT_CAPACITY = 10_000

CONFLATE_BACKLOG = 4
"""Capacities of records a topic keeps for its stalled ``conflate`` subscribers (of the largest one)."""


class PublishedBatch:
    """One batch as published to a topic, shared by every subscriber that got it whole.

    Encodings are computed once and cached on the object, so the same bytes
    go to every client (:meth:`records_json` for the API, :meth:`encoded`
    for sinks). A subscriber that filters or conflates builds its own batch
    objects, each with its own cache.
    """

    __slots__ = ("topic", "records", "_json", "_encoded")

    def __init__(self, topic: str, records: Sequence[TopicRecord]) -> None:
        self.topic = topic
        self.records = records
        self._json: bytes | None = None
        self._encoded: dict[Hashable, bytes] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"PublishedBatch(topic={self.topic!r}, records={len(self.records)})"

    def records_json(self) -> bytes:
        """The JSON array of the records' SPEC form (with ``seq``), computed once."""
        if self._json is None:
            self._json = encode_records(self.records)
        return self._json

    def encoded(self, owner: Hashable, encode: Callable[[Sequence[TopicRecord]], bytes]) -> bytes:
        """``encode(records)`` computed once per ``owner`` and cached.

        Every sink of one wire format (``WireFormat.key``) and every client of
        those sinks send the same bytes.
        """
        cache = self._encoded
        if cache is None:
            cache = self._encoded = {}
        data = cache.get(owner)
        if data is None:
            data = cache[owner] = encode(self.records)
        return data


@dataclass(frozen=True, slots=True)
class Gap:
    """Records shed since the last take: how many, and the first and last seq missed."""

    dropped: int
    from_seq: int
    to_seq: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one take returns: every batch waiting, and the gap before them (if any)."""

    batches: list[PublishedBatch]
    gap: Gap | None = None

    @property
    def records(self) -> Sequence[TopicRecord]:
        """All records of all batches, in order (one :class:`QuoteBatch` when every batch is one)."""
        if len(self.batches) == 1:
            return self.batches[0].records
        parts = [batch.records for batch in self.batches]
        if all(type(part) is QuoteBatch for part in parts):
            return QuoteBatch.concat(parts)  # type: ignore[arg-type]  # (every part is one: checked above)
        out: list[TopicRecord] = []
        for part in parts:
            out.extend(part)
        return out


class BoundedQueue:
    """A queue of batches holding at most ``capacity`` records, with an overflow policy.

    ``offer`` never blocks except under ``back_pressure``, where it waits
    (cooperatively) until the consumer has made room. A batch larger than the
    whole capacity is accepted into an empty ``back_pressure`` queue (it could
    never fit otherwise) and trimmed by the shedding policies.

    ``conflate``: once a batch does not fit, the queue counts as full until
    taken, and the take delivers the latest record of each key offered since
    the last take, of the newest ``capacity`` keys, in arrival order. Offers
    only append; the queue is compacted when it holds twice its capacity, and
    when ``take`` or ``dropped`` needs it exact (whoever reads pays).

    ``on_shed(n)`` is called with the number of records each shedding shed
    (for metrics); ``on_stall(seconds)`` is called about once a second while a
    ``back_pressure`` publisher waits (for the lag alarm).
    """

    def __init__(
        self,
        topic: str = "",
        *,
        policy: OverflowPolicy | str = OverflowPolicy.DROP,
        capacity: int = DEFAULT_CAPACITY,
        kind: str = "client",
        on_shed: Callable[[int], None] | None = None,
        on_stall: Callable[[float], None] | None = None,
        on_take: Callable[[int], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.topic = topic
        self.policy = OverflowPolicy.parse(policy)
        self.capacity = capacity
        self.kind = kind
        self.on_shed = on_shed
        self.on_stall = on_stall
        self.on_take = on_take
        self.depth = 0
        """Records queued now."""
        self.delivered = 0
        """Records handed to the consumer so far."""
        self._dropped = 0
        self.closed = False
        self._sealed = False
        self._items: deque[PublishedBatch] = deque()
        self._skip = 0
        """Records at the front of the oldest queued batch already shed (``drop_oldest``; sliced off at take)."""
        self._held = 0
        """``conflate``, once over capacity: the records ``_items`` holds (``depth`` reads ``capacity``); else 0."""
        self._loose = False
        """``conflate``: batches were queued since the last compaction."""
        self._ready = gevent.event.Event()
        self._room = gevent.event.Event()
        self._gap_dropped = 0
        self._gap_from = 0
        self._gap_to = 0

    @property
    def dropped(self) -> int:
        """Records shed so far (reading it compacts a ``conflate`` queue: the reader pays)."""
        if self._loose:
            self._compact()
        return self._dropped + self._missed()

    def _missed(self) -> int:
        """Records shed but not yet counted in ``_dropped`` (a stalled :class:`Subscription`'s)."""
        return 0

    # --- publisher side ------------------------------------------------------

    def offer(self, batch: PublishedBatch) -> None:
        """Queue ``batch`` according to the policy (may wait under ``back_pressure``)."""
        if self.closed or self._sealed:
            return
        records = batch.records
        n = len(records)
        if not n:
            return
        if self.depth + n <= self.capacity:
            self._push(batch, n)
            return
        policy = self.policy
        if policy is OverflowPolicy.BACK_PRESSURE:
            self._wait_for_room(n)
            if self.closed or self._sealed:
                self._shed(records)
                return
            self._push(batch, n)
        elif policy is OverflowPolicy.DROP:
            room = self.capacity - self.depth
            if room > 0:
                self._push(PublishedBatch(batch.topic, records[:room]), room)
                self._shed_span(records, room, n)
            else:
                self._shed(records)
        elif policy is OverflowPolicy.DROP_OLDEST:
            self._drop_oldest(batch, n)
        else:
            self._conflate(batch)

    def _push(self, batch: PublishedBatch, n: int) -> None:
        self._items.append(batch)
        self.depth += n
        self._ready.set()

    def _wait_for_room(self, n: int) -> None:
        started = time.monotonic()
        while self.depth and self.depth + n > self.capacity and not (self.closed or self._sealed):
            self._room.clear()
            if not self._room.wait(1.0) and self.on_stall is not None:
                self.on_stall(time.monotonic() - started)

    def _drop_oldest(self, batch: PublishedBatch, n: int) -> None:
        """Evict the oldest queued records to make room: O(1) a batch (whole batches popped, the oldest skipped into)."""
        capacity = self.capacity
        items = self._items
        if n >= capacity:
            for i, old in enumerate(items):
                self._shed_span(old.records, self._skip if i == 0 else 0, len(old.records))
            items.clear()
            self._skip = 0
            self.depth = 0
            if n > capacity:
                self._shed_span(batch.records, 0, n - capacity)
                batch = PublishedBatch(batch.topic, batch.records[n - capacity :])
            self._push(batch, len(batch.records))
            return
        excess = self.depth + n - capacity
        self._count_shed(excess, *self._evict(excess))
        self._push(batch, n)

    def _evict(self, excess: int) -> tuple[int, int]:
        """Take the oldest ``excess`` queued records out (not counted here): their first and last seq."""
        items = self._items
        first = items[0].records[self._skip].seq  # the queue holds seqs in order: the shed run is contiguous
        last = 0
        while excess > 0:
            records = items[0].records
            left = len(records) - self._skip
            if left <= excess:
                items.popleft()
                last = records[-1].seq
                self._skip = 0
                self.depth -= left
                excess -= left
            else:
                self._skip += excess
                last = records[self._skip - 1].seq
                self.depth -= excess
                excess = 0
        return first, last

    def _conflate(self, batch: PublishedBatch) -> None:
        """Hold ``batch`` for the conflation at take: O(1), and O(1) a record amortised by the compactions.

        Compacting early changes nothing the consumer sees: the latest per key
        of (the latest per key of a prefix, then the rest) is the latest per
        key of the whole, and so are the newest ``capacity`` keys of it.
        """
        self._held = (self._held or self.depth) + len(batch.records)
        self._items.append(batch)
        self._loose = True
        self.depth = self.capacity
        if self._held > 2 * self.capacity:
            self._compact()
        self._ready.set()

    def _compact(self) -> None:
        """Conflate what the queue holds into one batch."""
        items = self._items
        topic = items[-1].topic
        kept, shed, lo, hi = _latest_per_key([batch.records for batch in items], self.capacity)
        self._count_shed(shed, lo, hi)
        items.clear()
        items.append(PublishedBatch(topic, kept))
        self._held = len(kept)
        self._loose = False

    def _shed(self, records: Sequence[TopicRecord]) -> None:
        """Count ``records`` (in seq order) as shed and widen the gap to report."""
        self._shed_span(records, 0, len(records))

    def _shed_span(self, records: Sequence[TopicRecord], start: int, stop: int) -> None:
        """Count ``records[start:stop]`` as shed without copying them.

        PERF: a published batch is in seq order, so its ends bound the gap: a
        full subscriber costs O(1) a batch, not a pass over its records
        (bench/bench_fanout.py).
        """
        if stop > start:
            self._count_shed(stop - start, records[start].seq, records[stop - 1].seq)

    def _count_shed(self, n: int, lo: int, hi: int) -> None:
        if not n:
            return
        self._dropped += n
        self._widen_gap(n, lo, hi)
        if self.on_shed is not None:
            self.on_shed(n)

    def _widen_gap(self, n: int, lo: int, hi: int) -> None:
        self._gap_dropped += n
        if lo and (not self._gap_from or lo < self._gap_from):
            self._gap_from = lo
        if hi > self._gap_to:
            self._gap_to = hi

    # --- consumer side -------------------------------------------------------

    def take(self, timeout: float | None = None) -> Delivery | None:
        """Everything waiting, blocking cooperatively up to ``timeout`` seconds.

        None on timeout, once closed, or once sealed and empty.
        """
        if self.closed:
            return None
        self._catch_up()
        if not self._items:
            if self._sealed:
                return None
            self._ready.clear()
            self._ready.wait(timeout)
            if self.closed:
                return None
            self._catch_up()  # it may have stalled meanwhile (a stalled conflate one holds nothing itself)
            if not self._items:
                return None
        if self._held:
            if self._loose:
                self._compact()
            self.depth = self._held
            self._held = 0
        batches = list(self._items)
        if self._skip:
            batches[0] = PublishedBatch(batches[0].topic, batches[0].records[self._skip :])
            self._skip = 0
        self._items.clear()
        self.delivered += self.depth
        if self.on_take is not None:
            self.on_take(self.depth)
        self.depth = 0
        gap = None
        if self._gap_dropped:
            gap = Gap(self._gap_dropped, self._gap_from, self._gap_to)
            self._gap_dropped = self._gap_from = self._gap_to = 0
        self._room.set()
        return Delivery(batches, gap)

    def _catch_up(self) -> None:
        """Bring in what the queue missed while stalled (see :class:`Subscription`); here, nothing."""

    def seal(self) -> None:
        """Accept nothing more; :meth:`take` returns what is queued, then None."""
        self._sealed = True
        self._ready.set()
        self._room.set()

    @property
    def sealed(self) -> bool:
        return self._sealed

    def close(self) -> None:
        """Stop now: drop what is queued, wake every waiter."""
        if self.closed:
            return
        self.closed = True
        self._items.clear()
        self._skip = 0
        self._held = 0
        self._loose = False
        self.depth = 0
        self._ready.set()
        self._room.set()


class Subscription(BoundedQueue):
    """A topic's subscriber: a bounded queue, optionally filtered by key.

    ``start_seq`` is the topic's ``last_seq`` when the subscription was made;
    every record with a greater seq is delivered or reported as shed, so a
    consumer can replay stored records up to ``start_seq`` and then read the
    live tail with no gap and no duplicate. Iterating yields records until
    the subscription is closed (or sealed and drained).
    """

    def __init__(
        self,
        topic: Topic | None,
        *,
        key: str | None = None,
        policy: OverflowPolicy | str = OverflowPolicy.DROP,
        capacity: int = DEFAULT_CAPACITY,
        kind: str = "client",
        start_seq: int = 0,
        on_shed: Callable[[int], None] | None = None,
        on_stall: Callable[[float], None] | None = None,
        on_take: Callable[[int], None] | None = None,
    ) -> None:
        self._topic = topic
        self._stall_seq = 0
        """While stalled: the last seq shed before the topic stopped offering batches (0: not stalled)."""
        self._stall_from = 0
        """While a ``drop_oldest`` or ``conflate`` one is stalled: the seq after which it reads the topic's backlog."""
        self._stall_counted = 0
        """While a ``drop_oldest`` or ``conflate`` one is stalled: what its stall counted as shed (the overflow of that batch)."""
        super().__init__(
            topic.name if topic is not None else "",
            policy=policy,
            capacity=capacity,
            kind=kind,
            on_shed=on_shed,
            on_stall=on_stall,
            on_take=on_take,
        )
        self.key = key
        self.start_seq = start_seq

    # A stalled subscription (no key filter, full: ``drop``, or ``drop_oldest`` or ``conflate``
    # offered a batch that does not fit) is not offered the topic's batches. A ``drop`` one sheds
    # everything published until its consumer takes again, so what it missed is
    # ``topic.last_seq - _stall_seq``, folded into ``dropped`` and the gap when it next takes. A
    # ``drop_oldest`` one sheds exactly as much, its queue's oldest first, so its ``dropped`` is
    # exact live; when it takes, it keeps the newest ``capacity`` records of its queue and of the
    # topic's backlog (:class:`StallBacklog`) and the gap becomes exact. A ``conflate`` one sheds at
    # least as much (all beyond its capacity), so ``dropped`` counts that live the same way; when
    # it takes, it conflates its queue and the backlog of what was published since it stalled, and
    # the counts and the gap become exact.

    def _missed(self) -> int:
        topic = self._topic
        return topic.last_seq - self._stall_seq if self._stall_seq and topic is not None else 0

    def offer(self, batch: PublishedBatch) -> None:
        key = self.key
        if key is not None:
            offered = batch.records
            # A quote's key is its symbol: a batch of quotes is filtered on its symbol column, seqs kept.
            records = offered.of_symbol(key) if isinstance(offered, QuoteBatch) else [r for r in offered if r.key == key]
            if not records:
                return
            if len(records) != len(batch.records):
                batch = PublishedBatch(batch.topic, records)
        elif self.depth + len(batch.records) > self.capacity and self._stalls(batch):
            return
        super().offer(batch)

    def _stalls(self, batch: PublishedBatch) -> bool:
        """Stall instead of queuing ``batch``, if the policy sheds all of it or works out at take what to keep; True if stalled."""
        topic = self._topic
        records = batch.records
        if topic is None or self.closed or self._sealed or not records or not records[-1].seq:
            return False
        policy = self.policy
        if policy is OverflowPolicy.DROP:
            if self.depth < self.capacity:
                return False
            self._shed(records)
            self._stall_seq = records[-1].seq
            topic._stall(self)
            return True
        if policy is OverflowPolicy.BACK_PRESSURE or self._held:  # (held: a conflate one conflating on its own until taken)
            return False
        if self._stall_seq:
            return True  # offered while stalled: the backlog has the batch
        over = self.depth + len(records) - self.capacity
        keep = CONFLATE_BACKLOG * self.capacity if policy is OverflowPolicy.CONFLATE else self.capacity
        if not topic._stall(self, batch, keep):
            return False
        self._stall_from = records[0].seq - 1
        self._stall_seq = records[-1].seq
        self._stall_counted = over
        self._dropped += over
        if self.on_shed is not None:
            self.on_shed(over)
        self.depth = self.capacity
        self._ready.set()
        return True

    def _catch_up(self, *, closing: bool = False) -> None:
        """Fold what was shed while stalled into the counts and the gap, and queue what the policy keeps of it; be offered batches again."""
        if not self._stall_seq:
            return
        missed = self._missed()
        topic = self._topic
        self._stall_seq = 0
        self._dropped += missed
        if topic is None:
            return
        if not closing:
            if self.policy is OverflowPolicy.CONFLATE:
                self._conflate_backlog(topic, missed)
            elif self.policy is OverflowPolicy.DROP_OLDEST:
                self._keep_newest(topic, missed)
            elif missed:
                self._gap_dropped += missed
                self._gap_to = max(self._gap_to, topic.last_seq)
        topic._resume(self)

    def _keep_newest(self, topic: Topic, missed: int) -> None:
        """Keep the newest ``capacity`` records of the queue and of the topic's backlog since the stall, as ``drop_oldest`` does.

        PERF: only the newest ``capacity`` records of the backlog are read
        back, as the batches hold them (the oldest sliced), and the queue is
        evicted from as on offer: O(batches), never a pass over the records.
        The counts were made live; this makes the gap.
        """
        start = self._stall_from
        newest, _ = topic._backlog_after(start, self.capacity)
        n = sum(map(len, newest))
        items = self._items
        if n < topic.last_seq - start:  # more was published since than it keeps: the queue is shed whole
            lo = items[0].records[self._skip].seq if items else start + 1
            self._widen_gap(self._stall_counted + missed, lo, newest[0].records[0].seq - 1)
            items.clear()
            self._skip = 0
            self.depth = 0
        else:
            self.depth = sum(map(len, items)) - self._skip
            excess = self.depth + n - self.capacity  # > 0: the batch it stalled on did not fit
            self._widen_gap(excess, *self._evict(excess))
        for batch in newest:
            self._push(batch, len(batch))

    def _conflate_backlog(self, topic: Topic, missed: int) -> None:
        """Replace the queue by the latest record per key of it and of the topic's backlog since the stall.

        If the backlog no longer reaches back to the stall, what it let go may
        have held newer records of the queued keys: the queue and what was let
        go are shed, the rest is conflated. Counts go by seq, as ``drop``'s do.
        """
        start = self._stall_from
        batches, since = topic._backlog_after(start)
        window = [batch.records for batch in batches]
        queued = [batch.records for batch in self._items]
        held = sum(map(len, queued))
        lost = since > start
        kept, _, lo, hi = _latest_per_key(window if lost else [*queued, *window], self.capacity)
        shed = held + topic.last_seq - start - len(kept)
        if lost:
            lo = queued[0][0].seq if queued else start + 1
            hi = max(hi, since)
        counted = self._stall_counted + missed
        if shed > counted:
            self._dropped += shed - counted
            if self.on_shed is not None:
                self.on_shed(shed - counted)
        self._widen_gap(shed, lo, hi)
        self._items.clear()
        if kept:
            self._items.append(PublishedBatch(self.topic, kept))
        self.depth = len(kept)
        self._held = 0
        self._loose = False

    def seal(self) -> None:
        self._catch_up()
        super().seal()

    def close(self) -> None:
        """Detach from the topic and drop what is queued."""
        self._catch_up(closing=True)
        topic = self._topic
        if topic is not None:
            self._topic = None
            topic._unsubscribe(self)
        super().close()

    def __iter__(self) -> Iterator[TopicRecord]:
        while True:
            delivery = self.take()
            if delivery is None:
                return
            yield from delivery.records

    def __repr__(self) -> str:
        return (
            f"Subscription(topic={self.topic!r}, key={self.key!r}, policy={self.policy.value!r}, "
            f"kind={self.kind!r}, depth={self.depth}, dropped={self.dropped})"
        )

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class StallBacklog:
    """The newest batches a topic published while subscribers are stalled on it: at least ``bound`` records.

    One for all of a topic's stalled ``drop_oldest`` and ``conflate``
    subscribers, which are not offered batches: each works out from here what
    it keeps when its consumer takes (the newest ``capacity`` records, or the
    latest per key). PERF: the topic appends each batch (O(1)) and trims whole
    batches off the front, keeping at least the newest ``capacity`` records of
    each ``drop_oldest`` one (all it can keep: it never misses one) and
    ``CONFLATE_BACKLOG`` capacities of each ``conflate`` one; what a conflate
    consumer that stays away longer loses is reported as a gap (exact counts,
    never a record that is not its key's latest).
    """

    __slots__ = ("batches", "records", "bound", "since")

    def __init__(self, since: int, bound: int) -> None:
        self.batches: deque[tuple[int, PublishedBatch]] = deque()
        """``(last seq, batch)`` of each published batch, oldest first."""
        self.records = 0
        self.bound = bound
        self.since = since
        """Every batch published after this seq is held."""

    def append(self, batch: PublishedBatch, last_seq: int) -> None:
        batches = self.batches
        batches.append((last_seq, batch))
        self.records += len(batch.records)
        while self.records - len(batches[0][1].records) >= self.bound:
            self._drop_first()

    def _drop_first(self) -> None:
        self.since, batch = self.batches.popleft()
        self.records -= len(batch.records)

    def drop_until(self, seq: int) -> None:
        """Let go of the batches up to ``seq`` (no stalled subscriber needs them)."""
        while self.batches and self.batches[0][0] <= seq:
            self._drop_first()
        self.since = max(self.since, seq)

    def after(self, seq: int, most: int | None = None) -> list[PublishedBatch]:
        """The records held with a seq above ``seq`` (only the newest ``most``), oldest first.

        A batch taken whole is the published one, so its encodings are shared.
        """
        out: list[PublishedBatch] = []
        left = self.records if most is None else most
        for last, batch in reversed(self.batches):
            if last <= seq or left <= 0:
                break
            records = batch.records
            n = len(records)
            skip = max(seq - last + n, n - left, 0)  # a batch's seqs follow each other
            out.append(PublishedBatch(batch.topic, records[skip:]) if skip else batch)
            left -= n - skip
        out.reverse()
        return out


def _latest_per_key(chunks: Sequence[Sequence[TopicRecord]], capacity: int) -> tuple[list[TopicRecord], int, int, int]:
    """The latest record of each of the newest ``capacity`` keys of ``chunks``, in arrival order; and of the rest, how many and the first and last seq.

    Reads back from the newest record and stops at ``capacity`` keys. The
    chunks are in seq order (a queue is), so the first and the last record
    not kept bound the gap.
    """
    latest: dict[str, tuple[int, int, TopicRecord]] = {}
    for c in range(len(chunks) - 1, -1, -1):
        chunk = chunks[c]
        i = len(chunk)
        for record in reversed(chunk):
            i -= 1
            if record.key not in latest:
                latest[record.key] = (c, i, record)
                if len(latest) == capacity:
                    break
        else:
            continue
        break
    picks = list(latest.values())
    picks.reverse()
    kept = [record for _, _, record in picks]
    shed = sum(map(len, chunks)) - len(kept)
    if not shed:
        return kept, 0, 0, 0
    at = {(c, i) for c, i, _ in picks}
    forward = ((c, i) for c in range(len(chunks)) for i in range(len(chunks[c])))
    backward = ((c, i) for c in range(len(chunks) - 1, -1, -1) for i in range(len(chunks[c]) - 1, -1, -1))
    lo_c, lo_i = next(p for p in forward if p not in at)
    hi_c, hi_i = next(p for p in backward if p not in at)
    return kept, shed, chunks[lo_c][lo_i].seq, chunks[hi_c][hi_i].seq
