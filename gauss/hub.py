"""The hub: a whole Gauss pipeline (topics, sources, processors, sinks, API) in one object.

``gauss-serve`` is a thin wrapper around it, and a Python program can run the
same pipeline inside its own gevent program::

    hub = Hub.from_config("config.toml")      # or a dict, or Hub() and build it up
    hub.start()
    hub.publish("quotes.raw", [TopicRecord(ts, "EURUSD", quote)])
    for record in hub.subscribe("ohlc.1m"): ...
    hub.stop()

Stopping is orderly: sources stop accepting and publish what they queued;
processors drain their queues and flush; sinks send what their clients'
queues hold; storages flush and close.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import gevent
import gevent.event

from gauss.config import GaussConfig, ProcessorSpec, SinkSpec, SourceSpec, load_config
from gauss.core import TopicRecord
from gauss.errors import ConfigError
from gauss.metrics import Metrics
from gauss.protocols import TopicProcessor, TopicSink, require
from gauss.records import OverflowPolicy, QueryResult, TopicQuery
from gauss.runners import ProcessorRunner
from gauss.source import Source
from gauss.subscription import DEFAULT_CAPACITY, Subscription
from gauss.topics import Topic, TopicRegistry

__all__ = ["Hub"]

log = logging.getLogger(__name__)


class Hub:
    """Topics, sources, processors, sinks and the API settings of one configuration."""

    def __init__(self, config: GaussConfig | None = None) -> None:
        self.config = config if config is not None else GaussConfig()
        self.api = self.config.api
        self.metrics = Metrics()
        self.registry = TopicRegistry(self.config.topics, metrics=self.metrics)
        self.metrics.watch(self.registry)
        self.sources: list[Source] = []
        self.processors: list[ProcessorRunner] = []
        self.metrics.watch_processors(lambda: self.processors)
        self.sinks: list[TopicSink] = []
        """Sinks as started (each keeps one bounded queue per client, see :mod:`gauss.sink`)."""
        self._callbacks: list[gevent.Greenlet] = []
        self._status: gevent.Greenlet | None = None
        self._started = False
        self._stopping = False
        self._stop_requested = gevent.event.Event()
        self._stopped = gevent.event.Event()
        self._api_server: Any = None

    @classmethod
    def from_config(cls, source: str | Path | Mapping[str, Any] | GaussConfig, *, base_dir: str | Path | None = None) -> Hub:
        """A hub for a config file, a dict (relative paths against ``base_dir``) or a :class:`GaussConfig`."""
        config = source if isinstance(source, GaussConfig) else load_config(source, base_dir=base_dir)
        return cls(config)

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Open topics, start processors and sinks, then sources, then the API.

        Raises OSError when a listener cannot bind; what started is stopped again.
        """
        if self._started:
            raise RuntimeError("hub already started")
        self._started = True
        try:
            self.registry.open()
            for spec in self.config.processors:
                self.add_processor(spec.build(), spec.topic, queue_size=spec.queue_size, policy=spec.policy, _spec=spec)
            # What a plugin refuses only once built (a topic's storage, its role) is a ConfigError: name its table.
            for i, sink_spec in enumerate(self.config.sinks):
                try:
                    self._start_sink(sink_spec)
                except ConfigError as exc:
                    raise exc.at(f"sinks[{i}]") from None
            for i, source_spec in enumerate(self.config.sources):
                try:
                    self.add_source(source_spec)
                except ConfigError as exc:
                    raise exc.at(f"sources[{i}]") from None
            self._start_api()
        except BaseException:
            self.stop()
            raise
        interval = self.config.hub.status_interval
        if interval > 0:
            self._status = gevent.spawn(self._status_loop, interval)

    def add_processor(
        self,
        processor: TopicProcessor,
        topic: str,
        *,
        queue_size: int = DEFAULT_CAPACITY,
        policy: OverflowPolicy | str = OverflowPolicy.BACK_PRESSURE,
        _spec: ProcessorSpec | None = None,
    ) -> ProcessorRunner:
        """Run ``processor`` on the batches of ``topic`` (the topic must exist or match a template).

        Raises :class:`~gauss.errors.ConfigError` naming the processor when
        it does not implement :class:`~gauss.protocols.TopicProcessor`.
        """
        require(processor, TopicProcessor, kind="processor", name=type(processor).__name__)
        runner = ProcessorRunner(
            processor, self.registry.resolve(topic), self.registry,
            capacity=queue_size, policy=OverflowPolicy.parse(policy), metrics=self.metrics,
        )  # fmt: skip
        runner.start()
        self.processors.append(runner)
        log.info("processor %s reads topic %s", runner.name, topic)
        return runner

    def _start_sink(self, spec: SinkSpec) -> None:
        sink = spec.build()
        self.add_sink(sink, spec.topic, queue_size=spec.queue_size, policy=spec.policy, name=spec.name)

    def add_sink(
        self,
        sink: TopicSink,
        topic: str,
        *,
        queue_size: int = DEFAULT_CAPACITY,
        policy: OverflowPolicy | str = OverflowPolicy.DROP,
        name: str | None = None,
    ) -> TopicSink:
        """Send the records of ``topic`` out through ``sink`` (attached, then started); returns it.

        Raises :class:`~gauss.errors.ConfigError` naming the sink when it
        does not implement :class:`~gauss.protocols.TopicSink`.
        """
        require(sink, TopicSink, kind="sink", name=name or type(sink).__name__)
        target = self.registry.resolve(topic)
        sink.attach(target, capacity=queue_size, policy=OverflowPolicy.parse(policy), metrics=self.metrics,
                    label=self.metrics.claim_label("sink", name or topic))
        sink.start()
        self.sinks.append(sink)
        log.info("%s", sink.description)
        return sink

    def add_source(self, spec: SourceSpec) -> Source:
        """Start a source (binds or dials now)."""
        source = Source(spec, self.registry, self.metrics)
        source.start()
        self.sources.append(source)
        log.info("%s", source.description)
        return source

    def _start_api(self) -> None:
        """Start the HTTP REST + WebSocket API on ``self.api`` (see :mod:`gauss.http`)."""
        if self.api is None:
            return  # a library hub without an [api] table serves no API
        from gauss.http import ApiServer

        options = self.api.with_environ()
        server = ApiServer(self, options.bind, options.port, options)
        server.start()
        self._api_server = server

    def _stop_api(self, timeout: float) -> None:
        server, self._api_server = self._api_server, None
        if server is not None:
            server.stop(timeout=timeout)

    def request_stop(self) -> None:
        """Ask :meth:`serve_forever` to stop (safe from a signal handler)."""
        self._stop_requested.set()

    def serve_forever(self) -> None:
        """Start (if needed), run until :meth:`request_stop`, then stop."""
        if not self._started:
            self.start()
        self._stop_requested.wait()
        self.stop()

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, drain every queue, flush and close storages. Idempotent."""
        if self._stopping:
            self._stopped.wait(timeout)
            return
        self._stopping = True
        self._stop_requested.set()
        timeout = self.config.hub.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if self._status is not None:
            self._status.kill(block=False)
        try:
            self._stop_api(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - keep stopping the rest
            log.exception("stopping the API failed")
        for source in self.sources:
            source.stop(timeout=max(0.1, deadline - time.monotonic()))
        self._quiesce(deadline)
        for runner in self.processors:
            runner.stop(timeout=max(0.1, deadline - time.monotonic()))
        for sink in self.sinks:
            try:
                sink.stop(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001
                log.exception("stopping %s failed", sink.description)
        for greenlet in self._callbacks:
            greenlet.kill(block=False)
        self.registry.close()
        self._stopped.set()
        log.info("stopped")

    def _quiesce(self, deadline: float) -> None:
        """Let processors drain and flush until no processor publishes anything more."""
        for _ in range(10):
            before = sum(t.published for t in self.registry.topics())
            while not all(r.idle for r in self.processors) and time.monotonic() < deadline:
                gevent.sleep(0.005)
            for runner in self.processors:
                runner.flush()
            gevent.sleep(0)
            if sum(t.published for t in self.registry.topics()) == before or time.monotonic() >= deadline:
                return

    def _status_loop(self, interval: float) -> None:
        last: dict[str, int] = {}  # counts since start: topics open with published = 0
        last_churn: dict[str, int] = {}
        last_time = time.monotonic()
        while True:
            gevent.sleep(interval)
            now = time.monotonic()
            elapsed = max(now - last_time, 1e-9)
            rates = []
            for topic in self.registry.topics():
                delta = topic.published - last.get(topic.name, 0)
                last[topic.name] = topic.published
                if delta:
                    rates.append(f"{topic.name} {delta / elapsed:,.0f}/s")
            last_time = now
            conns = sum(s.open_connections for s in self.sources)
            bad = sum(s.bad_frames + s.rejected_quotes + s.oversize for s in self.sources)
            dropped = sum(sub.dropped for t in self.registry.topics() for sub in t.subscriptions)
            lagging = [r.name for r in self.processors if r.lagging]
            churn, closed = self._churn(last_churn)
            log.info(
                "status: %s; source connections %d%s, bad input %d; subscriber drops %d%s%s",
                ", ".join(rates) or "idle", conns, churn, bad, dropped, closed,
                f"; LAGGING: {', '.join(lagging)}" if lagging else "",
            )  # fmt: skip

    def _churn(self, last: dict[str, int]) -> tuple[str, str]:
        """Source connections opened and ended, and connections closed by the server, since the last status line.

        Counts, never one log line per connection: 2,000 empty connections
        to a source wrote 3,285 lines (issue 11).
        """
        counts = {"+": sum(s.connections for s in self.sources), "-": sum(s.ended for s in self.sources)}
        for source in self.sources:
            for reason, n in source.closed_by.items():
                counts[f"source {reason}"] = counts.get(f"source {reason}", 0) + n
        for sink in self.sinks:
            for reason, n in sink.closed_by.items():
                counts[f"sink {reason}"] = counts.get(f"sink {reason}", 0) + n
        deltas = {key: n - last.get(key, 0) for key, n in counts.items()}
        last.update(counts)
        opened, ended = deltas.pop("+"), deltas.pop("-")
        closed_now = [f"{key} {n}" for key, n in deltas.items() if n]
        return (
            f" (+{opened} -{ended})" if opened or ended else "",
            f"; closed by the server: {', '.join(closed_now)}" if closed_now else "",
        )

    def __enter__(self) -> Hub:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- the library surface -------------------------------------------------------

    def topic(self, name: str) -> Topic:
        """The topic ``name`` (raises ``UnknownTopic``)."""
        return self.registry.get(name)

    def publish(self, topic: str, records: Sequence[TopicRecord]) -> None:
        """Publish records to ``topic`` (made from its template if needed)."""
        self.registry.publish(topic, records)

    def subscribe(
        self,
        topic: str,
        callback: Callable[[list[TopicRecord]], Any] | None = None,
        *,
        key: str | None = None,
        policy: OverflowPolicy | str | None = None,
        capacity: int = DEFAULT_CAPACITY,
    ) -> Subscription:
        """Subscribe to ``topic``'s new records.

        With ``callback``, it is called with each batch (a list of records) in
        a greenlet of its own, under ``back_pressure`` by default (it sees
        every record). Without, iterate the returned subscription (``drop``
        by default, so a forgotten iterator never stalls ingest). A topic that
        matches a template is created. Close the
        subscription to end either.
        """
        chosen = OverflowPolicy.parse(policy) if policy is not None else (
            OverflowPolicy.BACK_PRESSURE if callback is not None else OverflowPolicy.DROP
        )  # fmt: skip
        subscription = self.registry.resolve(topic).subscribe(key=key, policy=chosen, capacity=capacity, kind="library")
        if callback is not None:
            self._callbacks.append(gevent.spawn(self._callback_loop, subscription, callback))
        return subscription

    @staticmethod
    def _callback_loop(subscription: Subscription, callback: Callable[[list[TopicRecord]], Any]) -> None:
        while True:
            delivery = subscription.take()
            if delivery is None:
                return
            for batch in delivery.batches:
                try:
                    records = batch.records  # the callback is promised a list (quotes as columns become records here)
                    callback(records if isinstance(records, list) else list(records))
                except Exception:  # noqa: BLE001 - the user's callback must not end the subscription
                    log.exception("subscriber callback on topic %s failed", subscription.topic)

    def query(self, topic: str, query: TopicQuery | None = None, /, **params: Any) -> QueryResult:
        """Stored records of ``topic``: a :class:`TopicQuery`, or ``key``/``from``/``to``/``since_seq``/``limit``."""
        return self.registry.get(topic).query(query, **params)
