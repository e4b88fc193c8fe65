"""The query engine ``plugins/storage/_index.py`` (``RecordIndex``) against the naive oracle of ``conftest.py``.

Hypothesis drives keys, time ranges, ``since_seq``, ``limit`` (small, so
answers truncate and the boundary group of equal ``ts_ms`` matters), upserts
of candles and ``capacity`` (batches larger than it take the shortcut that
skips records evicted at once). Timestamps come from a narrow range so that
many records share a ``ts_ms``.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from gauss_plugins.storage._index import RecordIndex
from hypothesis import given, settings
from hypothesis import strategies as st

from gauss.core import TopicRecord
from gauss.records import TopicQuery

KEYS = ["EURUSD", "BTC/USD", "ÄÖÜ", "X"]


def record(upsert: bool, seq: int, key: str, ts: int) -> TopicRecord:
    if upsert:  # a candle: a later version of (key, ts_ms) replaces the earlier
        data = {"symbol": key, "timeframe": "1s", "ts_ms": ts, "open": 1.0, "high": 2.0, "low": 0.5, "close": float(seq), "ticks": seq}
    else:
        data = {"symbol": key, "bid": float(seq), "ask": seq + 0.5, "bid_size": 1.0, "ask_size": 2.0, "ts_ms": ts}
    return TopicRecord(ts, key, data, seq)


def numbered(upsert: bool, batches: list[list[tuple[str, int]]]) -> list[list[TopicRecord]]:
    out, seq = [], 0
    for batch in batches:
        records = []
        for key, ts in batch:
            seq += 1
            records.append(record(upsert, seq, key, ts))
        out.append(records)
    return out


def view(records: Any) -> list[tuple[int, str, int, Any]]:
    return [(r.seq, r.key, r.ts_ms, r.data) for r in records]


@st.composite
def topic_queries(draw: st.DrawFn) -> TopicQuery:
    low, high = sorted((draw(st.integers(0, 14)), draw(st.integers(0, 14))))
    return TopicQuery(
        key=draw(st.none() | st.sampled_from(KEYS)),
        from_ms=draw(st.none() | st.just(low)),
        to_ms=draw(st.none() | st.just(high)),
        since_seq=draw(st.none() | st.integers(0, 130)),
        limit=draw(st.integers(1, 12)),
    )


batch_lists = st.lists(st.lists(st.tuples(st.sampled_from(KEYS), st.integers(0, 12)), max_size=25), max_size=6)


def assert_answers_like(index: RecordIndex, model: Any, queries: list[TopicQuery]) -> None:
    assert len(index) == len(model.records)
    assert view(index.records()) == view(model.records), "every record held, ascending seq"
    assert index.bounds() == model.bounds()
    for query in queries:
        got, truncated = index.query(query.key, query.from_ms, query.to_ms, query.since_seq, query.limit)
        want, want_truncated = model.query(query)
        assert view(got) == view(want), query
        assert truncated == want_truncated, query
    assert view(index.latest()) == view(model.latest())
    for key in KEYS:
        assert view(index.latest(key)) == view(model.latest(key))
        assert view(index.records_of(key)) == view(sorted((r for r in model.records if r.key == key), key=model.order))
        assert index.key_count(key) == sum(1 for r in model.records if r.key == key)
        assert index.has_key(key) == any(r.key == key for r in model.records)
    assert index.keys() == model.keys()
    assert sorted(index.key_names()) == [info.key for info in model.keys()]


@settings(max_examples=300, deadline=None)
@given(
    upsert=st.booleans(),
    capacity=st.none() | st.integers(1, 40),
    batches=batch_lists,
    queries=st.lists(topic_queries(), min_size=1, max_size=8),
    as_list=st.booleans(),
)
def test_answers_like_the_naive_model(
    naive_topic: Any, upsert: bool, capacity: int | None, batches: list[list[tuple[str, int]]], queries: list[TopicQuery], as_list: bool
) -> None:
    index = RecordIndex(upsert=upsert, capacity=capacity)
    model = naive_topic(upsert=upsert, capacity=capacity)
    last = 0
    for records in numbered(upsert, batches):
        index.add(records if as_list else iter(records))  # a list may take the beyond-capacity shortcut
        model.append(records)
        last = max([last, *(r.seq for r in records)])
        assert index.last_seq == last, "evicted and replaced records count too"
        if capacity is not None:
            assert len(index) <= capacity
        assert_answers_like(index, model, queries)


@settings(max_examples=200, deadline=None)
@given(
    upsert=st.booleans(),
    capacity=st.none() | st.integers(1, 40),
    batches=batch_lists,
    queries=st.lists(topic_queries(), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_adding_everything_again_in_any_order_changes_nothing(
    naive_topic: Any, upsert: bool, capacity: int | None, batches: list[list[tuple[str, int]]], queries: list[TopicQuery], seed: int
) -> None:
    """Idempotent replay: held seqs are skipped, older candle versions never win, evicted records are evicted again."""
    index = RecordIndex(upsert=upsert, capacity=capacity)
    model = naive_topic(upsert=upsert, capacity=capacity)
    every = []
    for records in numbered(upsert, batches):
        index.add(records)
        model.append(records)
        every.extend(records)
    replay = list(every)
    random.Random(seed).shuffle(replay)
    index.add(replay[: len(replay) // 2])
    index.add(iter(replay[len(replay) // 2 :]))
    assert_answers_like(index, model, queries)


def test_a_candle_update_takes_its_new_seq_and_orders_ties_by_seq() -> None:
    index = RecordIndex(upsert=True)
    index.add([record(True, 1, "B", 1000), record(True, 2, "A", 1000), record(True, 3, "A", 2000)])
    index.add([record(True, 4, "B", 1000)])  # B's candle at 1000 now comes after A's (seq 4 > 2)
    got, truncated = index.query()
    assert [(r.key, r.ts_ms, r.seq) for r in got] == [("A", 1000, 2), ("B", 1000, 4), ("A", 2000, 3)]
    assert not truncated
    got, truncated = index.query(limit=2)
    assert [(r.key, r.seq) for r in got] == [("B", 4), ("A", 3)] and truncated
    index.add([record(True, 1, "B", 1000)])  # the old version again: ignored
    assert [r.seq for r in index.records_of("B")] == [4]
    assert index.bounds() == (2, 4)


def test_since_seq_at_or_past_the_last_seq_is_empty_and_not_truncated() -> None:
    index = RecordIndex(upsert=False)
    index.add([record(False, seq, "X", 5) for seq in range(1, 11)])
    assert index.query(since_seq=10, limit=1) == ([], False)
    assert index.query(since_seq=99) == ([], False)
    got, truncated = index.query(since_seq=8, limit=1)
    assert [r.seq for r in got] == [10] and truncated


def test_a_batch_beyond_capacity_keeps_its_newest_records() -> None:
    index = RecordIndex(upsert=False, capacity=3)
    index.add([record(False, seq, "K", 100 - seq) for seq in range(1, 11)])
    assert [r.seq for r in index.records()] == [8, 9, 10]
    assert index.last_seq == 10
    assert [r.seq for r in index.query()[0]] == [10, 9, 8], "ascending ts_ms, not seq"


@pytest.mark.parametrize("bound", ["capacity", "max_per_key", "retention_ms", "max_keys"])
def test_bounds_below_one_are_refused(bound: str) -> None:
    with pytest.raises(ValueError, match=f"{bound} must be at least 1"):
        RecordIndex(upsert=False, **{bound: 0})


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="limit must be at least 1"):
        RecordIndex(upsert=False).query(limit=0)


@settings(max_examples=150, deadline=None)
@given(
    upsert=st.booleans(),
    max_per_key=st.integers(1, 6),
    capacity=st.none() | st.integers(1, 30),
    batches=batch_lists,
    queries=st.lists(topic_queries(), min_size=1, max_size=4),
)
def test_max_per_key_keeps_the_newest_ts_of_each_key(
    naive_topic: Any, upsert: bool, max_per_key: int, capacity: int | None, batches: list[list[tuple[str, int]]], queries: list[TopicQuery]
) -> None:
    """The oracle extended by the per-key bound: after each batch, each key it touched keeps its ``max_per_key`` latest by time."""
    index = RecordIndex(upsert=upsert, capacity=capacity, max_per_key=max_per_key)
    model = naive_topic(upsert=upsert)
    for records in numbered(upsert, batches):
        index.add(records)
        model.append(records)
        for key in {r.key for r in records}:
            mine = sorted((r for r in model.records if r.key == key), key=model.order)
            dropped = {r.seq for r in mine[: max(0, len(mine) - max_per_key)]}
            model.records = [r for r in model.records if r.seq not in dropped]
        if capacity is not None and len(model.records) > capacity:
            model.records = model.records[len(model.records) - capacity :]
        assert_answers_like(index, model, queries)
