"""The ohlc processor: candles, when they are published, late quotes, options."""

from __future__ import annotations

import random
from collections import defaultdict
from types import ModuleType
from typing import Any

import pytest
from gauss_plugins.stage.ohlc import DEFAULT_TIMEFRAMES, OhlcConfig, OhlcProcessor, parse_timeframe

from gauss import registry
from gauss.core import TopicRecord
from gauss.errors import ConfigError


def quote(symbol: str, ts: int, bid: float, ask: float | None = None) -> TopicRecord:
    ask = bid + 0.0002 if ask is None else ask
    data = {"symbol": symbol, "bid": bid, "ask": ask, "bid_size": 1.0, "ask_size": 1.0, "ts_ms": ts}
    return TopicRecord(ts, symbol, data)


def naive_candles(
    quotes: list[TopicRecord], labels: list[str], hold: int
) -> tuple[dict[tuple[str, str, int], dict[str, Any]], list[tuple[int, str]]]:
    """Candles by (label, symbol, start) and the late (quote index, label), one quote at a time."""
    candles: dict[tuple[str, str, int], dict[str, Any]] = {}
    newest: dict[tuple[str, str], int] = {}
    late: list[tuple[int, str]] = []
    for i, q in enumerate(quotes):
        price = (q.data["bid"] + q.data["ask"]) / 2
        for label in labels:
            width = parse_timeframe(label)
            start = q.ts_ms - q.ts_ms % width
            top = newest.get((label, q.key))
            if top is not None and start < top - (hold - 1) * width:
                late.append((i, label))
                continue
            newest[(label, q.key)] = start if top is None else max(top, start)
            c = candles.get((label, q.key, start))
            if c is None:
                candles[(label, q.key, start)] = {
                    "symbol": q.key, "timeframe": label, "ts_ms": start, "open": price, "high": price,
                    "low": price, "close": price, "ticks": 1, "_first": q.ts_ms, "_last": q.ts_ms,
                }
                continue
            c["high"] = max(c["high"], price)
            c["low"] = min(c["low"], price)
            if q.ts_ms < c["_first"]:
                c["_first"], c["open"] = q.ts_ms, price
            if q.ts_ms >= c["_last"]:
                c["_last"], c["close"] = q.ts_ms, price
            c["ticks"] += 1
    for c in candles.values():
        del c["_first"], c["_last"]
    return candles, late


def random_stream(rng: random.Random, count: int) -> list[TopicRecord]:
    symbols = ["EURUSD", "GBPUSD", "BTC/USD"]
    ts = 1_732_406_400_000 + rng.randrange(86_400_000)
    price = {s: 1.0 + rng.random() for s in symbols}
    quotes = []
    for _ in range(count):
        ts += rng.choice([0, 1, 7, 40, 300, 1200, 4000])
        symbol = rng.choice(symbols)
        price[symbol] *= 1 + rng.uniform(-0.001, 0.001)
        jitter = rng.choice([0] * 8 + [-500, -2500, -9000, -400_000])  # out-of-order and late quotes
        quotes.append(quote(symbol, ts + jitter, round(price[symbol], 6), round(price[symbol] + 0.0003, 6)))
    return quotes


@pytest.mark.parametrize("seed", [1, 2, 3, 20241124])
def test_published_candles_equal_a_naive_computation(context: Any, seed: int) -> None:
    rng = random.Random(seed)
    print("seed", seed)
    labels = ["1s", "5s", "1m", "3m", "1h", "1d"]
    hold = rng.choice([1, 2, 3])
    quotes = random_stream(rng, 3000)
    processor = OhlcProcessor(labels, hold_buckets=hold, late_topic="ohlc.late")
    processor.start(context)
    pos = 0
    while pos < len(quotes):
        size = rng.choice([1, 5, 50, 400])
        processor.process("quotes.raw", quotes[pos : pos + size], context)
        pos += size
        if rng.random() < 0.3:
            processor.flush(context)
    processor.stop(context)
    want, want_late = naive_candles(quotes, labels, hold)
    got: dict[tuple[str, str, int], dict[str, Any]] = {}
    for topic, batch in context.calls:
        if topic == "ohlc.late":
            continue
        label = topic.removeprefix("ohlc.")
        for r in batch:
            assert r.ts_ms == r.data["ts_ms"] and r.key == r.data["symbol"] and r.data["timeframe"] == label
            got[(label, r.key, r.ts_ms)] = r.data  # later versions replace earlier ones (upsert)
    assert got.keys() == want.keys()
    for ident, candle in want.items():
        assert got[ident] == pytest.approx(candle), ident
    late = [(r.data["quote"], r.data["timeframe"]) for r in context.records("ohlc.late")]
    assert late == [(quotes[i].data, label) for i, label in want_late]
    assert all(r.data["reason"] == "late" for r in context.records("ohlc.late"))
    counts = {label: sum(1 for _, lab in want_late if lab == label) for label in labels}
    assert processor.late_counts == counts
    assert sum(counts.values()) > 0, "the stream should exercise late quotes"


def test_a_batch_of_one_symbol_publishes_each_candle_at_most_once(context: Any) -> None:
    processor = OhlcProcessor()
    start = 1_732_406_400_000
    quotes = [quote("EURUSD", start + i * 37, 1.08 + i * 1e-5) for i in range(1000)]
    processor.process("quotes.raw", quotes, context)
    processor.flush(context)
    seen: set[tuple[str, str, int]] = set()
    published = 0
    for topic, batch in context.calls:
        for r in batch:
            ident = (topic, r.key, r.ts_ms)
            assert ident not in seen, f"{ident} published twice"
            seen.add(ident)
            published += 1
    # Quotes span 0 to 36.963 s of a day: 37 one-second candles, 8 five-second ones, one of each longer timeframe.
    assert published == 37 + 8 + 6
    assert {t for t, _ in context.calls} == {f"ohlc.{label}" for label in DEFAULT_TIMEFRAMES}


def test_open_candle_is_published_at_the_interval_only_when_it_changed(context: Any) -> None:
    processor = OhlcProcessor(["1m"], open_interval_ms=100)
    assert processor.flush_interval == pytest.approx(0.1)
    t0 = 1_732_406_400_000
    processor.process("quotes.raw", [quote("EURUSD", t0 + i, 1.0 + i) for i in range(100)], context)
    assert context.take() == [], "an open candle waits for the interval"
    processor.flush(context)
    (topic, batch), = context.take()
    assert topic == "ohlc.1m" and len(batch) == 1 and batch[0].data["ticks"] == 100
    processor.flush(context)
    assert context.take() == [], "an unchanged candle is not published again"
    processor.process("quotes.raw", [quote("EURUSD", t0 + 500, 2.0)], context)
    processor.flush(context)
    (_, batch), = context.take()
    assert batch[0].data["ticks"] == 101


def test_a_closing_bucket_publishes_its_last_version_right_away(context: Any) -> None:
    processor = OhlcProcessor(["1s"])
    processor.process("quotes.raw", [quote("EURUSD", 1000, 1.0), quote("EURUSD", 1500, 3.0)], context)
    assert context.take() == []
    processor.process("quotes.raw", [quote("EURUSD", 2100, 5.0)], context)
    (topic, batch), = context.take()
    assert topic == "ohlc.1s"
    assert batch[0].data == pytest.approx(
        {"symbol": "EURUSD", "timeframe": "1s", "ts_ms": 1000, "open": 1.0001, "high": 3.0001, "low": 1.0001, "close": 3.0001, "ticks": 2}
    )
    processor.stop(context)
    (topic, batch), = context.take()
    assert [r.ts_ms for r in batch] == [2000], "stop publishes the open candle"


def test_late_quotes_are_counted_per_timeframe_and_published_to_late_topic(context: Any) -> None:
    processor = OhlcProcessor(["1s", "5s"], hold_buckets=2, late_topic="quotes.late")
    processor.process("quotes.raw", [quote("EURUSD", 10_000, 1.0), quote("EURUSD", 12_500, 1.1)], context)
    context.take()
    late_quote = quote("EURUSD", 10_500, 9.0)
    held_quote = quote("EURUSD", 11_200, 1.2)
    processor.process("quotes.raw", [late_quote, held_quote], context)
    assert processor.late_counts == {"1s": 1, "5s": 0}
    late = context.records("quotes.late")
    assert [(r.ts_ms, r.key, r.data) for r in late] == [
        (10_500, "EURUSD", {"quote": late_quote.data, "timeframe": "1s", "reason": "late"})
    ]
    assert all(r.seq == 0 for r in late)
    # The held 1s bucket at 11000 took its quote and is published with the batch.
    assert [r.ts_ms for r in context.records("ohlc.1s")] == [11_000]


def test_without_late_topic_late_quotes_are_only_counted(context: Any) -> None:
    processor = OhlcProcessor(["1s"], hold_buckets=1)
    processor.process("quotes.raw", [quote("A", 5000, 1.0), quote("A", 4000, 1.0), quote("A", 3000, 1.0)], context)
    assert processor.late_counts == {"1s": 2}
    assert all(t == "ohlc.1s" for t, _ in context.calls)


def test_records_without_prices_are_skipped_and_counted(context: Any) -> None:
    processor = OhlcProcessor(["1s"])
    bad = [TopicRecord(1000, "A", {"text": "hello"}), TopicRecord(1000, "A", {"bid": "x", "ask": 1.0}), TopicRecord(1000, "A", None)]
    processor.process("t", [quote("A", 1000, 1.0), *bad, quote("A", 1200, 3.0)], context)
    processor.flush(context)
    (_, batch), = context.take()
    assert batch[0].data["ticks"] == 2
    assert processor.invalid_quotes == 3


def test_candles_go_to_the_output_prefix() -> None:
    processor = OhlcProcessor.from_config(OhlcConfig(timeframes=("3m",), output_prefix="bars/"))
    assert processor.topics == ["bars/3m"]
    assert processor.widths_ms == [180_000]


@pytest.mark.parametrize(
    ("label", "ms"), [("1s", 1000), ("5s", 5000), ("3m", 180_000), ("15m", 900_000), ("4h", 14_400_000), ("1d", 86_400_000), ("2d", 172_800_000)]
)
def test_parse_timeframe(label: str, ms: int) -> None:
    assert parse_timeframe(label) == ms


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"timeframes": ["1x"]}, "timeframes: bad timeframe '1x'"),
        ({"timeframes": ["0s"]}, "timeframes: bad timeframe '0s'"),
        ({"timeframes": ["m"]}, "timeframes: bad timeframe 'm'"),
        ({"timeframes": ["1m", "60s"]}, "timeframes: '60s' and '1m' are the same width"),
        ({"timeframes": []}, "timeframes: must list at least one"),
        ({"timeframes": "1m"}, "timeframes: Expected array, got str"),
        ({"timeframes": ["1m", 5]}, r"timeframes\[1\]: Expected str, got int"),
        ({"hold_buckets": 0}, "hold_buckets: Expected int >= 1, got 0"),
        ({"open_interval_ms": 0}, "open_interval_ms: Expected int >= 1, got 0"),
        ({"max_keys": 0}, "max_keys: Expected int >= 1, got 0"),
        ({"late_topic": ""}, "late_topic: Expected str of length >= 1"),
        ({"output_prefix": 1}, "output_prefix: Expected str, got int"),
        ({"timeframe": ["1m"]}, "timeframe: unknown option"),
    ],
)
def test_bad_options_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.create("processor", {"type": "ohlc", **table})


def test_defaults_through_the_registry() -> None:
    processor = registry.create("processor", {"type": "ohlc"})
    assert isinstance(processor, OhlcProcessor)
    assert processor.labels == DEFAULT_TIMEFRAMES
    assert processor.topics[0] == "ohlc.1s" and processor.topics[-1] == "ohlc.1d"
    assert processor.flush_interval == pytest.approx(0.25)
    assert processor.hold_buckets == 2 and processor.late_topic is None
    assert processor.late_counts == dict.fromkeys(DEFAULT_TIMEFRAMES, 0)


def test_many_symbols_publish_grouped_per_timeframe(context: Any) -> None:
    processor = OhlcProcessor(["1s", "1m"])
    quotes = [quote(f"S{i % 50}", 1_732_406_400_000 + i, 1.0) for i in range(500)]
    processor.process("q", quotes, context)
    processor.flush(context)
    per_topic = defaultdict(int)
    for topic, batch in context.calls:
        per_topic[topic] += 1
        assert len({(r.key, r.ts_ms) for r in batch}) == len(batch)
    assert per_topic == {"ohlc.1s": 1, "ohlc.1m": 1}
    assert len(context.records("ohlc.1s")) == 50


def test_a_backlog_of_many_symbols_publishes_each_symbols_candles_together_in_time_order(context: Any) -> None:
    """A storage stores a publish in slices and writes a key's records of a slice at once: interleaved, one write a candle."""
    processor = OhlcProcessor(["1s", "5s"])
    symbols = [f"S{i:03d}" for i in range(200)]
    quotes = [quote(symbols[i % 200], 1_732_406_400_000 + i * 5, 1.0 + i % 7) for i in range(40_000)]  # each symbol's next quote 1 s later
    processor.process("q", quotes, context)
    for topic, batch in context.take():
        runs = [key for i, key in enumerate(r.key for r in batch) if i == 0 or batch[i - 1].key != key]
        assert len(runs) == len(set(runs)), f"{topic}: a symbol's candles are split across the batch"
        for key in set(runs):
            starts = [r.ts_ms for r in batch if r.key == key]
            assert starts == sorted(starts) and len(starts) == len(set(starts))
        assert len(batch) > len(symbols)  # a backlog: several closed candles a symbol

class CandleContext:
    """A RecoveryContext over plain dicts: candle topics upsert by (key, ts_ms)."""

    def __init__(self) -> None:
        self.topics: dict[str, dict[tuple[str, int], dict[str, Any]]] = defaultdict(dict)
        self.published: list[tuple[str, TopicRecord]] = []

    def publish(self, topic: str, records: Any) -> None:
        for record in records:
            self.published.append((topic, record))
            self.topics[topic][(record.key, record.ts_ms)] = record.data

    def query(self, topic: str, query: Any, /) -> Any:
        from gauss.records import QueryResult

        found = [TopicRecord(ts, key, data, 1) for (key, ts), data in self.topics[topic].items() if query.matches(TopicRecord(ts, key, data, 1))]
        found.sort(key=lambda r: r.ts_ms)
        return QueryResult(found[-query.limit :], len(found) > query.limit)


def test_symbols_beyond_max_keys_evict_the_idle_longest_after_publishing_its_open_candle() -> None:
    processor = OhlcProcessor(["1m"], max_keys=2)
    context = CandleContext()
    base = 1_732_406_400_000
    processor.process("q", [quote("A", base, 1.0), quote("B", base + 1, 2.0)], context)
    processor.process("q", [quote("A", base + 2, 1.5)], context)  # B is now idle longest
    assert context.published == []
    processor.process("q", [quote("C", base + 3, 3.0)], context)
    assert [(t, r.key, r.data["ticks"]) for t, r in context.published] == [("ohlc.1m", "B", 1)]
    assert processor.evicted_keys == 1 and processor._aggregator.key_count == 2
    processor.process("q", [quote("B", base + 4, 5.0)], context)  # B comes back, A is evicted
    processor.flush(context)
    candles = context.topics["ohlc.1m"]
    assert candles[("A", base)]["ticks"] == 2
    assert processor.evicted_keys == 2


def test_a_symbol_back_after_eviction_extends_its_stored_candles(kernels: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """An evicted symbol's next quote in the same bucket used to replace its stored candle with one of itself."""
    from gauss_plugins.stage import ohlc

    monkeypatch.setattr(ohlc, "OhlcAggregator", kernels.OhlcAggregator)
    labels = ["1s", "1m", "1d"]
    processor = OhlcProcessor(labels, max_keys=1)
    context = CandleContext()
    base = 1_732_406_400_000
    stream = [quote("A", base, 1.0), quote("B", base + 10, 2.0), quote("A", base + 20, 3.0), quote("B", base + 1_500, 0.5)]
    stream += [quote("A", base + 61_000, 4.0), quote("B", base + 61_010, 2.5), quote("A", base + 61_020, 0.25)]
    for record in stream:  # every quote evicts the other symbol
        processor.process("q", [record], context)
    processor.flush(context)
    assert processor.evicted_keys == len(stream) - 1
    want, _ = naive_candles(stream, labels, 2)
    got = {(t.removeprefix("ohlc."), key, ts): data for t, series in context.topics.items() for (key, ts), data in series.items()}
    assert got == want
    assert got[("1d", "A", base)]["ticks"] == 4 and got[("1d", "A", base)]["open"] == pytest.approx(1.0001)


def test_recover_rebuilds_state_and_republishes_only_what_was_lost() -> None:
    rng = random.Random(7)
    stream = random_stream(rng, 400)
    labels = ["1s", "1m"]
    survivor = OhlcProcessor(labels)
    context = CandleContext()
    for i in range(0, 300, 25):
        survivor.process("q", stream[i : i + 25], context)
    survivor.flush(context)
    survivor.process("q", stream[300:350], context)  # the crash: these candles never left the processor
    published_before = len(context.published)
    restarted = OhlcProcessor(labels)
    restarted.recover(iter(stream[:350]), context)
    restarted.flush(context)  # the re-derived open candles go out like live ones
    republished = context.published[published_before:]
    assert republished, "the candles of the last batch were lost and must be re-derived"
    assert len(republished) < len({(t, r.key, r.ts_ms) for t, r in context.published[:published_before]})
    restarted.process("q", stream[350:], context)
    restarted.flush(context)
    want, _ = naive_candles(stream, labels, 2)
    got = {(t.removeprefix("ohlc."), key, ts): data for t, series in context.topics.items() for (key, ts), data in series.items()}
    assert got == want


def numbered_stream(count: int) -> list[TopicRecord]:
    """Quotes of three symbols in ts order, numbered 1.. as a journal replays them."""
    rng = random.Random(11)
    base, quotes = 1_732_406_400_000, []
    for i in range(count):
        record = quote(["A", "B", "C"][i % 3], base + 700 * i, round(1.0 + rng.random(), 6))
        quotes.append(TopicRecord(record.ts_ms, record.key, record.data, i + 1))
    return quotes


def candles_in(context: CandleContext) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(t.removeprefix("ohlc."), key, ts): data for t, series in context.topics.items() for (key, ts), data in series.items()}


@pytest.mark.parametrize("lost", ["rotated", "damaged"])
def test_a_history_that_lost_quotes_extends_the_stored_candles(lost: str) -> None:
    """A rotated or damaged tick log: the restart extends the stored 1h candle, and live quotes go on from it.

    It used to overwrite the stored candle with one of the quotes left (ticks 500 -> 100).
    """
    stream = numbered_stream(600)
    labels = ["1m", "1h"]
    survivor = OhlcProcessor(labels)
    context = CandleContext()
    for i in range(0, 450, 50):
        survivor.process("q", stream[i : i + 50], context)
    survivor.stop(context)  # a clean stop: every candle stored
    history = stream[300:450] if lost == "rotated" else stream[:200] + stream[201:450]
    restarted = OhlcProcessor(labels)
    restarted.recover(iter(history), context)
    restarted.process("q", stream[450:], context)
    restarted.stop(context)
    want, _ = naive_candles(stream, labels, 2)
    assert candles_in(context) == want
    assert want[("1h", "A", 1_732_406_400_000)]["ticks"] == 200


def test_a_crash_with_a_rotated_history_keeps_at_least_the_stored_candles() -> None:
    """After SIGKILL the stored candle lacks the last interval's quotes: ticks may fall short of them, never below what was stored."""
    stream = numbered_stream(450)
    survivor = OhlcProcessor(["1h"])
    context = CandleContext()
    for i in range(0, 400, 50):
        survivor.process("q", stream[i : i + 50], context)
    survivor.flush(context)
    stored_ticks = {key: data["ticks"] for (key, _), data in context.topics["ohlc.1h"].items()}
    survivor.process("q", stream[400:], context)  # the crash: never published
    restarted = OhlcProcessor(["1h"])
    restarted.recover(iter(stream[300:]), context)
    restarted.flush(context)
    want, _ = naive_candles(stream, ["1h"], 2)
    for (key, _), data in context.topics["ohlc.1h"].items():
        assert stored_ticks[key] <= data["ticks"] <= want[("1h", key, 1_732_406_400_000)]["ticks"]
        assert data["close"] == want[("1h", key, 1_732_406_400_000)]["close"]
        assert data["open"] == want[("1h", key, 1_732_406_400_000)]["open"]


class RefusingKernel:
    """The real kernel behind a fault: it refuses (before touching any state) every batch holding a ``POISON`` key."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.refused = 0

    def update(self, keys: list[str], ts_ms: Any, bids: Any, asks: Any) -> Any:
        if "POISON" in keys:
            self.refused += 1
            raise OverflowError("the kernel cannot take this record")
        return self.kernel.update(keys, ts_ms, bids, asks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kernel, name)


def candles_of(context: Any) -> dict[tuple[str, str, int], dict[str, Any]]:
    got: dict[tuple[str, str, int], dict[str, Any]] = {}
    for topic, batch in context.calls:
        for r in batch:
            got[(topic.removeprefix("ohlc."), r.key, r.ts_ms)] = r.data
    return got


@pytest.mark.parametrize("seed", [5, 6])
def test_a_record_the_kernel_refuses_costs_only_itself(context: Any, seed: int) -> None:
    rng = random.Random(seed)
    print("seed", seed)
    quotes = random_stream(rng, 2000)
    poisoned = list(quotes)
    for at in sorted(rng.sample(range(len(quotes)), 25), reverse=True):
        poisoned.insert(at, quote("POISON", quotes[at].ts_ms, 1.0))
    labels = ["1s", "1m", "1h"]
    processor = OhlcProcessor(labels, hold_buckets=2)
    kernel = processor._aggregator = RefusingKernel(processor._aggregator)
    pos = 0
    while pos < len(poisoned):
        size = rng.choice([1, 7, 100, 500])
        processor.process("quotes.raw", poisoned[pos : pos + size], context)
        pos += size
    processor.stop(context)
    want, _ = naive_candles(quotes, labels, 2)
    got = candles_of(context)
    assert got.keys() == want.keys()
    for ident, candle in want.items():
        assert got[ident] == pytest.approx(candle), ident
    assert processor.invalid_quotes == 25 and kernel.refused > 25


def test_a_price_numpy_cannot_take_skips_that_quote_not_its_batch(context: Any) -> None:
    processor = OhlcProcessor(["1s"])
    huge = TopicRecord(1100, "A", {"bid": 10**400, "ask": 1.0})  # a number, but no double: the columns refuse it
    processor.process("t", [quote("A", 1000, 1.0), huge, quote("A", 1200, 3.0), quote("B", 1300, 2.0)], context)
    processor.flush(context)
    got = candles_of(context)
    assert got[("1s", "A", 1000)]["ticks"] == 2 and got[("1s", "A", 1000)]["close"] == pytest.approx(3.0001)
    assert got[("1s", "B", 1000)]["ticks"] == 1
    assert processor.invalid_quotes == 1


def test_recovery_skips_a_record_the_kernel_refuses_and_keeps_the_rest() -> None:
    stream = random_stream(random.Random(8), 300)
    history = [*stream[:100], TopicRecord(stream[100].ts_ms, "A", {"bid": 10**400, "ask": 1.0}), *stream[100:]]
    restarted = OhlcProcessor(["1m"])
    context = CandleContext()
    restarted.recover(iter(history), context)
    restarted.flush(context)
    want, _ = naive_candles(stream, ["1m"], 2)
    got = {(t.removeprefix("ohlc."), key, ts): data for t, series in context.topics.items() for (key, ts), data in series.items()}
    assert got == want and restarted.skipped_records == 1


def test_a_bucket_at_the_epoch_makes_no_candle(context: Any) -> None:
    """SPEC 1: no record carries ts_ms 0, so the first second (or day) after 1970-01-01 has no candle."""
    processor = OhlcProcessor(["1s", "1d"])
    processor.process("quotes.raw", [quote("EARLY", 1, 1.0), quote("EARLY", 500, 2.0), quote("EARLY", 1_200, 3.0)], context)
    processor.flush(context)
    published = [(t, r.ts_ms, r.data["ticks"]) for t, batch in context.take() for r in batch]
    assert published == [("ohlc.1s", 1_000, 1)]  # the 1s bucket at 0 and the 1d bucket at 0 are skipped
    assert processor.epoch_candles == 2
