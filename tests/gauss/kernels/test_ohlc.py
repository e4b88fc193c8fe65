"""OHLC kernel (SPEC section 1) against a naive computation written here.

The model keeps every applied quote of every bucket and recomputes candles
from scratch: mid price, bucket start ``ts - ts % width``, open = earliest
``ts_ms`` (first arrival on ties), close = latest (last arrival on ties).
A quote is late when its bucket starts before
``newest_start - (hold_buckets - 1) * width`` of its key and timeframe.
"""

from __future__ import annotations

from calendar import timegm
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SECOND, MINUTE, HOUR, DAY = 1000, 60_000, 3_600_000, 86_400_000
# Real labels (1s, 5s, 3m, 1h, 1d) and arbitrary widths, so buckets both split and merge.
TIMEFRAMES = [7, 10, SECOND, 5 * SECOND, 3 * MINUTE, HOUR, DAY]
PRICES = [1.0, 1.5, 2.25, 0.5, 1.75, 3.0]


class NaiveOhlc:
    def __init__(self, timeframes: list[int], hold: int) -> None:
        self.timeframes = timeframes
        self.hold = hold
        self.quotes: dict[tuple[str, int, int], list[tuple[int, int, float]]] = {}
        self.newest: dict[tuple[str, int], int] = {}
        self.arrival = 0
        self.late_counts = [0] * len(timeframes)

    def candle(self, key: str, t: int, start: int) -> tuple[float, float, float, float, int]:
        quotes = self.quotes[(key, t, start)]
        prices = [p for _, _, p in quotes]
        first = min(quotes, key=lambda q: (q[0], q[1]))
        last = max(quotes, key=lambda q: (q[0], q[1]))
        return (first[2], max(prices), min(prices), last[2], len(quotes))

    def update(self, batch: list[tuple[str, int, float, float]]) -> tuple[list[Any], list[tuple[int, int]]]:
        changed: list[tuple[str, int, int]] = []
        late = []
        for i, (key, ts, bid, ask) in enumerate(batch):
            self.arrival += 1
            price = (bid + ask) / 2.0
            for t, width in enumerate(self.timeframes):
                start = ts - ts % width
                newest = max(self.newest.get((key, t), start), start)
                if start < newest - (self.hold - 1) * width:
                    self.late_counts[t] += 1
                    late.append((i, t))
                    continue
                self.newest[(key, t)] = newest
                self.quotes.setdefault((key, t, start), []).append((ts, self.arrival, price))
                if (key, t, start) not in changed:
                    changed.append((key, t, start))
        candles = [
            (key, self.timeframes[t], start, *self.candle(key, t, start), self.newest[(key, t)] == start)
            for key, t, start in changed
        ]
        return candles, late


def clock_steps() -> st.SearchStrategy[int]:
    """Steps of a quote clock: repeats, small jitter both ways, jumps of minutes to a day."""
    return st.one_of(
        st.just(0),
        st.integers(min_value=-30, max_value=30),
        st.integers(min_value=-5 * SECOND, max_value=5 * SECOND),
        st.sampled_from([-4 * MINUTE, 3 * MINUTE, -HOUR, HOUR, DAY, -DAY, 2 * DAY]),
    )


quote_batches = st.lists(
    st.lists(
        st.tuples(st.sampled_from(["EURUSD", "BTC/USD", "X"]), clock_steps(), st.integers(0, 5), st.integers(0, 5)),
        max_size=15,
    ),
    min_size=1,
    max_size=8,
)


def as_quotes(raw: list[list[tuple[str, int, int, int]]], start: int) -> list[list[tuple[str, int, float, float]]]:
    clock = start
    batches = []
    for raw_batch in raw:
        batch = []
        for key, step, bid, ask in raw_batch:
            clock += step
            batch.append((key, clock, PRICES[bid], PRICES[ask]))
        batches.append(batch)
    return batches


def feed(agg: Any, batch: list[tuple[str, int, float, float]]) -> tuple[list[Any], list[Any]]:
    return agg.update([q[0] for q in batch], [q[1] for q in batch], [q[2] for q in batch], [q[3] for q in batch])


@PROPERTY
@given(
    timeframes=st.lists(st.sampled_from(TIMEFRAMES), min_size=1, max_size=4, unique=True),
    hold=st.integers(min_value=1, max_value=3),
    raw=quote_batches,
    start=st.integers(min_value=1_700_000_000_000, max_value=1_800_000_000_000),
)
def test_ohlc_matches_naive_model(
    kernels: ModuleType, timeframes: list[int], hold: int, raw: list[Any], start: int
) -> None:
    agg = kernels.OhlcAggregator(timeframes, hold_buckets=hold)
    model = NaiveOhlc(timeframes, hold)
    for batch in as_quotes(raw, start):
        assert feed(agg, batch) == model.update(batch)
        assert agg.late_counts == model.late_counts
        assert agg.batch_keys == list(dict.fromkeys(q[0] for q in batch)), "the batch's distinct keys, first seen first"
    for key, t, start_ms in model.quotes:
        if model.newest[(key, t)] == start_ms:
            assert agg.candle(key, timeframes[t], start_ms) == model.candle(key, t, start_ms)


@PROPERTY
@given(
    timeframes=st.lists(st.sampled_from(TIMEFRAMES), min_size=1, max_size=4, unique=True),
    hold=st.integers(min_value=1, max_value=3),
    raw=quote_batches,
)
def test_compiled_ohlc_agrees_with_twin(
    twins: tuple[ModuleType, ModuleType], timeframes: list[int], hold: int, raw: list[Any]
) -> None:
    compiled, pure = (m.OhlcAggregator(timeframes, hold) for m in twins)
    for batch in as_quotes(raw, 1_732_406_400_000):
        assert feed(compiled, batch) == feed(pure, batch)
    assert compiled.late_counts == pure.late_counts


def test_day_buckets_start_at_midnight_utc(kernels: ModuleType) -> None:
    ts = timegm((2024, 11, 24, 13, 45, 7)) * 1000 + 123
    agg = kernels.OhlcAggregator([DAY, 3 * MINUTE])
    candles, late = agg.update(["EURUSD"], [ts], [1.0], [2.0])
    assert late == []
    assert candles == [
        ("EURUSD", DAY, timegm((2024, 11, 24, 0, 0, 0)) * 1000, 1.5, 1.5, 1.5, 1.5, 1, True),
        ("EURUSD", 3 * MINUTE, timegm((2024, 11, 24, 13, 45, 0)) * 1000, 1.5, 1.5, 1.5, 1.5, 1, True),
    ]


def test_late_quote_updates_held_bucket_and_older_is_counted(kernels: ModuleType) -> None:
    agg = kernels.OhlcAggregator([SECOND], hold_buckets=2)
    agg.update(["A", "A"], [1_500, 2_500], [1.0, 3.0], [1.0, 3.0])
    candles, late = agg.update(["A", "A"], [1_100, 200], [0.5, 9.0], [0.5, 9.0])
    # 1_100 lands in the held 1s bucket at 1_000 and becomes its open; 200 is too old.
    assert candles == [("A", SECOND, 1_000, 0.5, 1.0, 0.5, 1.0, 2, False)]
    assert late == [(1, 0)] and agg.late_counts == [1]
    assert agg.candle("A", SECOND, 0) is None


def test_ties_open_first_arrival_close_last_arrival(kernels: ModuleType) -> None:
    agg = kernels.OhlcAggregator([SECOND])
    candles, _ = agg.update(["A"] * 3, [5, 5, 5], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert candles == [("A", SECOND, 0, 1.0, 3.0, 1.0, 3.0, 3, True)]


def test_bucket_changed_then_closed_in_one_batch_is_reported_closed(kernels: ModuleType) -> None:
    agg = kernels.OhlcAggregator([10], hold_buckets=1)
    candles, _ = agg.update(["A", "A", "A"], [1, 12, 25], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert [(c[2], c[8]) for c in candles] == [(0, False), (10, False), (20, True)]


def test_update_records_reads_quote_records(kernels: ModuleType) -> None:
    agg = kernels.OhlcAggregator([SECOND])
    records = [kernels.TopicRecord(10, "A", {"bid": 1.0, "ask": 2.0}), kernels.TopicRecord(20, "A", {"bid": 2.0, "ask": 3.0})]
    assert agg.update_records(records) == ([("A", SECOND, 0, 1.5, 2.5, 1.5, 2.5, 2, True)], [])


def test_ohlc_refuses_bad_arguments(kernels: ModuleType) -> None:
    with pytest.raises(ValueError):
        kernels.OhlcAggregator([])
    with pytest.raises(ValueError):
        kernels.OhlcAggregator([0])
    with pytest.raises(ValueError):
        kernels.OhlcAggregator([SECOND], hold_buckets=0)
    agg = kernels.OhlcAggregator([SECOND])
    with pytest.raises(ValueError, match="length"):
        agg.update(["A"], [1, 2], [1.0], [1.0])
    with pytest.raises(ValueError):
        agg.candle("A", MINUTE, 0)
    assert agg.update([], [], [], []) == ([], [])
    assert agg.timeframes_ms == [SECOND] and agg.hold_buckets == 2


class ForgettingNaiveOhlc(NaiveOhlc):
    def forget(self, key: str) -> bool:
        held = any(k == key for k, _ in self.newest)
        self.quotes = {slot: q for slot, q in self.quotes.items() if slot[0] != key}
        self.newest = {slot: n for slot, n in self.newest.items() if slot[0] != key}
        return held


@PROPERTY
@given(
    timeframes=st.lists(st.sampled_from(TIMEFRAMES), min_size=1, max_size=3, unique=True),
    hold=st.integers(min_value=1, max_value=3),
    raw=quote_batches,
    forgets=st.lists(st.sampled_from(["EURUSD", "BTC/USD", "X", "NEVER"]), max_size=8),
)
def test_forgotten_key_starts_afresh_and_others_are_untouched(
    kernels: ModuleType, timeframes: list[int], hold: int, raw: list[Any], forgets: list[str]
) -> None:
    agg = kernels.OhlcAggregator(timeframes, hold_buckets=hold)
    model = ForgettingNaiveOhlc(timeframes, hold)
    for i, batch in enumerate(as_quotes(raw, 1_732_406_400_000)):
        assert feed(agg, batch) == model.update(batch)
        assert agg.batch_keys == list(dict.fromkeys(q[0] for q in batch)), "forgotten and reused key ids are seen again"
        if i < len(forgets):
            assert agg.forget(forgets[i]) == model.forget(forgets[i])
        assert agg.key_count == len({key for key, _ in model.newest})


def test_forgotten_key_ids_are_reused_without_mixing_state(twins: tuple[ModuleType, ModuleType]) -> None:
    for kernels in twins:
        agg = kernels.OhlcAggregator([SECOND], hold_buckets=1)
        for n in range(50):
            key = f"S{n}"
            agg.update([key], [1_732_406_400_000 + n], [1.0 + n], [1.0 + n])
            if n:
                assert agg.forget(f"S{n - 1}") is True
        assert agg.key_count == 1
        assert agg.forget("S0") is False
        assert agg.candle("S49", SECOND, 1_732_406_400_000) == (50.0, 50.0, 50.0, 50.0, 1)


def held_candles(agg: Any, model: NaiveOhlc, key: str) -> list[tuple[int, int, tuple[float, float, float, float, int]]]:
    """``(timeframe_ms, start_ms, candle)`` of every bucket the kernel holds for ``key`` (what a candle topic stores)."""
    held = []
    for k, t, start in model.quotes:
        candle = agg.candle(key, model.timeframes[t], start) if k == key else None
        if candle is not None:
            held.append((model.timeframes[t], start, candle))
    return held


@PROPERTY
@given(
    timeframes=st.lists(st.sampled_from(TIMEFRAMES), min_size=1, max_size=3, unique=True),
    hold=st.integers(min_value=1, max_value=3),
    raw=st.lists(
        st.lists(st.tuples(st.sampled_from(["EURUSD", "BTC/USD", "X"]), st.integers(0, 5 * SECOND), st.integers(0, 5), st.integers(0, 5)), max_size=15),
        min_size=1,
        max_size=8,
    ),
    forgets=st.lists(st.sampled_from(["EURUSD", "BTC/USD", "X"]), max_size=8),
)
def test_a_key_forgotten_and_seeded_with_its_candles_goes_on_as_if_never_forgotten(
    kernels: ModuleType, timeframes: list[int], hold: int, raw: list[Any], forgets: list[str]
) -> None:
    """Quotes in time order: seeding a forgotten key with the candles it held loses nothing."""
    agg = kernels.OhlcAggregator(timeframes, hold_buckets=hold)
    model = NaiveOhlc(timeframes, hold)
    for i, batch in enumerate(as_quotes(raw, 1_732_406_400_000)):
        assert feed(agg, batch) == model.update(batch)
        if i < len(forgets):
            key = forgets[i]
            stored = held_candles(agg, model, key)
            agg.forget(key)
            for width, start, candle in reversed(stored):  # any order is taken
                assert agg.seed(key, width, start, *candle) is True
            assert agg.key_count == len({k for k, _ in model.newest})
            for width, start, candle in stored:
                assert agg.seed(key, width, start, *candle) is False  # held already
                assert agg.candle(key, width, start) == candle


@PROPERTY
@given(
    timeframes=st.lists(st.sampled_from(TIMEFRAMES), min_size=1, max_size=3, unique=True),
    hold=st.integers(min_value=1, max_value=3),
    raw=quote_batches,
    seeds=st.lists(
        st.tuples(
            st.sampled_from(["EURUSD", "Y"]), st.integers(-3, 3), st.sampled_from([0, 0, 0, 1, -7]), st.integers(0, 5), st.integers(1, 9)
        ),
        max_size=10,
    ),
)
def test_compiled_seed_agrees_with_twin(
    twins: tuple[ModuleType, ModuleType], timeframes: list[int], hold: int, raw: list[Any], seeds: list[Any]
) -> None:
    compiled, pure = (m.OhlcAggregator(timeframes, hold) for m in twins)
    base = 1_732_406_400_000
    for i, batch in enumerate(as_quotes(raw, base)):
        assert feed(compiled, batch) == feed(pure, batch)
        for key, offset, skew, price, ticks in seeds[i : i + 2]:
            width = timeframes[0]
            start = base - base % width + offset * width + skew  # a skew puts it off the grid: refused
            args = (key, width, start, PRICES[price], PRICES[price] + 1, PRICES[price] - 1, PRICES[price], ticks)
            assert compiled.seed(*args) == pure.seed(*args)
    assert compiled.key_count == pure.key_count


def test_seed_refuses_a_candle_off_the_timeframe_grid(kernels: ModuleType) -> None:
    agg = kernels.OhlcAggregator([SECOND])
    assert agg.seed("A", SECOND, 1_500, 1.0, 1.0, 1.0, 1.0, 3) is False
    candles, _ = agg.update(["A"], [1_700], [2.0], [2.0])  # a quote after it opens its own bucket on the grid
    assert [(c[2], c[3], c[7]) for c in candles] == [(1_000, 2.0, 1)]


def test_seed_refuses_a_candle_without_ticks(kernels: ModuleType) -> None:
    agg = kernels.OhlcAggregator([SECOND])
    with pytest.raises(ValueError, match="at least one tick"):
        agg.seed("A", SECOND, 0, 1.0, 1.0, 1.0, 1.0, 0)


@PROPERTY
@given(
    timeframes=st.lists(st.sampled_from(TIMEFRAMES), min_size=1, max_size=4, unique=True),
    hold=st.integers(min_value=1, max_value=3),
    raw=quote_batches,
    takes=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_coalesced_open_candles_end_where_every_change_reported_ends(
    kernels: ModuleType, timeframes: list[int], hold: int, raw: list[Any], takes: list[bool]
) -> None:
    """``coalesce_open`` reports fewer versions, never another last one, and never an open candle from update."""
    every = kernels.OhlcAggregator(timeframes, hold)
    coalesced = kernels.OhlcAggregator(timeframes, hold, coalesce_open=True)
    last_every: dict[tuple[str, int, int], Any] = {}
    last_coalesced: dict[tuple[str, int, int], Any] = {}
    for i, batch in enumerate(as_quotes(raw, 1_732_406_400_000)):
        all_changes, late = feed(every, batch)
        reported, coalesced_late = feed(coalesced, batch)
        assert coalesced_late == late
        assert not any(c[-1] for c in reported)
        assert {c for c in all_changes if not c[-1]} <= set(reported)
        if takes[i]:
            opened = coalesced.take_open()
            assert all(c[-1] for c in opened) and len({c[:3] for c in opened}) == len(opened)
            reported += opened
        last_every.update((c[:3], c[3:8]) for c in all_changes)
        last_coalesced.update((c[:3], c[3:8]) for c in reported)
    last_coalesced.update((c[:3], c[3:8]) for c in coalesced.take_open())
    assert last_coalesced == last_every
    assert coalesced.take_open() == []


@PROPERTY
@given(
    timeframes=st.lists(st.sampled_from(TIMEFRAMES), min_size=1, max_size=3, unique=True),
    hold=st.integers(min_value=1, max_value=3),
    raw=quote_batches,
    steps=st.lists(st.sampled_from(["take", "EURUSD", "X", "forget EURUSD", "forget X", "seed Y"]), min_size=8, max_size=8),
)
def test_compiled_coalescing_agrees_with_twin(
    twins: tuple[ModuleType, ModuleType], timeframes: list[int], hold: int, raw: list[Any], steps: list[str]
) -> None:
    compiled, pure = (m.OhlcAggregator(timeframes, hold, coalesce_open=True) for m in twins)
    base = 1_732_406_400_000
    for i, batch in enumerate(as_quotes(raw, base)):
        assert feed(compiled, batch) == feed(pure, batch)
        step = steps[i]
        if step == "take":
            assert compiled.take_open() == pure.take_open()
        elif step.startswith("forget "):
            key = step.removeprefix("forget ")
            assert compiled.take_open(key) == pure.take_open(key)
            assert compiled.forget(key) == pure.forget(key)
        elif step == "seed Y":
            args = ("Y", timeframes[0], base - base % timeframes[0], 1.0, 2.0, 0.5, 1.5, 3)
            assert compiled.seed(*args) == pure.seed(*args)
        else:
            assert compiled.take_open(step) == pure.take_open(step)
    assert compiled.take_open() == pure.take_open()
