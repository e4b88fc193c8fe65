"""``gauss.runners.ProcessorRunner`` on a real topic: batches, errors, flush interval, stop, lag alarm."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import gevent
import pytest
from support import wait_until
from support.plugins import ListStorage

from gauss.core import TopicRecord
from gauss.metrics import Metrics
from gauss.records import OverflowPolicy
from gauss.runners import ProcessorRunner
from gauss.topics import Topic


class Context:
    """A publish context that keeps what the processor publishes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, list[TopicRecord]]] = []

    def publish(self, topic: str, records: Sequence[TopicRecord]) -> None:
        self.published.append((topic, list(records)))


class Scripted:
    """A processor that records its calls; ``fail`` lists the (1-based) process calls that raise."""

    name = "scripted"

    def __init__(self, flush_interval: float | None = None, fail: Sequence[int] = (), slow: float = 0.0) -> None:
        self.flush_interval = flush_interval
        self.fail = set(fail)
        self.slow = slow
        self.calls: list[str] = []
        self.batches: list[list[int]] = []

    def start(self, context: Any) -> None:
        self.calls.append("start")

    def process(self, topic: str, records: Sequence[TopicRecord], context: Any) -> None:
        self.batches.append([r.data["i"] for r in records])
        self.calls.append("process")
        if self.slow:
            gevent.sleep(self.slow)
        if len(self.batches) in self.fail:
            raise RuntimeError(f"batch {len(self.batches)} is bad")
        context.publish("out", records)

    def flush(self, context: Any) -> None:
        self.calls.append("flush")

    def stop(self, context: Any) -> None:
        self.calls.append("stop")


def records(n: int, start: int = 0) -> list[TopicRecord]:
    return [TopicRecord(1_000 + i, "K", {"i": i}) for i in range(start, start + n)]


def runner_for(
    processor: Scripted, capacity: int = 1000, metrics: Metrics | None = None
) -> tuple[ProcessorRunner, Topic, Context]:
    topic = Topic("in", "any", ListStorage())
    context = Context()
    runner = ProcessorRunner(
        processor, topic, context, capacity=capacity, policy=OverflowPolicy.BACK_PRESSURE, metrics=metrics
    )
    runner.start()
    return runner, topic, context


def test_a_failing_batch_is_counted_and_the_next_ones_are_processed(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    processor = Scripted(fail=[2])
    runner, topic, context = runner_for(processor, metrics=metrics)
    with caplog.at_level(logging.ERROR, logger="gauss.runners"):
        for i in range(3):
            topic.publish(records(2, start=2 * i))
            wait_until(lambda n=i: len(processor.batches) == n + 1, what=f"batch {i + 1}")
    runner.stop()
    assert runner.errors == 1
    assert metrics.value("gauss_processor_errors_total", processor=runner.name) == 1
    assert [[r.data["i"] for r in batch] for _, batch in context.published] == [[0, 1], [4, 5]]
    assert any("batch 2 is bad" in r.getMessage() for r in caplog.records)


def test_flush_runs_every_flush_interval_without_records() -> None:
    processor = Scripted(flush_interval=0.05)
    runner, _, _ = runner_for(processor)
    gevent.sleep(0.5)
    flushes = processor.calls.count("flush")
    runner.stop()
    assert 3 <= flushes <= 11, flushes
    assert "process" not in processor.calls


def test_no_flush_interval_means_flush_only_at_stop() -> None:
    processor = Scripted(flush_interval=None)
    runner, topic, _ = runner_for(processor)
    topic.publish(records(3))
    wait_until(lambda: processor.batches == [[0, 1, 2]])
    gevent.sleep(0.2)
    assert processor.calls == ["start", "process"]
    runner.stop()
    assert processor.calls == ["start", "process", "flush", "stop"]


def test_stop_drains_the_queue_then_flushes_then_stops() -> None:
    processor = Scripted(slow=0.01)
    runner, topic, context = runner_for(processor)
    for i in range(20):
        topic.publish(records(5, start=5 * i))
    assert not runner.idle
    runner.stop(timeout=30)
    assert sorted(i for batch in processor.batches for i in batch) == list(range(100))
    assert sum(len(batch) for _, batch in context.published) == 100
    assert processor.calls[-2:] == ["flush", "stop"] and processor.calls.count("stop") == 1
    assert runner.subscription is not None and runner.subscription.closed


def test_everything_waiting_is_one_batch() -> None:
    processor = Scripted(slow=0.2)
    runner, topic, _ = runner_for(processor)
    topic.publish(records(1))
    wait_until(lambda: len(processor.batches) == 1)
    for i in range(1, 6):
        topic.publish(records(1, start=i))  # all queue up while the first batch is processed
    wait_until(lambda: len(processor.batches) == 2)
    runner.stop()
    assert processor.batches == [[0], [1, 2, 3, 4, 5]]


def test_a_full_queue_raises_the_lag_alarm_and_clears_it(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    processor = Scripted(slow=1.5)
    runner, topic, _ = runner_for(processor, capacity=4, metrics=metrics)
    topic.publish(records(1))
    wait_until(lambda: len(processor.batches) == 1)
    with caplog.at_level(logging.WARNING, logger="gauss.runners"):
        topic.publish(records(4, start=1))  # fills the queue
        publisher = gevent.spawn(topic.publish, records(2, start=5))  # waits: back_pressure
        wait_until(lambda: runner.lagging, timeout=10, what="the lag alarm")
    assert metrics.value("gauss_processor_lagging", processor=runner.name) == 1
    assert any("is behind" in r.getMessage() for r in caplog.records)
    publisher.join(10)
    wait_until(lambda: not runner.lagging, timeout=15, what="the alarm to clear")
    assert metrics.value("gauss_processor_lagging", processor=runner.name) == 0
    runner.stop()
    assert sorted(i for batch in processor.batches for i in batch) == list(range(7))
