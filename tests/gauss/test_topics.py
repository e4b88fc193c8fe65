"""Topics: numbering, storing, fan-out by policy, key filters, templates, restarts."""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from gauss_plugins.storage.memory import MemoryStorage
from support import wait_until
from support.plugins import ListStorage

from gauss.config import TopicSpec
from gauss.core import QuoteBatch, TopicRecord
from gauss.errors import UnknownTopic
from gauss.metrics import Metrics
from gauss.records import DataFormat, OverflowPolicy, TopicQuery
from gauss.registry import convert
from gauss.runners import ProcessorRunner
from gauss.topics import Topic, TopicRegistry


class Recording:
    """A processor that keeps every record it is given."""

    name = "recording"
    flush_interval = None

    def __init__(self, seen: list[TopicRecord]) -> None:
        self.seen = seen

    def start(self, context: object) -> None: ...

    def process(self, topic: str, records: list[TopicRecord], context: object) -> None:
        self.seen.extend(records)

    def flush(self, context: object) -> None: ...

    def stop(self, context: object) -> None: ...


def quotes(n: int, start: int = 0, keys: str = "AB") -> list[TopicRecord]:
    return [TopicRecord(1_000 + i, keys[i % len(keys)], {"i": i}) for i in range(start, start + n)]


def test_publish_numbers_records_from_one_and_stores_them() -> None:
    storage = ListStorage()
    topic = Topic("t", "any", storage)
    topic.publish(quotes(3))
    topic.publish(quotes(2, start=3))
    assert [r.seq for r in storage.records] == [1, 2, 3, 4, 5]
    assert topic.last_seq == 5 and topic.bounds() == (1, 5) and topic.count() == 5


def test_publish_does_not_renumber_the_callers_records() -> None:
    topic = Topic("t", "any", ListStorage())
    mine = quotes(2)
    topic.publish(mine)
    assert [r.seq for r in mine] == [0, 0]


def test_owned_records_are_numbered_and_delivered() -> None:
    topic = Topic("t", "any", ListStorage())
    sub = topic.subscribe()
    topic.publish(quotes(2), owned=True)
    assert [r.seq for r in sub.take(timeout=1).records] == [1, 2]  # type: ignore[union-attr]


def test_every_subscriber_gets_the_same_batch_object() -> None:
    topic = Topic("t", "any", ListStorage())
    one, two = topic.subscribe(), topic.subscribe()
    topic.publish(quotes(3))
    d1, d2 = one.take(timeout=1), two.take(timeout=1)
    assert d1 is not None and d2 is not None
    assert d1.batches[0] is d2.batches[0]
    assert d1.batches[0].records_json() is d2.batches[0].records_json()


def test_key_filter_delivers_only_that_key() -> None:
    topic = Topic("t", "any", ListStorage())
    sub = topic.subscribe(key="A")
    topic.publish(quotes(6))
    delivery = sub.take(timeout=1)
    assert delivery is not None and {r.key for r in delivery.records} == {"A"} and len(delivery.records) == 3


def test_start_seq_joins_a_query_with_the_live_tail_without_gap_or_duplicate() -> None:
    topic = Topic("t", "any", ListStorage())
    topic.publish(quotes(5))
    sub = topic.subscribe()
    replay = topic.query(TopicQuery(since_seq=0, limit=100)).records
    topic.publish(quotes(3, start=5))
    live = sub.take(timeout=1)
    assert live is not None
    assert sub.start_seq == 5
    assert [r.seq for r in replay] + [r.seq for r in live.records] == list(range(1, 9))


def test_slow_drop_subscriber_does_not_slow_the_publisher_or_others() -> None:
    metrics = Metrics()
    topic = Topic("t", "any", ListStorage(), metrics=metrics)
    slow = topic.subscribe(capacity=4, policy=OverflowPolicy.DROP, kind="ws")
    fast = topic.subscribe(capacity=100)
    topic.publish(quotes(10))
    assert slow.dropped == 6 and fast.dropped == 0
    assert len(fast.take(timeout=1).records) == 10  # type: ignore[union-attr]
    assert metrics.value("gauss_subscriber_dropped_records_total", topic="t", kind="ws") == 6
    assert metrics.value("gauss_topic_records_published_total", topic="t") == 10


def test_back_pressure_subscriber_holds_the_publisher_and_loses_nothing() -> None:
    topic = Topic("t", "any", ListStorage())
    sub = topic.subscribe(capacity=5, policy=OverflowPolicy.BACK_PRESSURE, kind="processor")
    received: list[int] = []

    def consume() -> None:
        while len(received) < 50:
            delivery = sub.take(timeout=5)
            assert delivery is not None
            received.extend(r.seq for r in delivery.records)
            gevent.sleep(0.001)

    consumer = gevent.spawn(consume)
    for i in range(10):
        topic.publish(quotes(5, start=i * 5))
    consumer.join(timeout=10)
    assert received == list(range(1, 51))
    assert sub.dropped == 0


def test_concurrent_publishers_keep_seq_order_for_every_subscriber() -> None:
    topic = Topic("t", "any", ListStorage())
    sub = topic.subscribe(capacity=3, policy=OverflowPolicy.BACK_PRESSURE)
    received: list[int] = []

    def consume() -> None:
        while len(received) < 60:
            delivery = sub.take(timeout=5)
            assert delivery is not None
            received.extend(r.seq for r in delivery.records)

    consumer = gevent.spawn(consume)
    publishers = [gevent.spawn(lambda: [topic.publish(quotes(2)) for _ in range(10)]) for _ in range(3)]
    gevent.joinall(publishers, timeout=10)
    consumer.join(timeout=10)
    assert received == list(range(1, 61))


def test_closed_subscription_is_detached() -> None:
    topic = Topic("t", "any", ListStorage())
    sub = topic.subscribe()
    sub.close()
    assert topic.subscriptions == ()
    topic.publish(quotes(1))
    assert sub.take(timeout=0) is None


def test_failing_storage_shows_nothing_gives_its_seqs_back_and_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    topic = Topic("t", "any", ListStorage(fail=True), metrics=metrics)
    sub = topic.subscribe()
    assert topic.publish(quotes(2)) is None
    assert topic.publish(quotes(2)) is None
    assert sub.take(timeout=0.1) is None  # SPEC 6: nothing is shown that was not stored
    assert topic.last_seq == 0 and topic.write_errors == 2
    assert metrics.value("gauss_storage_write_errors_total", topic="t") == 2
    assert sum("failed to store" in r.message for r in caplog.records) == 1  # rate-limited


def test_batches_a_storage_refuses_cost_only_themselves() -> None:
    storage = ListStorage(fail_appends=[2, 4, 5])
    registry = TopicRegistry()
    topic = registry.create("t", storage=storage)
    seen: list[TopicRecord] = []
    runner = ProcessorRunner(Recording(seen), topic, registry, capacity=100)
    runner.start()
    for i in range(7):
        topic.publish(quotes(3, start=3 * i))
    wait_until(lambda: len(seen) == 12, timeout=5, what="the stored batches processed")
    runner.stop()
    assert [r.seq for r in storage.records] == list(range(1, 13))
    assert [r.data["i"] for r in storage.records] == [*range(0, 3), *range(6, 9), *range(15, 21)]
    assert [(r.seq, r.data) for r in seen] == [(r.seq, r.data) for r in storage.records]
    assert topic.last_seq == 12 and topic.write_errors == 3


def test_journal_takes_every_batch_first_and_rebuilds_a_volatile_storage() -> None:
    journal = ListStorage(durable=True)
    first = Topic("journaled.t", "any", ListStorage(), journal=journal)
    first.publish(quotes(3))
    first.publish(quotes(2, start=3))
    assert [r.seq for r in journal.records] == [1, 2, 3, 4, 5]
    again = Topic("journaled.t", "any", ListStorage(), journal=ListStorage(durable=True))
    assert (again.epoch, again.last_seq) == (first.epoch, 5)
    assert [(r.seq, r.data) for r in again.query(limit=10).records] == [(r.seq, r.data) for r in journal.records]
    assert [r.seq for r in again.history()] == [1, 2, 3, 4, 5]
    again.publish(quotes(1, start=5))
    assert again.last_seq == 6


def test_a_batch_the_journal_refuses_is_not_stored_nor_shown() -> None:
    storage = ListStorage()
    topic = Topic("journal.fails", "any", storage, journal=ListStorage(fail_appends=[1]))
    sub = topic.subscribe()
    assert topic.publish(quotes(2)) is None
    topic.publish(quotes(2, start=2))
    assert [(r.seq, r.data["i"]) for r in storage.records] == [(1, 2), (2, 3)]
    delivery = sub.take(timeout=1)
    assert delivery is not None and [r.seq for r in delivery.records] == [1, 2]


def test_durable_storage_keeps_seq_and_epoch_across_restarts() -> None:
    first = Topic("durable.t", "any", ListStorage(durable=True))
    first.publish(quotes(3))
    epoch = first.epoch
    second = Topic("durable.t", "any", ListStorage(durable=True))
    assert second.epoch == epoch and second.last_seq == 3
    second.publish(quotes(1))
    assert second.last_seq == 4


def test_volatile_storage_gets_a_new_epoch_each_start() -> None:
    assert Topic("v", "any", ListStorage()).epoch != Topic("v", "any", ListStorage()).epoch


STORAGE = {"type": "support.plugins:ListStorage"}


def spec(name: str, data_format: DataFormat, storage: dict[str, str], **extra: Any) -> TopicSpec:
    return convert({"name": name, "format": data_format.value, "storage": storage, **extra}, TopicSpec)


def registry(*specs: TopicSpec) -> TopicRegistry:
    reg = TopicRegistry(specs)
    reg.open()
    return reg


def test_registry_creates_exact_topics_at_open_and_refuses_unknown_names() -> None:
    reg = registry(spec("quotes.raw", DataFormat.QUOTE, STORAGE))
    assert [t.name for t in reg.topics()] == ["quotes.raw"]
    assert reg.get("quotes.raw").format is DataFormat.QUOTE
    with pytest.raises(UnknownTopic):
        reg.get("nope")
    with pytest.raises(UnknownTopic):
        reg.publish("nope", quotes(1))


def test_template_topics_are_made_on_first_publish_with_substituted_storage() -> None:
    storage = {"type": "support.plugins:ListStorage", "dir": "data/{suffix}"}
    reg = registry(spec("ohlc.*", DataFormat.CANDLE, storage, create=["ohlc.1m"]))
    assert [t.name for t in reg.topics()] == ["ohlc.1m"]
    reg.publish("ohlc.5m", quotes(2))
    assert [t.name for t in reg.topics()] == ["ohlc.1m", "ohlc.5m"]
    assert reg.get("ohlc.5m").count() == 2
    assert reg.get("ohlc.5m").format is DataFormat.CANDLE
    with pytest.raises(UnknownTopic):
        reg.get("ohlc.15m")  # get never creates


def test_longest_template_wins() -> None:
    reg = registry(spec("*", DataFormat.ANY, STORAGE), spec("ohlc.*", DataFormat.CANDLE, STORAGE))
    reg.publish("ohlc.1s", quotes(1))
    reg.publish("misc", quotes(1))
    assert reg.get("ohlc.1s").format is DataFormat.CANDLE
    assert reg.get("misc").format is DataFormat.ANY


def test_registry_create_from_python_and_close_flushes_and_closes() -> None:
    reg = TopicRegistry()
    storage = ListStorage()
    topic = reg.create("mine", format="quote", storage=storage)
    assert reg.get("mine") is topic and topic.storage_type == "list"
    with pytest.raises(ValueError):
        reg.create("mine", storage=ListStorage())
    sub = topic.subscribe()
    reg.close()
    assert storage.flushed == 1 and storage.closed
    assert sub.sealed


def quote_records(n: int, start: int = 0) -> list[TopicRecord]:
    return [
        TopicRecord(1_000 + i, "EURUSD", {"symbol": "EURUSD", "bid": 1.0, "ask": 1.1, "bid_size": 1.0, "ask_size": 1.0, "ts_ms": 1_000 + i})
        for i in range(start, start + n)
    ]


def test_what_a_failing_ring_kept_stays_numbered_and_shown_and_the_rest_gives_its_seqs_back() -> None:
    metrics = Metrics()
    registry = TopicRegistry(metrics=metrics)
    topic = registry.create("quotes", format="quote", storage="memory")
    sub = topic.subscribe()
    batch = quote_records(4)
    batch[2] = TopicRecord(1_002, "EURUSD", {"symbol": "EURUSD", "ts_ms": 1_002})  # no prices: the ring refuses it
    published = topic.publish(batch)
    assert published is not None and [r.seq for r in published.records] == [1, 2]  # the two the ring did store
    topic.publish(quote_records(2, start=10))
    assert [r.seq for r in topic.query(limit=10).records] == [1, 2, 3, 4]
    delivered = [r.seq for d in iter(lambda: sub.take(timeout=0.1), None) for r in d.records]
    assert delivered == [1, 2, 3, 4]
    assert metrics.value("gauss_storage_failed_records_total", topic="quotes") == 2
    assert metrics.value("gauss_storage_write_errors_total", topic="quotes") == 1
    assert metrics.value("gauss_topic_records_published_total", topic="quotes") == 4


class Unanswerable(ListStorage):
    """A storage whose writes fail and which cannot say what it holds either."""

    def bounds(self) -> tuple[int, int]:
        raise OSError("no answer")


def test_a_storage_that_cannot_say_what_it_kept_spends_the_seqs_and_shows_nothing() -> None:
    storage = Unanswerable(fail_appends=[1])
    topic = Topic("t", "any", storage)
    sub = topic.subscribe()
    assert topic.publish(quotes(3)) is None  # may be stored, cannot be proven: never shown, seqs never reused
    published = topic.publish(quotes(2, start=3))
    assert published is not None and [r.seq for r in published.records] == [4, 5]
    delivery = sub.take(timeout=1)
    assert delivery is not None and [r.seq for r in delivery.records] == [4, 5]


def test_a_quote_batch_numbered_elsewhere_is_renumbered_by_the_topic_it_is_published_to() -> None:
    source = Topic("quotes.a", DataFormat.QUOTE, MemoryStorage())
    batch = QuoteBatch(["A", "B", "A"], [1, 2, 3], [1.0, 2.0, 3.0], [1.5, 2.5, 3.5], [0.0] * 3, [0.0] * 3)
    source.publish(batch, owned=True)
    answer = source.query(TopicQuery(key="A")).records  # a query result carries its own seqs: 1, 3
    assert [r.seq for r in answer] == [1, 3]
    copy = Topic("quotes.b", DataFormat.QUOTE, MemoryStorage())
    for owned in (False, True):
        published = copy.publish(answer, owned=owned)
        assert published is not None and [r.seq for r in published.records] == ([1, 2] if not owned else [3, 4])
    assert [r.seq for r in answer] == [1, 3]  # the caller's batch is left as it was
    assert [(r.key, r.seq) for r in copy.query(TopicQuery()).records] == [("A", 1), ("A", 3), ("A", 2), ("A", 4)]


def test_a_processors_large_publish_goes_in_slices_and_lets_the_loop_run() -> None:
    """The candles of thousands of evicted symbols in one publish held the loop for seconds (issue 11: 100,000 symbols)."""
    from gauss.topics import PUBLISH_SLICE_RECORDS

    class SizeRecording(ListStorage):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: list[int] = []

        def append(self, records: Any) -> None:
            self.sizes.append(len(records))
            super().append(records)

    storage = SizeRecording()
    registry = TopicRegistry()
    registry.create("candles", storage=storage)
    ticks: list[int] = []

    def other_greenlet() -> None:
        while True:
            ticks.append(len(storage.records))
            gevent.sleep(0)

    other = gevent.spawn(other_greenlet)
    gevent.sleep(0)
    records = [TopicRecord(1_000 + i, f"K{i}", {"i": i}) for i in range(2 * PUBLISH_SLICE_RECORDS + 7)]
    registry.publish("candles", records)
    other.kill()
    assert storage.sizes == [PUBLISH_SLICE_RECORDS, PUBLISH_SLICE_RECORDS, 7]
    assert [r.seq for r in storage.records] == list(range(1, len(records) + 1))
    assert {PUBLISH_SLICE_RECORDS, 2 * PUBLISH_SLICE_RECORDS} <= set(ticks), "the other greenlet ran between the slices"
