"""Prometheus metrics of one hub, on its own ``CollectorRegistry``.

Each :class:`gauss.hub.Hub` owns a :class:`Metrics`, so two hubs in one
process (tests, say) never mix their figures. Subscriber series are labelled
by topic and subscriber *kind* (processor, sink, ws, client, ...), never per
client, so short-lived clients leave no series behind. Queue depths are read
at scrape time from the live subscriptions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, overload

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gauss.protocols import HealthReportingStorage, SkipCountingProcessor

if TYPE_CHECKING:
    from gauss.topics import TopicRegistry

__all__ = ["Metrics", "MetricCount", "current"]


def current(child: Counter | Gauge) -> float:
    """A labelled counter's or gauge's value now, read from the child itself.

    The counters a component keeps live only here, in its hub's
    :class:`Metrics` (never a second plain attribute beside them); the
    attributes tests and the status line read (``Topic.published``,
    ``Source.frames``, ...) are properties reading them through this.
    :meth:`Metrics.value` would collect the whole registry instead.
    """
    return float(child._value.get())


class MetricCount:
    """A read-only integer attribute: the value of the counter (or gauge) child held in attribute ``attr``.

    ``frames = MetricCount("_m_frames", "Frames received")`` on a class makes
    ``obj.frames`` read ``current(obj._m_frames)``: the count lives once, in Metrics.
    """

    def __init__(self, attr: str, doc: str = "") -> None:
        self.attr = attr
        self.__doc__ = doc

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> MetricCount: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> int: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> MetricCount | int:
        if obj is None:
            return self
        return int(current(getattr(obj, self.attr)))


class _SubscriberCollector(Collector):
    """Queue depth and subscriber count per (topic, kind), computed at scrape time."""

    def __init__(self, topics: Callable[[], TopicRegistry | None]) -> None:
        self._topics = topics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "gauss_subscriber_queue_depth", "Records waiting in subscriber queues", labels=["topic", "kind"]
        )
        count = GaugeMetricFamily("gauss_subscribers", "Open subscriptions", labels=["topic", "kind"])
        registry = self._topics()
        if registry is not None:
            for topic in registry.topics():
                totals: dict[str, list[int]] = {}
                for sub in topic.subscriptions:
                    entry = totals.setdefault(sub.kind, [0, 0])
                    entry[0] += sub.depth
                    entry[1] += 1
                for kind, (queued, subs) in sorted(totals.items()):
                    depth.add_metric([topic.name, kind], queued)
                    count.add_metric([topic.name, kind], subs)
        yield depth
        yield count


class _StorageHealthCollector(Collector):
    """Health figures of storages that report them, read at scrape time.

    A :class:`~gauss.protocols.HealthReportingStorage` (file, raw-file, ClickHouse
    storages: healthy, buffered_records, dead_letter_records, ...), a topic's own or
    its journal, gets one gauge per figure, ``gauss_storage_<figure>{topic, storage}``.
    """

    def __init__(self, topics: Callable[[], TopicRegistry | None]) -> None:
        self._topics = topics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        registry = self._topics()
        for topic in registry.topics() if registry is not None else []:
            # A topic's journal (the tick log) reports too, labelled by its own type.
            held = [(topic.storage, topic.storage_type)]
            if topic.journal is not None:
                held.append((topic.journal, topic.journal.name))
            for storage, label in held:
                if not isinstance(storage, HealthReportingStorage):
                    continue
                for figure, value in storage.health().items():
                    family = families.get(figure)
                    if family is None:
                        family = families[figure] = GaugeMetricFamily(
                            f"gauss_storage_{figure}", f"Storage health: {figure.replace('_', ' ')}", labels=["topic", "storage"]
                        )
                    family.add_metric([topic.name, label], float(value))
        yield from families.values()


class _ProcessorCollector(Collector):
    """Records each processor skipped (``skipped_records``, e.g. quotes its kernel refused), read at scrape time."""

    def __init__(self, runners: Callable[[], Sequence[Any]]) -> None:
        self._runners = runners

    def collect(self) -> Iterator[CounterMetricFamily]:
        skipped = CounterMetricFamily(
            "gauss_processor_skipped_records", "Input records a processor could not use (skipped, logged)", labels=["processor"]
        )
        for runner in self._runners():
            if isinstance(runner.processor, SkipCountingProcessor):
                skipped.add_metric([runner.name], float(runner.processor.skipped_records))
        yield skipped


class Metrics:
    """The metrics of one hub. The API exposes :meth:`exposition` at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._published = Counter("gauss_topic_records_published", "Records published to a topic", ["topic"], registry=r)
        self._stored = Counter("gauss_topic_records_stored", "Records a topic's storage accepted", ["topic"], registry=r)
        self._storage_errors = Counter(
            "gauss_storage_write_errors", "Failed storage writes (batches)", ["topic"], registry=r
        )
        self._storage_lost = Counter(
            "gauss_storage_failed_records",
            "Records a topic dropped because its storage failed to store their batch (never numbered nor shown)",
            ["topic"],
            registry=r,
        )
        self._dropped = Counter(
            "gauss_subscriber_dropped_records", "Records shed by subscriber queues", ["topic", "kind"], registry=r
        )
        self._delivered = Counter(
            "gauss_topic_records_delivered",
            "Records a topic handed to its subscribers (processors, sinks, WebSocket clients, callbacks)",
            ["topic", "kind"],
            registry=r,
        )
        self._connections = Counter("gauss_source_connections", "Connections accepted or made", ["source"], registry=r)
        self._open = Gauge("gauss_source_open_connections", "Connections open now", ["source"], registry=r)
        self._frames = Counter("gauss_source_frames", "Frames received", ["source"], registry=r)
        self._bytes = Counter("gauss_source_bytes", "Bytes received", ["source"], registry=r)
        self._records = Counter("gauss_source_records", "Records accepted by a source", ["source"], registry=r)
        self._decode_errors = Counter(
            "gauss_source_decode_errors",
            "Payloads dropped: bad frame or payload, rejected quote, oversize frame",
            ["source", "reason"],
            registry=r,
        )
        self._source_dropped = Counter(
            "gauss_source_queue_dropped_records", "Records shed by a source's queue", ["source"], registry=r
        )
        self._lagging = Gauge(
            "gauss_processor_lagging", "1 while a processor holds up its topic (back-pressure alarm)", ["processor"], registry=r
        )
        self._processor_errors = Counter(
            "gauss_processor_errors", "Batches a processor failed on", ["processor"], registry=r
        )
        self._sink_clients = Gauge("gauss_sink_clients", "Connected sink clients", ["sink"], registry=r)
        self._sink_sent = Counter("gauss_sink_records_sent", "Records written to sink connections", ["sink"], registry=r)
        self._source_closed = Counter(
            "gauss_source_closed_connections",
            "Connections a source closed itself: max_connections, per_peer, idle_timeout, descriptors, inflate_budget",
            ["source", "reason"],
            registry=r,
        )
        self._sink_disconnects = Counter(
            "gauss_sink_disconnects",
            "Sink clients disconnected by the server: write_timeout, slow, max_connections, per_peer, idle_timeout, descriptors",
            ["sink", "reason"],
            registry=r,
        )
        self._topics: TopicRegistry | None = None
        self._labels: dict[str, set[str]] = {}
        r.register(_SubscriberCollector(lambda: self._topics))
        r.register(_StorageHealthCollector(lambda: self._topics))

    def watch(self, topics: TopicRegistry) -> None:
        """Report queue depths of ``topics``' subscribers."""
        self._topics = topics

    def watch_processors(self, runners: Callable[[], Sequence[Any]]) -> None:
        """Report the records the processors of ``runners()`` (``ProcessorRunner``s) skipped."""
        self.registry.register(_ProcessorCollector(runners))

    def claim_label(self, kind: str, preferred: str) -> str:
        """The series label of a new ``kind`` ("source", "sink"): ``preferred``, or ``preferred#2``, ``#3``, ... once taken.

        A source or sink is labelled by its ``name``, else its topic; two of one
        topic without names (the default config's four sinks of quotes.raw) must
        not count on one series.
        """
        taken = self._labels.setdefault(kind, set())
        label, n = preferred, 1
        while label in taken:
            n += 1
            label = f"{preferred}#{n}"
        taken.add(label)
        return label

    def topic_published(self, topic: str) -> Counter:
        return self._published.labels(topic)

    def delivered(self, topic: str, kind: str) -> Counter:
        return self._delivered.labels(topic, kind)

    def topic_stored(self, topic: str) -> Counter:
        return self._stored.labels(topic)

    def storage_write_errors(self, topic: str) -> Counter:
        return self._storage_errors.labels(topic)

    def storage_failed_records(self, topic: str) -> Counter:
        return self._storage_lost.labels(topic)

    def dropped(self, topic: str, kind: str) -> Counter:
        return self._dropped.labels(topic, kind)

    def source_connections(self, source: str) -> Counter:
        return self._connections.labels(source)

    def source_open(self, source: str) -> Gauge:
        return self._open.labels(source)

    def source_frames(self, source: str) -> Counter:
        return self._frames.labels(source)

    def source_bytes(self, source: str) -> Counter:
        return self._bytes.labels(source)

    def source_records(self, source: str) -> Counter:
        return self._records.labels(source)

    def decode_errors(self, source: str, reason: str) -> Counter:
        return self._decode_errors.labels(source, reason)

    def source_dropped(self, source: str) -> Counter:
        return self._source_dropped.labels(source)

    def processor_lagging(self, processor: str) -> Gauge:
        return self._lagging.labels(processor)

    def processor_errors(self, processor: str) -> Counter:
        return self._processor_errors.labels(processor)

    def sink_clients(self, sink: str) -> Gauge:
        return self._sink_clients.labels(sink)

    def sink_sent(self, sink: str) -> Counter:
        return self._sink_sent.labels(sink)

    def source_closed(self, source: str, reason: str) -> Counter:
        return self._source_closed.labels(source, reason)

    def sink_disconnects(self, sink: str, reason: str) -> Counter:
        return self._sink_disconnects.labels(sink, reason)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 when absent); for tests and the status line."""
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
