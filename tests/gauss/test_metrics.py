"""Counters held once, in Metrics: the attributes tests and the status line read are the Prometheus samples."""

from __future__ import annotations

from pathlib import Path

import gevent
from support.plugins import ListStorage

from gauss.core import TopicRecord
from gauss.metrics import MetricCount, Metrics
from gauss.runners import ProcessorRunner
from gauss.topics import Topic


def records(n: int) -> list[TopicRecord]:
    return [TopicRecord(i + 1, "K", {"i": i}) for i in range(n)]


def test_a_topics_counts_are_its_metrics_samples() -> None:
    metrics = Metrics()
    topic = Topic("t", "any", ListStorage(), metrics=metrics)
    topic.publish(records(3))
    topic.publish(records(2))
    assert topic.published == 5 == metrics.value("gauss_topic_records_published_total", topic="t")
    # The only place the count is kept: a change to the sample is what the attribute reads.
    metrics.topic_published("t").inc(10)
    assert topic.published == 15
    failing = Topic("f", "any", ListStorage(fail=True), metrics=metrics)
    failing.publish(records(1))
    assert failing.write_errors == 1 == metrics.value("gauss_storage_write_errors_total", topic="f")


def test_without_a_hub_each_part_gets_a_metrics_of_its_own() -> None:
    a = Topic("t", "any", ListStorage())
    b = Topic("t", "any", ListStorage())
    a.publish(records(4))
    assert (a.published, b.published) == (4, 0)


def test_a_runners_errors_and_lag_are_its_metrics_samples() -> None:
    class Failing:
        name = "failing"
        flush_interval = None

        def start(self, context: object) -> None:
            pass

        def process(self, topic: str, batch: object, context: object) -> None:
            raise ValueError("boom")

        def flush(self, context: object) -> None:
            pass

        def stop(self, context: object) -> None:
            pass

    metrics = Metrics()
    topic = Topic("t", "any", ListStorage(), metrics=metrics)
    runner = ProcessorRunner(Failing(), topic, context=None, capacity=10, metrics=metrics)  # type: ignore[arg-type]
    runner.start()
    for n in (1, 2):  # one failing batch after the other (batches waiting together are one call)
        topic.publish(records(1))
        for _ in range(500):
            if runner.errors == n:
                break
            gevent.sleep(0.01)
    assert runner.errors == 2 == metrics.value("gauss_processor_errors_total", processor=runner.name)
    assert runner.lagging is False
    metrics.processor_lagging(runner.name).set(1)
    assert runner.lagging is True
    runner.stop(timeout=2)


def test_metric_count_on_the_class_is_the_descriptor() -> None:
    assert isinstance(Topic.published, MetricCount) and "gauss_topic_records_published" in (Topic.published.__doc__ or "")


def test_sources_and_sinks_of_one_topic_count_on_series_of_their_own() -> None:
    from gauss.hub import Hub

    def tcp(kind: str) -> dict[str, object]:
        return {"type": kind, "bind": "127.0.0.1", "port": 0}

    config = {
        "hub": {"status_interval": 0},
        "topics": [{"name": "t", "format": "any"}],
        "sources": [{"topic": "t", "transport": tcp("tcp-server")} for _ in range(2)]
        + [{"topic": "t", "transport": tcp("tcp-server"), "name": "named"}],
        "sinks": [{"topic": "t", "transport": tcp("tcp-server")} for _ in range(2)],
    }
    with Hub.from_config(config) as hub:
        assert [s.label for s in hub.sources] == ["t", "t#2", "named"]
        text = hub.metrics.exposition().decode()
        for label in ("t", "t#2", "named"):
            assert f'gauss_source_frames_total{{source="{label}"}} 0.0' in text
        assert 'gauss_sink_records_sent_total{sink="t"} 0.0' in text
        assert 'gauss_sink_records_sent_total{sink="t#2"} 0.0' in text


def test_records_a_topic_hands_its_subscribers_are_counted_per_kind() -> None:
    metrics = Metrics()
    topic = Topic("t", "any", ListStorage(), metrics=metrics)
    client = topic.subscribe(kind="ws")
    sink = topic.subscribe(kind="sink")
    topic.publish(records(3))
    topic.publish(records(2))
    delivery = client.take(timeout=1)
    assert delivery is not None and len(delivery.records) == 5
    assert metrics.value("gauss_topic_records_delivered_total", topic="t", kind="ws") == 5
    assert sink.depth == 5 and metrics.value("gauss_topic_records_delivered_total", topic="t", kind="sink") == 0


def test_a_topics_journal_reports_its_health_beside_its_storage(tmp_path: Path) -> None:
    """The tick log's damage counts reach /metrics (they were reported for standalone raw-file topics only)."""
    from gauss_plugins.storage.memory import MemoryStorage
    from gauss_plugins.storage.raw_file import RawFileStorage, segments

    quote = {"symbol": "EURUSD", "bid": 1.0, "ask": 1.5, "bid_size": 1.0, "ask_size": 1.0, "ts_ms": 1_000}
    first = Topic("quotes.raw", "quote", MemoryStorage(), journal=RawFileStorage(tmp_path))
    first.publish([TopicRecord(1_000, "EURUSD", quote)])
    first.close()
    (segment,) = segments(tmp_path)
    segment.write_bytes(segment.read_bytes() + b"\xff" * 4)  # a damaged tail: moved aside at the next open, counted
    metrics = Metrics()
    again = Topic("quotes.raw", "quote", MemoryStorage(), journal=RawFileStorage(tmp_path), metrics=metrics)

    class Topics:
        def topics(self) -> list[Topic]:
            return [again]

    metrics.watch(Topics())  # type: ignore[arg-type]
    assert metrics.value("gauss_storage_unreadable_records", topic="quotes.raw", storage="raw-file") == 1
    assert metrics.value("gauss_storage_dead_letter_records", topic="quotes.raw", storage="raw-file") == 0
