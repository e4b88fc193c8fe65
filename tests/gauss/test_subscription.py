"""Bounded subscriber queues: the four overflow policies, gaps, sealing, closing."""

from __future__ import annotations

import json

import gevent
import pytest
from gauss_plugins.storage.memory import MemoryStorage
from hypothesis import given, settings
from hypothesis import strategies as st

from gauss.core import QuoteBatch, TopicRecord
from gauss.metrics import Metrics
from gauss.records import OverflowPolicy
from gauss.subscription import CONFLATE_BACKLOG, BoundedQueue, PublishedBatch
from gauss.topics import Topic


def batch(first_seq: int, n: int, keys: str = "AB") -> PublishedBatch:
    return PublishedBatch(
        "t", [TopicRecord(1000 + s, keys[(s - 1) % len(keys)], {"i": s}, s) for s in range(first_seq, first_seq + n)]
    )


def seqs(queue: BoundedQueue) -> list[int]:
    delivery = queue.take(timeout=0)
    assert delivery is not None
    return [r.seq for r in delivery.records]


def test_batch_that_fits_is_delivered_whole_and_shared() -> None:
    queue = BoundedQueue(capacity=10)
    published = batch(1, 4)
    queue.offer(published)
    assert queue.depth == 4
    delivery = queue.take(timeout=0)
    assert delivery is not None and delivery.batches == [published] and delivery.gap is None
    assert queue.delivered == 4 and queue.depth == 0


def test_drop_sheds_the_newest_and_reports_the_gap() -> None:
    queue = BoundedQueue(capacity=5, policy=OverflowPolicy.DROP)
    queue.offer(batch(1, 3))
    queue.offer(batch(4, 4))  # only 2 fit: seqs 6 and 7 are shed
    queue.offer(batch(8, 1))  # full: shed
    assert queue.dropped == 3
    delivery = queue.take(timeout=0)
    assert delivery is not None
    assert [r.seq for r in delivery.records] == [1, 2, 3, 4, 5]
    assert delivery.gap is not None and (delivery.gap.dropped, delivery.gap.from_seq, delivery.gap.to_seq) == (3, 6, 8)
    queue.offer(batch(9, 1))
    again = queue.take(timeout=0)
    assert again is not None and again.gap is None


def test_drop_oldest_evicts_queued_records_to_keep_the_newest() -> None:
    queue = BoundedQueue(capacity=5, policy=OverflowPolicy.DROP_OLDEST)
    queue.offer(batch(1, 3))
    queue.offer(batch(4, 4))
    delivery = queue.take(timeout=0)
    assert delivery is not None
    assert [r.seq for r in delivery.records] == [3, 4, 5, 6, 7]
    assert delivery.gap is not None and (delivery.gap.dropped, delivery.gap.from_seq, delivery.gap.to_seq) == (2, 1, 2)


def test_drop_oldest_trims_a_batch_larger_than_the_capacity() -> None:
    queue = BoundedQueue(capacity=3, policy=OverflowPolicy.DROP_OLDEST)
    queue.offer(batch(1, 2))
    queue.offer(batch(3, 5))
    assert seqs(queue) == [5, 6, 7]
    assert queue.dropped == 4


def test_conflate_keeps_the_latest_record_per_key_when_behind() -> None:
    queue = BoundedQueue(capacity=4, policy=OverflowPolicy.CONFLATE)
    queue.offer(batch(1, 3, keys="ABC"))  # A1 B2 C3
    queue.offer(batch(4, 3, keys="ABC"))  # A4 B5 C6 -> conflated to A4 B5 C6
    delivery = queue.take(timeout=0)
    assert delivery is not None
    assert [(r.key, r.seq) for r in delivery.records] == [("A", 4), ("B", 5), ("C", 6)]
    assert queue.dropped == 3
    assert delivery.gap is not None and (delivery.gap.from_seq, delivery.gap.to_seq) == (1, 3)


def test_conflate_with_more_keys_than_capacity_keeps_the_newest_keys() -> None:
    queue = BoundedQueue(capacity=2, policy=OverflowPolicy.CONFLATE)
    queue.offer(batch(1, 4, keys="ABCD"))
    assert [r.key for r in queue.take(timeout=0).records] == ["C", "D"]  # type: ignore[union-attr]


def test_back_pressure_makes_the_publisher_wait_until_the_consumer_takes() -> None:
    queue = BoundedQueue(capacity=4, policy=OverflowPolicy.BACK_PRESSURE)
    queue.offer(batch(1, 3))
    done = []
    publisher = gevent.spawn(lambda: (queue.offer(batch(4, 3)), done.append(True)))
    gevent.sleep(0.05)
    assert not done, "publisher should wait while the queue is full"
    assert seqs(queue) == [1, 2, 3]
    publisher.join(timeout=5)
    assert done
    assert seqs(queue) == [4, 5, 6]
    assert queue.dropped == 0


def test_back_pressure_accepts_an_oversized_batch_into_an_empty_queue() -> None:
    queue = BoundedQueue(capacity=2, policy=OverflowPolicy.BACK_PRESSURE)
    queue.offer(batch(1, 5))
    assert seqs(queue) == [1, 2, 3, 4, 5]


def test_back_pressure_publisher_is_released_when_closed() -> None:
    queue = BoundedQueue(capacity=1, policy=OverflowPolicy.BACK_PRESSURE)
    queue.offer(batch(1, 1))
    publisher = gevent.spawn(queue.offer, batch(2, 1))
    gevent.sleep(0.01)
    queue.close()
    publisher.join(timeout=5)
    assert publisher.dead


def test_take_waits_for_a_batch_and_times_out_with_none() -> None:
    queue = BoundedQueue(capacity=10)
    assert queue.take(timeout=0.01) is None
    gevent.spawn_later(0.02, queue.offer, batch(1, 1))
    delivery = queue.take(timeout=5)
    assert delivery is not None and len(delivery.records) == 1


def test_sealed_queue_drains_then_ends() -> None:
    queue = BoundedQueue(capacity=10)
    queue.offer(batch(1, 2))
    queue.seal()
    queue.offer(batch(3, 1))  # refused: sealed
    assert seqs(queue) == [1, 2]
    assert queue.take() is None


def test_closing_wakes_a_waiting_consumer() -> None:
    queue = BoundedQueue(capacity=10)
    consumer = gevent.spawn(queue.take)
    gevent.sleep(0.01)
    queue.close()
    assert consumer.get(timeout=5) is None


def test_records_json_is_the_spec_form_computed_once() -> None:
    published = batch(1, 2)
    first = published.records_json()
    assert published.records_json() is first
    assert json.loads(first) == [
        {"ts_ms": 1001, "key": "A", "data": {"i": 1}, "seq": 1},
        {"ts_ms": 1002, "key": "B", "data": {"i": 2}, "seq": 2},
    ]


def test_encoded_is_cached_per_owner() -> None:
    published = batch(1, 2)
    calls = []

    def encode(records: list[TopicRecord]) -> bytes:
        calls.append(1)
        return b"x" * len(records)

    owner = object()
    assert published.encoded(owner, encode) == b"xx"
    assert published.encoded(owner, encode) == b"xx"
    assert len(calls) == 1


def test_shed_callback_counts_every_shed_record() -> None:
    shed: list[int] = []
    queue = BoundedQueue(capacity=2, policy=OverflowPolicy.DROP, on_shed=shed.append)
    queue.offer(batch(1, 5))
    assert sum(shed) == 3 == queue.dropped


def test_bad_capacity_is_refused() -> None:
    with pytest.raises(ValueError):
        BoundedQueue(capacity=0)


# --- a full drop subscriber costs its topic nothing per batch (issue 13) -------------------


def quotes(n: int, start: int = 0) -> list[TopicRecord]:
    return [TopicRecord(1000 + start + i, "AB"[i % 2], {"i": start + i}) for i in range(n)]


def test_a_full_drop_subscriber_stops_being_offered_and_catches_up_exactly_when_it_takes() -> None:
    metrics = Metrics()
    topic = Topic("t", "any", MemoryStorage(1000), metrics=metrics)
    stalled = topic.subscribe(policy="drop", capacity=4, kind="client")
    reader = topic.subscribe(policy="drop", capacity=1000, kind="client")
    keyed = topic.subscribe(key="A", policy="drop", capacity=1, kind="client")
    topic.publish(quotes(4))  # fills it
    topic.publish(quotes(3, 4))  # seqs 5-7 shed: now stalled
    assert stalled not in topic._offered and keyed in topic._offered  # a key filter never stalls
    for i in range(10):
        topic.publish(quotes(2, 7 + 2 * i))  # seqs 8-27, never offered to it
    assert stalled.dropped == 23, "the count is live while stalled (watchdogs read it)"
    assert stalled.depth == 4
    delivery = stalled.take(timeout=0)
    assert delivery is not None and [r.seq for r in delivery.records] == [1, 2, 3, 4]
    assert delivery.gap is not None and (delivery.gap.dropped, delivery.gap.from_seq, delivery.gap.to_seq) == (23, 5, 27)
    assert stalled in topic._offered and stalled.dropped == 23
    topic.publish(quotes(1, 27))
    again = stalled.take(timeout=0)
    assert again is not None and [r.seq for r in again.records] == [28] and again.gap is None
    reader_delivery = reader.take(timeout=0)
    assert reader_delivery is not None and [r.seq for r in reader_delivery.records] == list(range(1, 29))
    shed_metric = metrics.value("gauss_subscriber_dropped_records_total", topic="t", kind="client")
    assert shed_metric == stalled.dropped + keyed.dropped


def test_a_stalled_subscriber_sealed_or_closed_stops_counting() -> None:
    topic = Topic("t", "any", MemoryStorage(1000))
    sealed = topic.subscribe(policy="drop", capacity=2)
    closed = topic.subscribe(policy="drop", capacity=2)
    topic.publish(quotes(2))
    topic.publish(quotes(2, 2))
    assert not topic._offered
    sealed.seal()
    closed.close()
    topic.publish(quotes(5, 4))
    assert sealed.dropped == 2 and not topic._stalled
    delivery = sealed.take(timeout=0)
    assert delivery is not None and [r.seq for r in delivery.records] == [1, 2]
    assert sealed.take(timeout=0) is None


@settings(max_examples=150, deadline=None)
@given(
    policy=st.sampled_from(["drop", "drop_oldest"]),
    capacity=st.integers(1, 12),
    steps=st.lists(st.one_of(st.integers(1, 9), st.just(0)), max_size=40),  # a batch of n quotes, or 0: the consumer takes
)
def test_drop_policies_deliver_and_report_exactly_what_a_model_queue_does(policy: str, capacity: int, steps: list[int]) -> None:
    topic = Topic("t", "any", MemoryStorage(1000))
    sub = topic.subscribe(policy=policy, capacity=capacity)
    model: list[int] = []
    shed: list[int] = []
    seq = 0
    for step in [*steps, 0]:
        if step:
            topic.publish(quotes(step, seq))
            new = list(range(seq + 1, seq + step + 1))
            seq += step
            if policy == "drop":
                room = capacity - len(model)
                model += new[: max(room, 0)]
                shed += new[max(room, 0) :]
            else:
                model += new
                shed += model[: max(len(model) - capacity, 0)]
                model = model[-capacity:]
            continue
        delivery = sub.take(timeout=0)
        got = [] if delivery is None else [r.seq for r in delivery.records]
        assert got == model
        gap = None if delivery is None else delivery.gap
        if shed:
            assert gap is not None and (gap.dropped, gap.from_seq, gap.to_seq) == (len(shed), min(shed), max(shed))
        else:
            assert gap is None
        model, shed = [], []
    assert sub.delivered + sub.dropped == seq


# --- a full conflate subscriber costs its topic nothing per batch either (issue 13) ------------


def keyed(keys: str, start: int = 0) -> list[TopicRecord]:
    return [TopicRecord(1000 + start + i, key, {"i": start + i}) for i, key in enumerate(keys)]


def test_a_full_conflate_subscriber_stalls_and_conflates_exactly_when_it_takes() -> None:
    metrics = Metrics()
    topic = Topic("t", "any", MemoryStorage(1000), metrics=metrics)
    stalled = topic.subscribe(policy="conflate", capacity=4, kind="client")
    reader = topic.subscribe(policy="drop", capacity=1000, kind="reader")
    topic.publish(keyed("ABC"))  # seqs 1-3 fit
    topic.publish(keyed("ABD", 3))  # A4 B5 D6 does not: stalled, 2 at least shed
    assert stalled not in topic._offered and stalled.depth == 4
    for i in range(5):
        topic.publish(keyed("AE", 6 + 2 * i))  # seqs 7-16, never offered to it
    assert stalled.dropped == 12, "at least all beyond the capacity, live (watchdogs read it)"
    assert metrics.value("gauss_subscriber_dropped_records_total", topic="t", kind="client") == 12
    delivery = stalled.take(timeout=0)
    assert delivery is not None
    assert [(r.key, r.seq) for r in delivery.records] == [("C", 3), ("B", 5), ("D", 6), ("A", 15), ("E", 16)][-4:]
    assert delivery.gap is not None and (delivery.gap.dropped, delivery.gap.from_seq, delivery.gap.to_seq) == (12, 1, 14)
    assert stalled.dropped == 12 and stalled.delivered == 4
    assert stalled in topic._offered and topic._backlog is None
    topic.publish(keyed("F", 16))
    again = stalled.take(timeout=0)
    assert again is not None and [r.seq for r in again.records] == [17] and again.gap is None
    reader_delivery = reader.take(timeout=0)
    assert reader_delivery is not None and [r.seq for r in reader_delivery.records] == list(range(1, 18))
    assert metrics.value("gauss_subscriber_dropped_records_total", topic="t", kind="client") == stalled.dropped


def test_a_conflate_subscriber_further_behind_than_the_backlog_gets_the_latest_of_what_it_holds() -> None:
    topic = Topic("t", "any", MemoryStorage(1000))
    sub = topic.subscribe(policy="conflate", capacity=2)
    topic.publish(keyed("AB"))
    topic.publish(keyed("C", 2))  # stalled at seq 2: the backlog starts with seq 3
    for i in range(20):
        topic.publish(keyed("D", 3 + i))  # seqs 4-23: the backlog keeps the newest 8 (4 capacities)
    assert topic._backlog is not None and topic._backlog.records == 8
    delivery = sub.take(timeout=0)
    assert delivery is not None and [(r.key, r.seq) for r in delivery.records] == [("D", 23)]
    # A, B and C may have been updated in what the backlog let go: all of them are reported, none delivered.
    assert delivery.gap is not None and (delivery.gap.dropped, delivery.gap.from_seq, delivery.gap.to_seq) == (22, 1, 22)
    assert sub.delivered + sub.dropped == topic.last_seq


def test_a_waiting_consumer_wakes_when_its_conflate_subscription_stalls_on_a_batch_larger_than_it() -> None:
    topic = Topic("t", "any", MemoryStorage(1000))
    sub = topic.subscribe(policy="conflate", capacity=2)
    consumer = gevent.spawn(sub.take, 5)
    gevent.sleep(0)
    topic.publish(keyed("ABCA"))  # nothing queued of its own: it stalls holding nothing
    delivery = consumer.get(timeout=5)
    assert delivery is not None and [(r.key, r.seq) for r in delivery.records] == [("C", 3), ("A", 4)]
    assert delivery.gap is not None and (delivery.gap.dropped, delivery.gap.from_seq, delivery.gap.to_seq) == (2, 1, 2)


def test_stalled_conflate_subscribers_share_one_backlog_that_keeps_only_what_they_need() -> None:
    topic = Topic("t", "any", MemoryStorage(1000))
    small = topic.subscribe(policy="conflate", capacity=1)
    big = topic.subscribe(policy="conflate", capacity=3)
    topic.publish(keyed("AB"))  # small stalls (after seq 0), big holds both
    topic.publish(keyed("CD", 2))  # big stalls (after seq 2)
    assert topic._backlog is not None and topic._backlog.bound == 12 and topic._backlog.since == 0
    for i in range(4):
        topic.publish(keyed("EF", 4 + 2 * i))
    assert small.take(timeout=0) is not None
    assert topic._backlog is not None and topic._backlog.since == 2, "what only small needed is let go"
    big_delivery = big.take(timeout=0)
    assert big_delivery is not None and [(r.key, r.seq) for r in big_delivery.records] == [("D", 4), ("E", 11), ("F", 12)]
    assert topic._backlog is None
    small.close()
    big.close()
    closed = topic.subscribe(policy="conflate", capacity=1)
    topic.publish(keyed("GH", 12))
    assert topic._backlog is not None
    closed.close()
    assert topic._backlog is None and not topic._stalled and closed.dropped == 1


def test_a_conflate_queue_of_its_own_holds_at_most_twice_its_capacity_and_delivers_the_same() -> None:
    queue = BoundedQueue(capacity=3, policy=OverflowPolicy.CONFLATE)
    for first in range(1, 60, 2):
        queue.offer(batch(first, 2, keys="ABCD"))
        assert sum(len(b) for b in queue._items) <= 2 * 3 + 2
    assert [(r.key, r.seq) for r in queue.take(timeout=0).records] == [("B", 58), ("C", 59), ("D", 60)]  # type: ignore[union-attr]
    assert queue.dropped == 57 and queue.delivered == 3


def eager_conflation(records: list[TopicRecord], capacity: int) -> tuple[list[TopicRecord], list[TopicRecord]]:
    """The conflation as it was done at every offer before issue 13: (kept, shed)."""
    latest: dict[str, TopicRecord] = {}
    shed: list[TopicRecord] = []
    for record in records:
        previous = latest.pop(record.key, None)
        if previous is not None:
            shed.append(previous)
        latest[record.key] = record
    kept = list(latest.values())
    if len(kept) > capacity:
        shed.extend(kept[: len(kept) - capacity])
        kept = kept[len(kept) - capacity :]
    return kept, shed


class ConflateModel:
    """The reference: the eager conflation at every offer, once the queue has overflowed, until taken.

    ``via_topic``: a subscription stalled on its topic, whose backlog keeps the
    newest batches of at least ``CONFLATE_BACKLOG`` capacities since the stall;
    if it let some go, the queue and those are shed and the rest is conflated.
    """

    def __init__(self, capacity: int, via_topic: bool) -> None:
        self.capacity = capacity
        self.via_topic = via_topic
        self.before: list[TopicRecord] = []  # queued before the overflow
        self.since: list[list[TopicRecord]] = []  # the batches from the overflow on
        self.queue: list[TopicRecord] = []  # the eager queue
        self.shed: list[TopicRecord] = []  # shed by the eager queue since the last take
        self.dropped = 0  # shed up to the last take

    def offer(self, records: list[TopicRecord]) -> None:
        if not self.since and len(self.queue) + len(records) <= self.capacity:
            self.queue += records
            self.before = list(self.queue)
            return
        self.since.append(records)
        self.queue, shed = eager_conflation(self.queue + records, self.capacity)
        self.shed += shed

    def _retained(self) -> list[list[TopicRecord]]:
        retained = list(self.since)
        while sum(map(len, retained)) - len(retained[0]) >= CONFLATE_BACKLOG * self.capacity:
            retained.pop(0)
        return retained

    def take(self) -> tuple[list[TopicRecord], list[TopicRecord]]:
        kept, shed = self.queue, self.shed
        if self.via_topic and self.since:
            retained = self._retained()
            if len(retained) < len(self.since):  # the backlog let some go
                kept, _ = eager_conflation([r for b in retained for r in b], self.capacity)
                seen = {r.seq for r in kept}
                shed = [r for r in self.before + [r for b in self.since for r in b] if r.seq not in seen]
        self.dropped += len(shed)
        self.before, self.since, self.queue, self.shed = [], [], [], []
        return kept, shed

    def live_dropped(self) -> int:
        """What ``dropped`` reads between takes: exact for a queue of its own, at least all beyond the capacity while stalled."""
        if not self.via_topic:
            return self.dropped + len(self.shed)
        if not self.since:
            return self.dropped
        return self.dropped + len(self.before) + sum(map(len, self.since)) - self.capacity


@settings(max_examples=300, deadline=None)
@given(
    via_topic=st.booleans(),
    capacity=st.integers(1, 8),
    steps=st.lists(
        st.one_of(st.text("ABCDEFG", min_size=1, max_size=9), st.sampled_from(["take", "dropped"])), max_size=50
    ),  # a batch (the keys of its records), a take, or a read of ``dropped``
)
def test_conflate_delivers_and_reports_exactly_what_the_eager_model_does(via_topic: bool, capacity: int, steps: list[str]) -> None:
    metrics = Metrics()
    topic = Topic("t", "any", MemoryStorage(1000), metrics=metrics)
    shed_counts: list[int] = []
    queue: BoundedQueue = (
        topic.subscribe(policy="conflate", capacity=capacity)
        if via_topic
        else BoundedQueue("t", policy=OverflowPolicy.CONFLATE, capacity=capacity, on_shed=shed_counts.append)
    )
    model = ConflateModel(capacity, via_topic)
    seq = 0
    for step in [*steps, "take"]:
        if step == "dropped":
            assert queue.dropped == model.live_dropped()
            if via_topic:
                assert metrics.value("gauss_subscriber_dropped_records_total", topic="t", kind="client") == queue.dropped
        elif step == "take":
            delivery = queue.take(timeout=0)
            kept, shed = model.take()
            assert ([] if delivery is None else [(r.key, r.seq) for r in delivery.records]) == [(r.key, r.seq) for r in kept]
            gap = None if delivery is None else delivery.gap
            if shed:
                seqs = [r.seq for r in shed]
                assert gap is not None and (gap.dropped, gap.from_seq, gap.to_seq) == (len(shed), min(seqs), max(seqs))
            else:
                assert gap is None
            assert queue.dropped == model.dropped
        else:
            records = keyed(step, seq)
            if via_topic:
                topic.publish(records)
            else:
                for i, record in enumerate(records):
                    record.seq = seq + 1 + i
                queue.offer(PublishedBatch("t", records))
            model.offer([TopicRecord(r.ts_ms, r.key, r.data, seq + 1 + i) for i, r in enumerate(records)])
            seq += len(records)
            assert queue.depth <= capacity
    assert queue.delivered + queue.dropped == seq
    if via_topic:
        assert topic._backlog is None and queue in topic._offered
        assert metrics.value("gauss_subscriber_dropped_records_total", topic="t", kind="client") == queue.dropped
    else:
        assert sum(shed_counts) == queue.dropped


# --- a full drop_oldest subscriber costs its topic nothing per batch either (issue 13) ---------


def quote_batch(n: int, start: int = 0) -> QuoteBatch:
    """``n`` quotes as columns, as :func:`quotes` makes them."""
    return QuoteBatch(["AB"[i % 2] for i in range(n)], [1000 + start + i for i in range(n)], [1.0] * n, [1.5] * n, [1.0] * n, [1.0] * n)


def test_a_full_drop_oldest_subscriber_stalls_and_keeps_the_newest_when_it_takes() -> None:
    metrics = Metrics()
    topic = Topic("t", "quote", MemoryStorage(1000), metrics=metrics)
    stalled = topic.subscribe(policy="drop_oldest", capacity=5, kind="client")
    reader = topic.subscribe(policy="drop", capacity=1000, kind="reader")
    topic.publish(quote_batch(3))  # seqs 1-3 fit
    topic.publish(quote_batch(3, 3))  # 4-6 do not: stalled, seq 1 shed
    assert stalled not in topic._offered and stalled.depth == 5
    assert topic._backlog is not None and topic._backlog.bound == 5, "the newest capacity is all it can keep"
    for i in range(4):
        topic.publish(quote_batch(2, 6 + 2 * i))  # seqs 7-14, never offered to it
    assert stalled.dropped == 9, "exact live (watchdogs read it)"
    assert metrics.value("gauss_subscriber_dropped_records_total", topic="t", kind="client") == 9
    last = topic.publish(quote_batch(3, 14))  # seqs 15-17
    delivery = stalled.take(timeout=0)
    assert delivery is not None and [r.seq for r in delivery.records] == [13, 14, 15, 16, 17]
    assert delivery.batches[-1] is last, "a batch delivered whole is the published one (its encodings shared)"
    assert delivery.gap is not None and (delivery.gap.dropped, delivery.gap.from_seq, delivery.gap.to_seq) == (12, 1, 12)
    assert stalled.dropped == 12 and stalled.delivered == 5 and stalled.depth == 0
    assert stalled in topic._offered and topic._backlog is None
    topic.publish(quote_batch(1, 17))
    again = stalled.take(timeout=0)
    assert again is not None and [r.seq for r in again.records] == [18] and again.gap is None
    reader_delivery = reader.take(timeout=0)
    assert reader_delivery is not None and [r.seq for r in reader_delivery.records] == list(range(1, 19))
    assert metrics.value("gauss_subscriber_dropped_records_total", topic="t", kind="client") == stalled.dropped


def test_a_drop_oldest_subscriber_that_took_before_its_capacity_was_published_keeps_the_rest_of_its_queue() -> None:
    topic = Topic("t", "any", MemoryStorage(1000))
    sub = topic.subscribe(policy="drop_oldest", capacity=5)
    topic.publish(quotes(2))
    topic.publish(quotes(2, 2))  # seqs 1-4 queued
    topic.publish(quotes(3, 4))  # 5-7 do not fit: stalled
    assert sub.dropped == 2 and sub not in topic._offered
    delivery = sub.take(timeout=0)
    assert delivery is not None and [r.seq for r in delivery.records] == [3, 4, 5, 6, 7]
    assert delivery.gap is not None and (delivery.gap.dropped, delivery.gap.from_seq, delivery.gap.to_seq) == (2, 1, 2)


def test_a_waiting_consumer_wakes_when_its_drop_oldest_subscription_stalls_on_a_batch_larger_than_it() -> None:
    topic = Topic("t", "any", MemoryStorage(1000))
    sub = topic.subscribe(policy="drop_oldest", capacity=2)
    consumer = gevent.spawn(sub.take, 5)
    gevent.sleep(0)
    topic.publish(quotes(5))  # nothing queued of its own: it stalls holding nothing
    delivery = consumer.get(timeout=5)
    assert delivery is not None and [r.seq for r in delivery.records] == [4, 5]
    assert delivery.gap is not None and (delivery.gap.dropped, delivery.gap.from_seq, delivery.gap.to_seq) == (3, 1, 3)


def test_stalled_drop_oldest_and_conflate_subscribers_share_one_backlog_bounded_by_what_each_needs() -> None:
    topic = Topic("t", "any", MemoryStorage(1000))
    oldest = topic.subscribe(policy="drop_oldest", capacity=3)
    conflate = topic.subscribe(policy="conflate", capacity=2)
    topic.publish(quotes(3))  # conflate stalls (after seq 0); drop_oldest is full
    topic.publish(quotes(1, 3))  # drop_oldest stalls (after seq 3)
    assert topic._backlog is not None and topic._backlog.bound == CONFLATE_BACKLOG * 2
    conflate.close()
    assert topic._backlog is not None and topic._backlog.bound == 3 and topic._backlog.since == 3, "what only it needed is let go"
    for i in range(6):
        topic.publish(quotes(1, 4 + i))  # seqs 5-10: it keeps the newest 3 (whole batches)
    assert topic._backlog is not None and topic._backlog.records == 3
    delivery = oldest.take(timeout=0)
    assert delivery is not None and [r.seq for r in delivery.records] == [8, 9, 10]
    assert delivery.gap is not None and (delivery.gap.dropped, delivery.gap.from_seq, delivery.gap.to_seq) == (7, 1, 7)
    assert topic._backlog is None and not topic._stalled
    closed = topic.subscribe(policy="drop_oldest", capacity=1)
    topic.publish(quotes(2, 10))
    assert topic._backlog is not None
    closed.close()
    assert topic._backlog is None and not topic._stalled and closed.dropped == 1


class DropOldestModel:
    """The reference: the eager ``drop_oldest`` queue, which evicts its oldest records at every offer."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.queue: list[int] = []  # the seqs queued
        self.shed: list[int] = []  # shed since the last take
        self.dropped = 0

    def offer(self, seqs: list[int]) -> None:
        self.queue += seqs
        over = max(len(self.queue) - self.capacity, 0)
        self.shed += self.queue[:over]
        self.dropped += over
        self.queue = self.queue[over:]

    def take(self) -> tuple[list[int], list[int]]:
        out = self.queue, self.shed
        self.queue, self.shed = [], []
        return out


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 8),
    columns=st.booleans(),  # the topic is published quotes as columns (QuoteBatch) or records
    neighbours=st.booleans(),  # a conflate and a smaller drop_oldest subscriber stall beside it and share the backlog
    steps=st.lists(st.one_of(st.integers(1, 12), st.sampled_from(["take", "dropped", "neighbours take"])), max_size=50),
)
def test_drop_oldest_through_a_topic_delivers_and_reports_exactly_what_the_eager_queue_does(
    capacity: int, columns: bool, neighbours: bool, steps: list[int | str]
) -> None:
    metrics = Metrics()
    topic = Topic("t", "quote" if columns else "any", MemoryStorage(1000), metrics=metrics)
    sub = topic.subscribe(policy="drop_oldest", capacity=capacity)
    others = (
        [topic.subscribe(policy="conflate", capacity=2 * capacity, kind="other"), topic.subscribe(policy="drop_oldest", capacity=1, kind="other")]
        if neighbours
        else []
    )
    model = DropOldestModel(capacity)
    seq = 0
    for step in [*steps, "take", "neighbours take"]:
        if step == "dropped":
            assert sub.dropped == model.dropped, "exact live"
            assert metrics.value("gauss_subscriber_dropped_records_total", topic="t", kind="client") == sub.dropped
        elif step == "take":
            delivery = sub.take(timeout=0)
            kept, shed = model.take()
            assert ([] if delivery is None else [r.seq for r in delivery.records]) == kept
            if delivery is not None:
                assert [r.ts_ms for r in delivery.records] == [999 + s for s in kept], "each seq on its own record"
            gap = None if delivery is None else delivery.gap
            if shed:
                assert gap is not None and (gap.dropped, gap.from_seq, gap.to_seq) == (len(shed), min(shed), max(shed))
            else:
                assert gap is None
            assert sub.dropped == model.dropped and sub.depth == 0
        elif step == "neighbours take":
            for other in others:
                other.take(timeout=0)
        else:
            assert isinstance(step, int)
            topic.publish(quote_batch(step, seq) if columns else quotes(step, seq))
            model.offer(list(range(seq + 1, seq + step + 1)))
            seq += step
            assert sub.depth == len(model.queue) <= capacity
    assert sub.delivered + sub.dropped == seq
    assert metrics.value("gauss_subscriber_dropped_records_total", topic="t", kind="client") == sub.dropped
    assert topic._backlog is None and not topic._stalled and sub in topic._offered, "nobody stalled: the backlog is let go"


def test_a_keyed_subscriber_of_a_quote_topic_gets_its_symbol_as_columns_with_the_seqs() -> None:
    topic = Topic("q", "quote", MemoryStorage(1000))
    keyed = topic.subscribe(key="EURUSD", policy="drop", capacity=100, kind="client")
    symbols = ["EURUSD", "GBPUSD", "EURUSD", "USDJPY"] * 5
    ones = [1.0] * len(symbols)
    topic.publish(QuoteBatch(symbols, list(range(1000, 1020)), ones, ones, ones, ones))
    topic.publish(QuoteBatch(["GBPUSD"], [1020], [1.0], [1.0], [1.0], [1.0]))  # nothing of its key: not queued
    delivery = keyed.take(timeout=0)
    assert delivery is not None and isinstance(delivery.records, QuoteBatch)
    assert [(r.key, r.seq, r.ts_ms) for r in delivery.records] == [("EURUSD", s, 999 + s) for s in range(1, 21, 2)]
    assert keyed.take(timeout=0) is None
