"""Bounded queues of published batches and the overflow policies of SPEC section 5.

Every consumer of a topic (processor, sink client, WebSocket client, a
library callback) reads through a :class:`Subscription`: a queue with a
capacity counted in records and a policy saying what happens when a batch
does not fit. Policies that shed count what they shed and remember the seq
range shed, which the next :meth:`BoundedQueue.take` reports as a
:class:`Gap`. Sources use the same :class:`BoundedQueue` between their
connections and their topic.

Everything here is cooperative (gevent): a ``back_pressure`` publisher and a
waiting consumer yield to other greenlets, never to the OS.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import gevent.event

from gauss.core import QuoteBatch, TopicRecord
from gauss.records import OverflowPolicy, encode_records

if TYPE_CHECKING:
    from gauss.topics import Topic

__all__ = ["PublishedBatch", "Gap", "Delivery", "BoundedQueue", "Subscription", "DEFAULT_CAPACITY"]

DEFAULT_CAPACITY = 10_000

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
        self._encoded: dict[int, bytes] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"PublishedBatch(topic={self.topic!r}, records={len(self.records)})"

    def records_json(self) -> bytes:
        """The JSON array of the records' SPEC form (with ``seq``), computed once."""
        if self._json is None:
            self._json = encode_records(self.records)
        return self._json

    def encoded(self, owner: object, encode: Callable[[Sequence[TopicRecord]], bytes]) -> bytes:
        """``encode(records)`` computed once per ``owner`` (a sink, say) and cached."""
        cache = self._encoded
        if cache is None:
            cache = self._encoded = {}
        key = id(owner)
        data = cache.get(key)
        if data is None:
            data = cache[key] = encode(self.records)
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
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.topic = topic
        self.policy = OverflowPolicy.parse(policy)
        self.capacity = capacity
        self.kind = kind
        self.on_shed = on_shed
        self.on_stall = on_stall
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
        self._ready = gevent.event.Event()
        self._room = gevent.event.Event()
        self._gap_dropped = 0
        self._gap_from = 0
        self._gap_to = 0

    @property
    def dropped(self) -> int:
        """Records shed so far."""
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
        excess = total = self.depth + n - capacity
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
        self._count_shed(total, first, last)
        self._push(batch, n)

    def _conflate(self, batch: PublishedBatch) -> None:
        latest: dict[str, TopicRecord] = {}
        shed: list[TopicRecord] = []
        for source in (*self._items, batch):  # (a conflate queue never skips into a batch: _skip is 0)
            for record in source.records:
                previous = latest.pop(record.key, None)
                if previous is not None:
                    shed.append(previous)
                latest[record.key] = record  # re-inserted: dict order is arrival order
        kept = list(latest.values())
        if len(kept) > self.capacity:
            shed.extend(kept[: len(kept) - self.capacity])
            kept = kept[len(kept) - self.capacity :]
        self._shed(shed, in_seq_order=False)
        self._items.clear()
        self.depth = 0
        self._push(PublishedBatch(batch.topic, kept), len(kept))

    def _shed(self, records: Sequence[TopicRecord], *, in_seq_order: bool = True) -> None:
        """Count ``records`` as shed and widen the gap to report."""
        if in_seq_order:
            self._shed_span(records, 0, len(records))
            return
        seqs = [record.seq for record in records if record.seq]
        self._count_shed(len(records), min(seqs, default=0), max(seqs, default=0))

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
        self._gap_dropped += n
        if lo and (not self._gap_from or lo < self._gap_from):
            self._gap_from = lo
        if hi > self._gap_to:
            self._gap_to = hi
        if self.on_shed is not None:
            self.on_shed(n)

    # --- consumer side -------------------------------------------------------

    def take(self, timeout: float | None = None) -> Delivery | None:
        """Everything waiting, blocking cooperatively up to ``timeout`` seconds.

        None on timeout, once closed, or once sealed and empty.
        """
        if self.closed:
            return None
        if not self._items:
            if self._sealed:
                return None
            self._ready.clear()
            self._ready.wait(timeout)
            if self.closed or not self._items:
                return None
        batches = list(self._items)
        if self._skip:
            batches[0] = PublishedBatch(batches[0].topic, batches[0].records[self._skip :])
            self._skip = 0
        self._items.clear()
        self.delivered += self.depth
        self.depth = 0
        gap = None
        if self._gap_dropped:
            gap = Gap(self._gap_dropped, self._gap_from, self._gap_to)
            self._gap_dropped = self._gap_from = self._gap_to = 0
        self._room.set()
        return Delivery(batches, gap)

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
    ) -> None:
        self._topic = topic
        self._stall_seq = 0
        """While stalled: the last seq shed before the topic stopped offering batches (0: not stalled)."""
        super().__init__(
            topic.name if topic is not None else "",
            policy=policy,
            capacity=capacity,
            kind=kind,
            on_shed=on_shed,
            on_stall=on_stall,
        )
        self.key = key
        self.start_seq = start_seq

    # A stalled subscription (full, ``drop``, no key filter) is not offered the topic's batches:
    # it sheds everything published until its consumer takes again, so what it missed is
    # ``topic.last_seq - _stall_seq``, folded into ``dropped`` and the gap when it next takes.

    def _missed(self) -> int:
        topic = self._topic
        return topic.last_seq - self._stall_seq if self._stall_seq and topic is not None else 0

    def offer(self, batch: PublishedBatch) -> None:
        key = self.key
        if key is not None:
            records = [r for r in batch.records if r.key == key]
            if not records:
                return
            if len(records) != len(batch.records):
                batch = PublishedBatch(batch.topic, records)
        elif (
            self.policy is OverflowPolicy.DROP
            and self.depth >= self.capacity
            and self._topic is not None
            and not (self.closed or self._sealed)
            and batch.records
            and batch.records[-1].seq
        ):
            self._shed(batch.records)
            self._stall_seq = batch.records[-1].seq
            self._topic._stall(self)
            return
        super().offer(batch)

    def _catch_up(self) -> None:
        """Fold what was shed while stalled into the counts and the gap; be offered batches again."""
        if not self._stall_seq:
            return
        missed = self._missed()
        topic = self._topic
        self._stall_seq = 0
        self._dropped += missed
        if missed and topic is not None:
            self._gap_dropped += missed
            self._gap_to = max(self._gap_to, topic.last_seq)
        if topic is not None:
            topic._resume(self)

    def take(self, timeout: float | None = None) -> Delivery | None:
        self._catch_up()
        return super().take(timeout)

    def seal(self) -> None:
        self._catch_up()
        super().seal()

    def close(self) -> None:
        """Detach from the topic and drop what is queued."""
        self._catch_up()
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
