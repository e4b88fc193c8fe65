"""Topics: numbered, stored streams of records, and the registry that holds them.

Publishing a batch to a :class:`Topic` numbers its records (``seq``), writes
them to the topic's journal (a tick log, when it has one) and its storage,
then offers the batch to every subscriber's bounded queue (see
:mod:`gauss.subscription`): nothing is visible before it is stored, and a
batch that could not be stored gives its seqs back. The :class:`TopicRegistry` is
also what processors publish through (the ``PublishContext`` protocol).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import gevent
import gevent.lock

from gauss.core import QuoteBatch, TopicRecord
from gauss.errors import UnknownTopic
from gauss.metrics import MetricCount, Metrics
from gauss.protocols import ReplayableStorage, TopicStorage
from gauss.ratelimit import RateLimitedLog
from gauss.records import DataFormat, KeyInfo, OverflowPolicy, QueryResult, TopicQuery
from gauss.subscription import DEFAULT_CAPACITY, PublishedBatch, StallBacklog, Subscription

if TYPE_CHECKING:
    from gauss.config import TopicSpec

__all__ = ["Topic", "TopicRegistry"]

log = logging.getLogger(__name__)

_RESTORE_BATCH = 10_000
"""Records per append while a storage is rebuilt from its journal."""

PUBLISH_SLICE_RECORDS = 500
"""Most records a processor's publish stores and fans out between two yields (~20 ms of new candle keys in a file storage)."""


class Topic:
    """A named stream of records: numbered, stored, fanned out to subscribers.

    ``epoch`` and ``last_seq`` come from the storage when the topic opens: a
    durable storage keeps them across restarts, a volatile one starts a new
    epoch at seq 0. With a ``journal`` they come from the journal, and the
    storage is rebuilt from it (a memory topic that survives a crash).
    """

    def __init__(
        self,
        name: str,
        data_format: DataFormat | str,
        storage: TopicStorage,
        *,
        storage_type: str | None = None,
        metrics: Metrics | None = None,
        journal: ReplayableStorage | None = None,
    ) -> None:
        self.name = name
        self.format = DataFormat(data_format)
        self.storage = storage
        self.storage_type = storage_type or storage.name
        self.journal = journal
        epoch, last_seq = storage.open(name, self.format)
        if journal is not None:
            epoch, last_seq = self._restore(journal, str(epoch), int(last_seq))
        self.epoch: str = str(epoch)
        self.last_seq: int = int(last_seq)
        self._subscriptions: tuple[Subscription, ...] = ()
        self._offered: tuple[Subscription, ...] = ()
        """The subscriptions each batch is offered to: all but the stalled ones."""
        self._stalled: dict[Subscription, None] = {}
        """Full subscriptions (``drop``, ``drop_oldest``, ``conflate``): every batch is shed for them at once, without a call each (see :meth:`publish`)."""
        self._backlogged: dict[Subscription, tuple[int, int]] = {}
        """The stalled ``drop_oldest`` and ``conflate`` subscriptions, each with the seq after which it needs :attr:`_backlog` and the records it needs kept."""
        self._backlog: StallBacklog | None = None
        """While ``drop_oldest`` or ``conflate`` subscriptions are stalled: what was published since, for them to read back when they take."""
        self._stalled_counters: dict[Callable[[int], None], int] = {}
        """How many stalled subscriptions count their sheds with each counter (one per kind)."""
        self._lock = gevent.lock.Semaphore()
        # The counters live once, in Metrics (a topic made alone gets a Metrics of its own).
        self._metrics = metrics = metrics if metrics is not None else Metrics()
        self._published_counter = metrics.topic_published(name)
        self._stored_counter = metrics.topic_stored(name)
        self._write_error_counter = metrics.storage_write_errors(name)
        self._failed_counter = metrics.storage_failed_records(name)
        self._store_errors = RateLimitedLog(log, level=logging.ERROR)

    def _restore(self, journal: ReplayableStorage, epoch: str, last_seq: int) -> tuple[str, int]:
        """Open the journal and bring the storage up to it; the journal's epoch and seq are the topic's."""
        journal_epoch, journal_seq = journal.open(self.name, self.format)
        since = last_seq if self.storage.durable and epoch == journal_epoch else 0
        restored = 0
        batch: list[TopicRecord] = []
        for record in journal.replay(since):
            batch.append(record)
            if len(batch) == _RESTORE_BATCH:
                self.storage.append(batch)
                restored += len(batch)
                batch = []
        if batch:
            self.storage.append(batch)
            restored += len(batch)
        if restored:
            log.info("topic %s: %d records restored from its journal (epoch %s, last seq %d)", self.name, restored, journal_epoch, journal_seq)
        return str(journal_epoch), int(journal_seq)

    def history(self) -> Iterator[TopicRecord]:
        """The records this topic can read back in seq order (its journal's, or a replayable storage's)."""
        if self.journal is not None:
            return self.journal.replay(0)
        if isinstance(self.storage, ReplayableStorage):
            return self.storage.replay(0)
        return iter(())

    published = MetricCount("_published_counter", "Records published since this process opened the topic (``gauss_topic_records_published``).")
    write_errors = MetricCount("_write_error_counter", "Batches the journal or storage failed to store (``gauss_storage_write_errors``).")

    def __repr__(self) -> str:
        return f"Topic({self.name!r}, format={self.format.value!r}, storage={self.storage_type!r}, last_seq={self.last_seq})"

    # --- publishing ----------------------------------------------------------

    def publish(self, records: Sequence[TopicRecord], *, owned: bool = False) -> PublishedBatch | None:
        """Number, store and fan out a batch; returns the published batch (None if empty).

        ``owned=True`` says the caller made these record objects for this
        call alone, so they may be numbered in place. Publishers to one topic
        are serialised, so every subscriber sees batches in seq order.
        """
        if not records:
            return None
        with self._lock:
            seq = self.last_seq
            numbered: Sequence[TopicRecord]
            if isinstance(records, QuoteBatch):  # quotes as columns: numbering is setting the first seq
                if not owned or records.first_seq:  # a batch numbered elsewhere (a query, another topic): same columns, new seqs
                    records = QuoteBatch(records.symbols, records.ts_ms, records.bid, records.ask, records.bid_size, records.ask_size)
                quotes = records
                quotes.first_seq = seq + 1
                seq += len(quotes)
                numbered = quotes
            elif owned:  # PERF: numbering in place saves one object per record on the ingest path
                numbered = records if type(records) is list else list(records)
                for record in numbered:
                    seq += 1
                    record.seq = seq
            else:
                fresh: list[TopicRecord] = []
                append = fresh.append
                for record in records:
                    seq += 1
                    append(record.with_seq(seq))
                numbered = fresh
            kept = self._store(numbered)
            if kept < len(numbered):  # only what was stored is numbered and shown
                self._failed_counter.inc(len(numbered) - kept)
                if not kept:
                    return None
                numbered = numbered[:kept]
                seq = numbered[-1].seq
            self.last_seq = seq
            self._published_counter.inc(len(numbered))
            batch = PublishedBatch(self.name, numbered)  # type: ignore[arg-type, unused-ignore]
            # PERF: a stalled ``drop`` subscriber sheds every batch until its consumer reads
            # again, so it is not offered them: it works out what it missed from ``last_seq``
            # when it next takes, and the shed is counted here once per kind, not per
            # subscriber (issue 13: 200 stalled WebSocket clients halved ingest;
            # bench/bench_fanout.py). Those stalling on this very batch count it themselves.
            # A stalled ``drop_oldest`` one sheds as much and a ``conflate`` one at least as
            # much; they read the batch back from the one backlog when they take (held
            # before the offers: a consumer may take while a ``back_pressure`` offer waits).
            stalled = tuple(self._stalled_counters.items())
            if self._backlog is not None:
                self._backlog.append(batch, self.last_seq)
            for subscription in self._offered:
                subscription.offer(batch)
            for on_shed, count in stalled:
                on_shed(len(numbered) * count)
            return batch

    def _stall(self, subscription: Subscription, stalled_on: PublishedBatch | None = None, keep: int = 0) -> bool:
        """Stop offering batches to ``subscription`` (full): :meth:`publish` sheds them for it; True if it did.

        ``stalled_on``: the batch (being published) a ``drop_oldest`` or
        ``conflate`` subscription stalls on: it and those after it are kept in
        the backlog until it takes, at least the newest ``keep`` records.
        """
        if subscription not in self._subscriptions or subscription in self._stalled:
            return False
        self._stalled[subscription] = None
        self._offered = tuple(s for s in self._offered if s is not subscription)
        if subscription.on_shed is not None:
            counters = self._stalled_counters
            counters[subscription.on_shed] = counters.get(subscription.on_shed, 0) + 1
        if stalled_on is not None:
            records = stalled_on.records
            self._backlogged[subscription] = (records[0].seq - 1, keep)
            if self._backlog is None:  # else it holds the batch already
                self._backlog = StallBacklog(records[0].seq - 1, keep)
                self._backlog.append(stalled_on, records[-1].seq)
            else:
                self._backlog.bound = max(self._backlog.bound, keep)
        return True

    def _unstall(self, subscription: Subscription) -> bool:
        if subscription not in self._stalled:
            return False
        del self._stalled[subscription]
        on_shed = subscription.on_shed
        if on_shed is not None:
            left = self._stalled_counters[on_shed] - 1
            if left:
                self._stalled_counters[on_shed] = left
            else:
                del self._stalled_counters[on_shed]
        if self._backlogged.pop(subscription, None) is not None:
            self._shrink_backlog()
        return True

    def _shrink_backlog(self) -> None:
        """Keep of the backlog only what the stalled subscriptions still need (none of them: nothing)."""
        backlog = self._backlog
        needs = self._backlogged.values()
        if not needs or backlog is None:
            self._backlog = None
            return
        backlog.bound = max(keep for _, keep in needs)
        backlog.drop_until(min(after for after, _ in needs))

    def _backlog_after(self, seq: int, most: int | None = None) -> tuple[list[PublishedBatch], int]:
        """The records published after ``seq`` that the backlog holds (only the newest ``most``), and the seq after which it holds all."""
        backlog = self._backlog
        if backlog is None:
            return [], self.last_seq
        return backlog.after(seq, most), backlog.since

    def _resume(self, subscription: Subscription) -> None:
        """Offer batches to ``subscription`` again (its consumer took what it held)."""
        if self._unstall(subscription):
            self._offered = (*self._offered, subscription)

    def _store(self, records: Sequence[TopicRecord]) -> int:
        """Journal, then store a numbered batch; how many of its records were kept (a prefix; 0: none).

        A batch the journal took is kept even if the storage then fails: it
        is durable, and the storage gets it back from the journal at restart.
        Without a journal, whatever prefix of a failed batch the storage did
        keep (a storage that stores record by record, like the memory ring)
        stays numbered and is shown; the rest gives its seqs back, so one bad
        batch never wedges the topic.
        """
        if self.journal is not None:
            try:
                self.journal.append(records)
            except Exception as exc:  # noqa: BLE001 - a failing storage must not stop the stream
                self._store_failed("journal", records, exc)
                return 0
        try:
            self.storage.append(records)
        except Exception as exc:  # noqa: BLE001 - a failing storage must not stop the stream
            self._store_failed(self.storage_type, records, exc)
            if self.journal is None:
                kept = self._kept(records)
                if kept:
                    self._stored_counter.inc(kept)
                return kept
        self._stored_counter.inc(len(records))
        return len(records)

    def _kept(self, records: Sequence[TopicRecord]) -> int:
        """How many records of a batch the storage refused it still holds, from the storage's last seq.

        A storage that cannot say (``bounds`` fails too) may hold any of
        them, so their seqs are spent, never handed out again (SPEC 1
        "Seq is a promise"), and none of them is shown.
        """
        first = records[0].seq
        try:
            last = int(self.storage.bounds()[1])
        except Exception as exc:  # noqa: BLE001 - the storage is failing; its seqs must not be reused
            self.last_seq = max(self.last_seq, records[-1].seq)
            self._store_errors("topic %s: storage %s cannot say what it kept either: %s", self.name, self.storage_type, exc)
            return 0
        return min(max(last - first + 1, 0), len(records))

    def _store_failed(self, what: str, records: Sequence[TopicRecord], exc: Exception) -> None:
        self._write_error_counter.inc()
        self._store_errors("topic %s: %s failed to store %d records: %s", self.name, what, len(records), exc)

    # --- subscribing ---------------------------------------------------------

    def subscribe(
        self,
        *,
        key: str | None = None,
        policy: OverflowPolicy | str = OverflowPolicy.DROP,
        capacity: int = DEFAULT_CAPACITY,
        kind: str = "client",
    ) -> Subscription:
        """A new subscriber queue, delivering every record with seq > the current ``last_seq``.

        Never switches greenlets, so a query made right after (or before)
        sees exactly the records up to ``start_seq``.
        """
        on_shed = self._metrics.dropped(self.name, kind).inc
        subscription = Subscription(
            self, key=key, policy=policy, capacity=capacity, kind=kind, start_seq=self.last_seq, on_shed=on_shed,
            on_take=self._metrics.delivered(self.name, kind).inc,
        )  # fmt: skip
        self._subscriptions = (*self._subscriptions, subscription)
        self._offered = (*self._offered, subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
        self._offered = tuple(s for s in self._offered if s is not subscription)
        self._unstall(subscription)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return self._subscriptions

    # --- reading -------------------------------------------------------------

    def query(self, query: TopicQuery | None = None, /, **params: Any) -> QueryResult:
        """Stored records matching ``query`` (or a query built from REST-style ``params``)."""
        if query is None:
            query = TopicQuery.from_params(params)
        return self.storage.query(query)

    def latest(self, key: str | None = None) -> list[TopicRecord]:
        return self.storage.latest(key)

    def keys(self) -> list[KeyInfo]:
        return self.storage.keys()

    def count(self) -> int:
        return self.storage.count()

    def bounds(self) -> tuple[int, int]:
        return self.storage.bounds()

    # --- lifecycle -----------------------------------------------------------

    def flush(self) -> None:
        if self.journal is not None:
            self.journal.flush()
        self.storage.flush()

    def close(self) -> None:
        """Flush and close the journal and the storage; seal every subscription (they drain, then end)."""
        for subscription in self._subscriptions:
            subscription.seal()
        try:
            self.flush()
        finally:
            if self.journal is not None:
                self.journal.close()
            self.storage.close()


class TopicRegistry:
    """Every topic of a hub, by name; the ``PublishContext`` processors publish through.

    Topics come from :class:`gauss.config.TopicSpec` entries: an exact name
    is created at once; a name ending in ``*`` is a template whose topics
    are created on first publish (or at once for the names it lists in
    ``create``). Publishing to a name that matches no entry raises
    :class:`UnknownTopic`.
    """

    def __init__(self, specs: Sequence[TopicSpec] = (), *, metrics: Metrics | None = None) -> None:
        self._metrics = metrics if metrics is not None else Metrics()
        self._topics: dict[str, Topic] = {}
        self._exact = {spec.name: spec for spec in specs if not spec.is_template}
        # Longest prefix first, so "ohlc.1m.*" wins over "ohlc.*" and "*".
        self._templates = sorted((s for s in specs if s.is_template), key=lambda s: len(s.name), reverse=True)
        self._closed = False

    def open(self) -> None:
        """Create every topic the specs name (exact names and templates' ``create`` lists)."""
        for spec in self._exact.values():
            if spec.name not in self._topics:
                self._from_spec(spec, spec.name)
        for spec in self._templates:
            for name in spec.create:
                if name not in self._topics:
                    self._from_spec(spec, name)

    def _from_spec(self, spec: TopicSpec, name: str) -> Topic:
        storage = spec.build_storage(name)
        journal = spec.build_journal(name)
        topic = Topic(name, spec.format, storage, storage_type=spec.storage_type, metrics=self._metrics, journal=journal)
        self._topics[name] = topic
        log.debug("topic %s created (%s, %s storage, epoch %s, last seq %d)", name, spec.format.value, spec.storage_type, topic.epoch, topic.last_seq)
        return topic

    def spec_for(self, name: str) -> TopicSpec | None:
        """The config entry a topic name belongs to (exact, else the longest matching template)."""
        spec = self._exact.get(name)
        if spec is not None:
            return spec
        for template in self._templates:
            if template.matches(name):
                return template
        return None

    def get(self, name: str) -> Topic:
        """The existing topic ``name``; raises :class:`UnknownTopic`."""
        try:
            return self._topics[name]
        except KeyError:
            raise UnknownTopic(name) from None

    def resolve(self, name: str) -> Topic:
        """The topic ``name``, created from its template if it does not exist yet."""
        topic = self._topics.get(name)
        if topic is not None:
            return topic
        spec = self.spec_for(name)
        if spec is None or self._closed:
            raise UnknownTopic(name)
        return self._from_spec(spec, name)

    def __contains__(self, name: object) -> bool:
        return name in self._topics

    def topics(self) -> list[Topic]:
        """Every topic, sorted by name."""
        return [self._topics[name] for name in sorted(self._topics)]

    def create(
        self,
        name: str,
        *,
        format: DataFormat | str = DataFormat.ANY,
        storage: TopicStorage | Mapping[str, Any] | str | None = None,
    ) -> Topic:
        """Create a topic from Python: ``storage`` an instance, a plugin table, or a type name.

        The default storage is ``memory``.
        """
        if name in self._topics:
            raise ValueError(f"topic {name!r} exists already")
        if not isinstance(name, str) or not name or name.endswith("*"):
            raise ValueError(f"topic name must be a non-empty string not ending in '*', got {name!r}")
        if storage is None or isinstance(storage, (str, Mapping)):
            from gauss.registry import create as create_plugin

            table: Mapping[str, Any] | str = storage if storage is not None else "memory"
            instance = create_plugin("storage", table, where=f"topic {name}.storage")
            storage_type = table if isinstance(table, str) else str(table.get("type"))
        else:
            instance = storage
            storage_type = None
        topic = Topic(name, format, instance, storage_type=storage_type, metrics=self._metrics)
        self._topics[name] = topic
        return topic

    def publish(self, topic: str, records: Sequence[TopicRecord]) -> None:
        """Publish ``records`` to ``topic`` (created from its template on first publish).

        What processors publish through. Records (not quote columns) go in
        slices of :data:`PUBLISH_SLICE_RECORDS` with a yield between them: the
        candles of thousands of symbols flushed or evicted at once held the
        loop for seconds in one storage append (100,000 new symbols: /api/health
        took 1-3 s).
        """
        if not records:
            return
        target = self.resolve(topic)
        if isinstance(records, QuoteBatch) or len(records) <= PUBLISH_SLICE_RECORDS:
            target.publish(records)
            return
        for start in range(0, len(records), PUBLISH_SLICE_RECORDS):
            target.publish(records[start : start + PUBLISH_SLICE_RECORDS])
            gevent.sleep(0)

    def query(self, topic: str, query: TopicQuery, /) -> QueryResult:
        """Stored records of ``topic`` (created from its template if needed): the ``RecoveryContext`` read."""
        return self.resolve(topic).query(query)

    def flush(self) -> None:
        for topic in self._topics.values():
            try:
                topic.flush()
            except Exception as exc:  # noqa: BLE001 - flush the others regardless
                log.error("topic %s: flush failed: %s", topic.name, exc)

    def close(self) -> None:
        """Flush and close every storage (once)."""
        if self._closed:
            return
        self._closed = True
        for topic in self._topics.values():
            try:
                topic.close()
            except Exception as exc:  # noqa: BLE001 - close the others regardless
                log.error("topic %s: close failed: %s", topic.name, exc)
