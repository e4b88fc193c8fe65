"""``ohlc`` processor: quotes in, mid-price candles out, one topic per timeframe.

The :class:`~gauss.core.OhlcAggregator` kernel does the arithmetic on whole
batches; this stage decides *when* candles are published (SPEC section 1):

- a candle that is no longer the newest of its symbol and timeframe (its
  bucket closed, or a held bucket got a late-but-accepted quote) is
  published with the batch that changed it, once per batch;
- the open candle (newest bucket) is coalesced and published every
  ``open_interval_ms`` (the engine calls :meth:`OhlcProcessor.flush`), only
  when it changed since it was last published, never once per quote; the
  kernel holds it (``coalesce_open``), so a batch over many symbols costs
  Python nothing for the candles it only kept open;
- a quote older than every held bucket is *late*: counted per timeframe in
  :attr:`OhlcProcessor.late_counts` and, with ``late_topic`` set, published
  there as ``{"quote": ..., "timeframe": label, "reason": "late"}``.

Candles go to ``<output_prefix><label>`` (``ohlc.1m``), as records with
``ts_ms`` the bucket start and ``key`` the symbol. A bucket starting at the
epoch itself (a quote in the first ``timeframe`` after 1970-01-01 00:00 UTC)
makes no candle: no record may carry ``ts_ms`` 0 (SPEC section 1); such
candles are counted in :attr:`OhlcProcessor.epoch_candles`.

State is bounded: at most ``max_keys`` symbols are held; beyond that the
symbol idle longest is evicted (its open candles are published first, so
nothing is lost). When an evicted symbol comes back, its newest stored
candles are read from the candle topics into the kernel first
(:meth:`OhlcAggregator.seed`), so its candles go on from what was stored
instead of starting afresh and replacing it. At start the processor
re-derives its state from its topic's history (the tick log of
``quotes.raw``): every quote is replayed through the kernel and each candle
that differs from the stored one is published, so a crash loses no candle
of a quote anyone saw; where the history lost quotes (rotated, damaged),
the candles spanning the loss extend the stored ones instead.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from operator import itemgetter
from typing import Annotated, Any, Iterator, Sequence

import msgspec
import numpy as np

from gauss.core import OHLC_TAKES_ARRAYS, OhlcAggregator, QuoteBatch, TopicRecord
from gauss.errors import ConfigError
from gauss.protocols import PublishContext, RecoveryContext
from gauss.ratelimit import RateLimitedLog
from gauss.records import MAX_QUERY_LIMIT, Candle, TopicQuery
from gauss.registry import PluginConfig

__all__ = ["OhlcProcessor", "OhlcConfig", "parse_timeframe", "DEFAULT_TIMEFRAMES"]

log = logging.getLogger(__name__)

DEFAULT_TIMEFRAMES = ["1s", "5s", "1m", "5m", "15m", "1h", "4h", "1d"]
DEFAULT_MAX_KEYS = 10_000
_REPLAY_BATCH = 10_000
_EVICTED_MEMORY = 10
_EVICT_SLICE = 250
"""Evicted symbols whose open candles are published together (at most this times the timeframes a publish)."""
"""Evicted symbols remembered for seeding, in multiples of ``max_keys`` (the oldest are forgotten first)."""
_INT64 = (-(1 << 63), (1 << 63) - 1)
_symbol_of = itemgetter(0)
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_LABEL = re.compile(r"([1-9][0-9]*)([smhd])\Z")

_RECORD_ERRORS = (ArithmeticError, LookupError, TypeError, ValueError, AttributeError)
"""What a record the kernel cannot take makes its columns or the kernel raise."""

KernelCandle = tuple[str, int, int, float, float, float, float, int, bool]
"""A candle as the kernels return it: the fields of :class:`gauss.records.Candle`, in order.

PERF: the stage keeps the kernels' plain tuples and reads them by unpacking
into the field names: wrapping each in a Candle took the processor from
~830k to ~460k quotes/s (compiled, 100 symbols, 8 timeframes; noisy shared
machine). Records are built with the names.
"""


class _Losses:
    """Where a replayed history lost quotes: seqs that skip (its oldest rotated away, a damaged frame moved aside).

    For each key, the newest ``ts_ms`` of its first quote after each loss:
    its candles up to that bucket may lack quotes the history no longer has.
    """

    def __init__(self) -> None:
        self._next_seq = 1
        self._losses = 0
        self._seen: dict[str, int] = {}
        """Key -> how many losses it has had a quote after."""
        self._until: dict[str, int] = {}
        self.lost = 0
        """Seqs missing from the history."""

    def see(self, batch: list[TopicRecord]) -> None:
        """Note the next batch of the history (ascending by seq; unnumbered records, seq 0, are taken as whole)."""
        first, last = batch[0].seq, batch[-1].seq
        if first and not (first == self._next_seq and last - first == len(batch) - 1):
            for record in batch:  # PERF: only a batch with a loss in it is walked for it
                seq = record.seq
                if seq and seq != self._next_seq:
                    self._losses += 1
                    self.lost += max(0, seq - self._next_seq)
                if seq:
                    self._next_seq = seq + 1
                self._note(record)
            return
        if last:
            self._next_seq = last + 1
        if self._losses:
            for record in batch:
                self._note(record)

    def _note(self, record: TopicRecord) -> None:
        key = record.key
        if self._losses and self._seen.get(key, 0) < self._losses:
            self._seen[key] = self._losses
            self._until[key] = max(self._until.get(key, record.ts_ms), record.ts_ms)

    def touch(self, key: str, start_ms: int) -> bool:
        """Whether the candle of ``key`` starting at ``start_ms`` may lack quotes the history lost."""
        until = self._until.get(key)
        return until is not None and start_ms <= until

    def describe(self) -> str:
        return f" ({self.lost} quotes before or between them lost: those candles extend the stored ones)" if self._losses else ""


def _extended(derived: KernelCandle, stored: tuple[Any, ...]) -> KernelCandle:
    """The stored candle extended by a replay that lacks some of its quotes.

    The stored candle has the quotes the history lost, and maybe some it
    replayed: the open is the stored one, high and low take both sides (a
    quote counted twice does not move them), the close is the replay's
    newest; ticks are the larger count, exact after a clean stop (the stored
    candle held every replayed quote) and short by the quotes of the last
    open-candle interval after a crash.
    """
    key, width, start, _, high, low, close, ticks, is_open = derived
    s_open, s_high, s_low, _, s_ticks = stored
    return (key, width, start, s_open, max(high, s_high), min(low, s_low), close, max(ticks, s_ticks), is_open)


def parse_timeframe(label: str) -> int:
    """Milliseconds of a label such as ``5s``, ``3m``, ``4h``, ``1d``; ValueError otherwise."""
    match = _LABEL.match(label) if isinstance(label, str) else None
    if match is None:
        raise ValueError(f"bad timeframe {label!r}: expected <n><s|m|h|d>, e.g. 1s, 3m, 4h, 1d")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def _is_price(value: Any) -> bool:
    return type(value) is float or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _is_ts(value: Any) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


class OhlcConfig(PluginConfig, frozen=True, kw_only=True):
    """The options of the ``ohlc`` processor."""

    timeframes: tuple[str, ...] = tuple(DEFAULT_TIMEFRAMES)
    """Candle widths such as ``1s``, ``3m``, ``4h``, ``1d``, each a different width; one output topic each."""
    output_prefix: Annotated[str, msgspec.Meta(min_length=1)] = "ohlc."
    """Candles of timeframe ``label`` go to ``<output_prefix><label>``."""
    hold_buckets: Annotated[int, msgspec.Meta(ge=1)] = 2
    """Buckets held per symbol and timeframe: a quote older than all of them is late."""
    open_interval_ms: Annotated[int, msgspec.Meta(ge=1)] = 250
    """How often changed open candles are published."""
    late_topic: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    """Where late quotes are published (None: only counted)."""
    max_keys: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_KEYS
    """Symbols held at most; beyond it the one idle longest is evicted."""

    def __post_init__(self) -> None:
        if not self.timeframes:
            raise ConfigError("timeframes", "must list at least one timeframe")
        widths: dict[int, str] = {}
        for label in self.timeframes:
            try:
                width = parse_timeframe(label)
            except ValueError as exc:
                raise ConfigError("timeframes", str(exc)) from None
            if width in widths:
                raise ConfigError("timeframes", f"{label!r} and {widths[width]!r} are the same width")
            widths[width] = label

    def published_topics(self) -> Iterator[tuple[str, str]]:
        """One candle topic a timeframe, and the late quotes' topic if any (:class:`~gauss.protocols.PublishingConfig`)."""
        for label in self.timeframes:
            yield "output_prefix", self.output_prefix + label
        if self.late_topic is not None:
            yield "late_topic", self.late_topic


class OhlcProcessor:
    """Candles per symbol for each configured timeframe."""

    name = "ohlc"
    Config = OhlcConfig

    def __init__(
        self,
        timeframes: Sequence[str] = DEFAULT_TIMEFRAMES,
        *,
        output_prefix: str = "ohlc.",
        hold_buckets: int = 2,
        open_interval_ms: int = 250,
        late_topic: str | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if not timeframes:
            raise ValueError("at least one timeframe is needed")
        widths = [parse_timeframe(label) for label in timeframes]
        if len(set(widths)) != len(widths):
            raise ValueError(f"timeframes {list(timeframes)} name the same width twice")
        if open_interval_ms < 1:
            raise ValueError("open_interval_ms must be at least 1")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.labels = list(timeframes)
        self.widths_ms = widths
        self.output_prefix = output_prefix
        self.hold_buckets = hold_buckets
        self.open_interval_ms = open_interval_ms
        self.flush_interval: float | None = open_interval_ms / 1000.0
        self.late_topic = late_topic
        self.topics = [output_prefix + label for label in self.labels]
        """Output topic of each timeframe, in configuration order."""
        self.invalid_quotes = 0
        """Input records without a usable bid and ask (skipped)."""
        self._invalid_log = RateLimitedLog(log, level=logging.ERROR)
        self.epoch_candles = 0
        """Candle publications skipped because the bucket starts at ts_ms 0, which no record may carry."""
        self._aggregator = OhlcAggregator(widths, hold_buckets, coalesce_open=True)
        self._tf_index = {width: t for t, width in enumerate(widths)}
        self.max_keys = max_keys
        self.evicted_keys = 0
        """Symbols dropped from the kernel's state because more than ``max_keys`` were held."""
        self._idle_order: OrderedDict[str, None] = OrderedDict()
        """Held symbols, the one idle longest first."""
        self._evicted: OrderedDict[str, None] = OrderedDict()
        """Symbols evicted and not back yet, the longest gone first: their next quote seeds them from storage."""
        self._evict_log = RateLimitedLog(log, level=logging.WARNING)

    @classmethod
    def from_config(cls, config: OhlcConfig) -> OhlcProcessor:
        return cls(**config.options())

    @property
    def skipped_records(self) -> int:
        """Input records skipped (no usable bid, ask or ts_ms, or refused by the kernel): ``gauss_processor_skipped_records_total``."""
        return self.invalid_quotes

    @property
    def late_counts(self) -> dict[str, int]:
        """Quotes too late for any held bucket, per timeframe label (for metrics)."""
        return dict(zip(self.labels, self._aggregator.late_counts, strict=True))

    def start(self, context: PublishContext) -> None:
        """Nothing to prepare: buckets open as quotes arrive."""

    def process(self, topic: str, records: Sequence[TopicRecord], context: PublishContext) -> None:
        if self._evicted and isinstance(context, RecoveryContext):
            self._seed_returning(records, context)
        for part, keys, candles, late in self._apply(records):
            self._publish(candles, late, part, context)
            self._touch(keys, context)

    def _apply(self, records: Sequence[TopicRecord]) -> Iterator[tuple[Sequence[TopicRecord], list[str], list[KernelCandle], list[tuple[int, int]]]]:
        """Run ``records`` through the kernel: ``(part, its distinct keys, candles, late)`` for each part it took, in order.

        Normally one part, the whole batch. A batch the columns or the kernel
        refuse costs only the records that caused it (issue 10: one bad
        quote made OHLC drop its whole batch): records without a usable bid,
        ask and ts_ms are skipped first; if the rest still fails it is split
        in halves until each refused record stands alone, and is skipped,
        counted (``skipped_records``) and logged. The kernel converts its
        columns before it changes any state, and the pure twin gets columns
        numpy has already checked, so a refused batch left no trace and its
        halves count once.
        """
        if not records:
            return
        try:
            keys, ts_ms, bids, asks = self._columns(records)
            candles, late = self._aggregator.update(keys, ts_ms, bids, asks)
        except _RECORD_ERRORS as exc:
            if len(records) == 1:
                self.invalid_quotes += 1
                self._invalid_log(
                    "ohlc: skipped a record the kernel refused (%s: %s): %.200r (%d skipped so far)",
                    type(exc).__name__, exc, records[0], self.invalid_quotes,
                )  # fmt: skip
                return
            usable = self._usable(records)
            if len(usable) < len(records):
                yield from self._apply(usable)
                return
            half = len(records) // 2
            yield from self._apply(records[:half])
            yield from self._apply(records[half:])
            return
        yield records, self._aggregator.batch_keys, candles, late

    def _publish(self, candles: list[KernelCandle], late: list[tuple[int, int]], records: Sequence[TopicRecord], context: PublishContext) -> None:
        """Publish the candles the batch closed or changed behind the newest (the kernel holds the open ones), and its late quotes."""
        self._publish_candles(candles, context)
        if late and self.late_topic is not None:
            labels = self.labels
            late_records = []
            for i, t in late:
                quote = records[i]
                data = {"quote": quote.data, "timeframe": labels[t], "reason": "late"}
                late_records.append(TopicRecord(quote.ts_ms, quote.key, data))
            context.publish(self.late_topic, late_records)

    @staticmethod
    def _columns(records: Sequence[TopicRecord]) -> tuple[list[str], Any, Any, Any]:
        """Key, ts_ms, bid and ask columns, checked before the kernel sees the batch.

        NOTE: numpy checks them in C (numeric, ts_ms within int64), so a bad
        record (a mis-wired topic) is skipped and never half-applies a batch.
        The kernel gets the arrays or, where it is faster on them, the lists
        (``gauss.core.OHLC_TAKES_ARRAYS``).
        """
        if isinstance(records, QuoteBatch):  # quotes as columns: the kernel reads them as they are
            if OHLC_TAKES_ARRAYS:
                return records.symbols, records.ts_ms, records.bid, records.ask
            return records.symbols, records.ts_ms.tolist(), records.bid.tolist(), records.ask.tolist()
        keys = [r.key for r in records]
        ts_ms = [r.ts_ms for r in records]
        bids = [r.data["bid"] for r in records]
        asks = [r.data["ask"] for r in records]
        arrays = (np.asarray(ts_ms, dtype=np.int64), np.asarray(bids, dtype=np.float64), np.asarray(asks, dtype=np.float64))
        if OHLC_TAKES_ARRAYS:
            return keys, *arrays
        return keys, ts_ms, bids, asks

    def _publish_candles(self, candles: list[KernelCandle], context: PublishContext) -> None:
        """One publish a timeframe, its candles grouped by symbol (each symbol's in time order).

        PERF: a file storage writes each key's records of an append at once,
        and a big publish is stored in slices (``PUBLISH_SLICE_RECORDS``): in
        the kernel's order a backlog of 1,000 symbols' quotes put one candle of
        each symbol in a slice, one encode and one write(2) a candle.
        """
        per_tf: list[list[TopicRecord]] = [[] for _ in self.widths_ms]
        tf_index = self._tf_index
        if len(candles) > 1:
            candles.sort(key=_symbol_of)  # stable: a symbol's candles keep their order
        for candle in candles:
            t = tf_index[candle[1]]  # (key, timeframe_ms, start_ms, ...)
            if candle[2] < 1:  # a bucket at the epoch
                self.epoch_candles += 1
                self._invalid_log("ohlc: no %s candle of %r: its bucket starts at ts_ms 0 (%d so far)", self.labels[t], candle[0], self.epoch_candles)
                continue
            per_tf[t].append(self._record(candle, t))
        for t, out in enumerate(per_tf):
            if out:
                context.publish(self.topics[t], out)

    def _touch(self, keys: list[str], context: PublishContext) -> None:
        """Mark the batch's distinct symbols as the most recently active; evict beyond ``max_keys``."""
        order = self._idle_order
        for key in keys:
            if key in order:
                order.move_to_end(key)
            else:
                order[key] = None
        excess = len(order) - self.max_keys
        if excess <= 0:
            return
        evicted = [order.popitem(last=False)[0] for _ in range(excess)]
        remembered = self._evicted
        remembered.update(dict.fromkeys(evicted))
        while len(remembered) > _EVICTED_MEMORY * self.max_keys:
            remembered.popitem(last=False)
        for first in range(0, excess, _EVICT_SLICE):  # the context yields between publishes: no long hold
            unpublished: list[KernelCandle] = []
            for key in evicted[first : first + _EVICT_SLICE]:
                unpublished += self._aggregator.take_open(key)
                self._aggregator.forget(key)
            self._publish_candles(unpublished, context)
        self.evicted_keys += excess
        self._evict_log(
            "ohlc: more than max_keys=%d symbols; evicted the %d idle longest (%d so far)", self.max_keys, excess, self.evicted_keys
        )

    def _seed_returning(self, records: Sequence[TopicRecord], context: RecoveryContext) -> None:
        """Give the kernel the newest stored candles of the evicted symbols this batch brings back."""
        keys = records.symbols if isinstance(records, QuoteBatch) else [r.key for r in records]
        evicted = self._evicted
        for key in dict.fromkeys(keys):
            if key not in evicted:
                continue
            del evicted[key]
            for topic, label, width in zip(self.topics, self.labels, self.widths_ms, strict=True):
                stored = context.query(topic, TopicQuery(key=key, limit=self.hold_buckets)).records
                for record in stored:
                    data = record.data
                    try:
                        self._aggregator.seed(key, width, record.ts_ms, data["open"], data["high"], data["low"], data["close"], data["ticks"])
                    except _RECORD_ERRORS as exc:
                        self._invalid_log("ohlc: stored %s candle of %r not taken back (%s: %s)", label, key, type(exc).__name__, exc)

    def _usable(self, records: Sequence[TopicRecord]) -> list[TopicRecord]:
        usable = []
        for record in records:
            data = record.data
            try:
                ok = isinstance(record.key, str) and _is_ts(record.ts_ms) and _INT64[0] <= record.ts_ms <= _INT64[1]
                ok = ok and _is_price(data["bid"]) and _is_price(data["ask"])
            except (KeyError, TypeError):
                ok = False
            if ok:
                usable.append(record)
        skipped = len(records) - len(usable)
        if not skipped:
            return usable
        self.invalid_quotes += skipped
        self._invalid_log("ohlc: skipped %d records without a numeric bid and ask or an int64 ts_ms (%d so far)", skipped, self.invalid_quotes)
        return usable

    def _record(self, candle: KernelCandle, t: int) -> TopicRecord:
        key, _, start_ms, open_, high, low, close, ticks, _ = candle
        data = {
            "symbol": key,
            "timeframe": self.labels[t],
            "ts_ms": start_ms,
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "ticks": ticks,
        }
        return TopicRecord(start_ms, key, data)

    def flush(self, context: PublishContext) -> None:
        """Publish every open candle that changed since its last publication."""
        self._publish_candles(self._aggregator.take_open(), context)

    def stop(self, context: PublishContext) -> None:
        self.flush(context)

    def recover(self, history: Iterator[TopicRecord], context: RecoveryContext) -> None:
        """Replay the input topic's history through the kernel; publish the candles that differ from the stored ones.

        The replay goes in seq order, as the quotes first arrived, so late
        quotes are judged as they were. Candles derived from the replay,
        the open ones included, replace stored ones only where they differ.
        Where the history has lost quotes (its oldest rotated away, a damaged
        frame moved aside: seqs that skip), a candle spanning the loss is the
        stored one extended by the replayed quotes (:func:`_extended`), not
        a candle of the replayed quotes alone, and the kernel goes on from it.
        """
        derived: dict[tuple[str, int, int], KernelCandle] = {}
        losses = _Losses()
        replayed = 0
        batch: list[TopicRecord] = []
        for record in history:
            batch.append(record)
            if len(batch) == _REPLAY_BATCH:
                losses.see(batch)
                replayed += self._replay(batch, derived)
                batch = []
        if batch:
            losses.see(batch)
            replayed += self._replay(batch, derived)
        if not replayed:
            return
        self._derive(self._aggregator.take_open(), derived)
        by_series: dict[tuple[str, int], list[KernelCandle]] = {}
        for (key, t, _), candle in derived.items():
            by_series.setdefault((key, t), []).append(candle)
        per_tf: list[list[TopicRecord]] = [[] for _ in self.widths_ms]
        reseed: dict[str, list[KernelCandle]] = {}
        for (key, t), candles in by_series.items():
            stored = self._stored(context, key, t, [Candle._make(c).start_ms for c in candles])
            for raw in candles:
                candle = Candle._make(raw)
                kept = stored.get(candle.start_ms)
                if kept is not None and losses.touch(key, candle.start_ms):
                    extended = _extended(raw, kept)
                    if candle.is_open and extended != raw:
                        reseed.setdefault(key, []).append(extended)
                    raw, candle = extended, Candle._make(extended)
                if kept != (candle.open, candle.high, candle.low, candle.close, candle.ticks):
                    per_tf[t].append(self._record(raw, t))
        if reseed:
            self._hold(reseed, derived)
        for t, out in enumerate(per_tf):
            if out:
                context.publish(self.topics[t], out)
        log.info(
            "ohlc: state re-derived from %d quotes of the history%s; %d candles republished",
            replayed, losses.describe(), sum(map(len, per_tf)),
        )  # fmt: skip

    def _hold(self, extended: dict[str, list[KernelCandle]], derived: dict[tuple[str, int, int], KernelCandle]) -> None:
        """Make the kernel hold the ``extended`` open candles, with the other open ones of their keys as derived."""
        held: dict[str, dict[tuple[int, int], KernelCandle]] = {key: {} for key in extended}
        for (key, _, start), candle in derived.items():
            if key in held and candle[8]:
                held[key][(candle[1], start)] = candle
        for key, candles in extended.items():
            final = held[key]
            for candle in candles:
                final[(candle[1], candle[2])] = candle
            self._aggregator.forget(key)
            for (width, start), (_, _, _, open_, high, low, close, ticks, _) in sorted(final.items()):
                self._aggregator.seed(key, width, start, open_, high, low, close, ticks)

    def _replay(self, records: list[TopicRecord], derived: dict[tuple[str, int, int], KernelCandle]) -> int:
        """Apply a batch of history: like :meth:`process`, but candles are kept, not published."""
        applied = 0
        for part, keys, candles, _ in self._apply(records):
            self._derive(candles, derived)
            for key in keys:
                self._idle_order[key] = None
                self._idle_order.move_to_end(key)
            applied += len(part)
        return applied

    def _derive(self, candles: list[KernelCandle], derived: dict[tuple[str, int, int], KernelCandle]) -> None:
        tf_index = self._tf_index
        for candle in candles:
            key, timeframe_ms, start_ms = candle[:3]
            derived[(key, tf_index[timeframe_ms], start_ms)] = candle

    def _stored(self, context: RecoveryContext, key: str, t: int, starts: list[int]) -> dict[int, tuple[Any, ...]]:
        """``(open, high, low, close, ticks)`` of the stored candles of ``key`` at ``starts``, by bucket start."""
        topic = self.topics[t]
        found = context.query(topic, TopicQuery(key=key, from_ms=min(starts), to_ms=max(starts) + 1, limit=MAX_QUERY_LIMIT))
        records = list(found.records)
        if found.truncated:
            records = [r for start in starts for r in context.query(topic, TopicQuery(key=key, from_ms=start, to_ms=start + 1, limit=1)).records]
        return {r.ts_ms: (r.data["open"], r.data["high"], r.data["low"], r.data["close"], r.data["ticks"]) for r in records}
