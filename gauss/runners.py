"""Greenlets that drive processors from their topic subscriptions.

A :class:`ProcessorRunner` takes everything waiting in its subscription as
one batch (so a processor such as OHLC emits each changed candle once per
batch), calls ``flush`` every ``flush_interval`` seconds, and raises the lag
alarm (log + ``gauss_processor_lagging``) when its full queue holds up the
topic's publisher. A sink needs no runner: it subscribes itself, one queue
per client (:class:`~gauss.protocols.TopicSink`, :mod:`gauss.sink`).
"""

from __future__ import annotations

import logging
import time

import gevent

from gauss.metrics import MetricCount, Metrics, current
from gauss.protocols import PublishContext, RecoveringProcessor, RecoveryContext, TopicProcessor
from gauss.ratelimit import RateLimitedLog
from gauss.records import OverflowPolicy
from gauss.subscription import Subscription
from gauss.topics import Topic

__all__ = ["ProcessorRunner"]

log = logging.getLogger(__name__)


class ProcessorRunner:
    """Feeds one processor the batches of its topic."""

    def __init__(
        self,
        processor: TopicProcessor,
        topic: Topic,
        context: PublishContext,
        *,
        capacity: int,
        policy: OverflowPolicy = OverflowPolicy.BACK_PRESSURE,
        metrics: Metrics | None = None,
    ) -> None:
        self.processor = processor
        self.topic = topic
        self.context = context
        self.capacity = capacity
        self.policy = OverflowPolicy(policy)
        self.name = f"{processor.name}({topic.name})"
        self.subscription: Subscription | None = None
        self.busy = False
        # The counters live once, in Metrics (a runner made alone gets a Metrics of its own).
        self._metrics = metrics = metrics if metrics is not None else Metrics()
        self._lag_gauge = metrics.processor_lagging(self.name)
        self._error_counter = metrics.processor_errors(self.name)
        self._error_log = RateLimitedLog(log, level=logging.ERROR)
        self._greenlet: gevent.Greenlet | None = None

    @property
    def lagging(self) -> bool:
        """True while the processor holds up its topic (``gauss_processor_lagging``)."""
        return current(self._lag_gauge) == 1

    errors = MetricCount("_error_counter", "Batches (and recover/flush calls) the processor failed on (``gauss_processor_errors``).")

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being processed."""
        return not self.busy and (self.subscription is None or self.subscription.depth == 0)

    def start(self) -> None:
        """Start the processor, let a recovering one re-derive its state from the topic's history, then subscribe.

        Nothing is published to the topic in between (the hub starts
        processors before sources), so the live tail follows the history
        with no gap and no repeat.
        """
        self.processor.start(self.context)
        if isinstance(self.processor, RecoveringProcessor) and isinstance(self.context, RecoveryContext):
            try:
                self.processor.recover(self.topic.history(), self.context)
            except Exception as exc:  # noqa: BLE001 - a failed recovery must not keep the server from starting
                self._failed("recover", exc)
        self.subscription = self.topic.subscribe(policy=self.policy, capacity=self.capacity, kind="processor")
        self.subscription.on_stall = self._stalled
        self._greenlet = gevent.spawn(self._run)

    def _stalled(self, seconds: float) -> None:
        if not self.lagging:
            self._lag_gauge.set(1)
            log.warning(
                "processor %s is behind: its queue of %d records is full and holds up topic %s (waiting %.1fs)",
                self.name, self.capacity, self.topic.name, seconds,
            )  # fmt: skip

    def _run(self) -> None:
        subscription = self.subscription
        assert subscription is not None
        interval = self.processor.flush_interval
        next_flush = time.monotonic() + interval if interval else None
        while True:
            timeout = None if next_flush is None else max(0.0, next_flush - time.monotonic())
            delivery = subscription.take(timeout)
            if delivery is not None:
                self.busy = True
                try:
                    self.processor.process(self.topic.name, delivery.records, self.context)
                except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the processor
                    self._failed("process", exc)
                finally:
                    self.busy = False
                if self.lagging and subscription.depth < self.capacity // 2:
                    self._lag_gauge.set(0)
                    log.info("processor %s caught up", self.name)
            elif subscription.closed or (subscription.sealed and subscription.depth == 0):
                return
            if next_flush is not None and time.monotonic() >= next_flush:
                self.flush()
                next_flush = time.monotonic() + (interval or 0.0)

    def _failed(self, what: str, exc: Exception) -> None:
        self._error_counter.inc()
        self._error_log("processor %s: %s failed: %s: %s", self.name, what, type(exc).__name__, exc)
        log.debug("processor %s: %s failed", self.name, what, exc_info=exc)

    def flush(self) -> None:
        self.busy = True
        try:
            self.processor.flush(self.context)
        except Exception as exc:  # noqa: BLE001
            self._failed("flush", exc)
        finally:
            self.busy = False

    def stop(self, timeout: float = 5.0) -> None:
        """Drain the queue, flush, stop the processor."""
        if self.subscription is not None:
            self.subscription.seal()
        if self._greenlet is not None:
            self._greenlet.join(timeout=timeout)
            if not self._greenlet.dead:
                log.warning("processor %s: not drained within %.1fs", self.name, timeout)
                self._greenlet.kill(block=False)
        self.flush()
        try:
            self.processor.stop(self.context)
        except Exception as exc:  # noqa: BLE001
            self._failed("stop", exc)
        if self.subscription is not None:
            self.subscription.close()

