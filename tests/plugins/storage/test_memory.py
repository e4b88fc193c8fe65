"""The memory storage against a naive model, per data format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gauss_plugins.storage.memory import MemoryConfig, MemoryStorage
from hypothesis import given, settings
from hypothesis import strategies as st

from gauss import registry
from gauss.core import TopicRecord
from gauss.errors import ConfigError
from gauss.records import DataFormat, TopicQuery

KEYS = ["EURUSD", "BTC/USD", "ÄÖÜ", "X"]


def quote(seq: int, key: str, ts: int, bid: float = 1.0) -> TopicRecord:
    data = {"symbol": key, "bid": bid, "ask": bid + 0.5, "bid_size": 1.0, "ask_size": 2.0, "ts_ms": ts}
    return TopicRecord(ts, key, data, seq)


def candle(seq: int, key: str, ts: int, close: float = 1.0) -> TopicRecord:
    data = {"symbol": key, "timeframe": "1s", "ts_ms": ts, "open": 1.0, "high": 2.0, "low": 0.5, "close": close, "ticks": seq}
    return TopicRecord(ts, key, data, seq)


def dicts(records: list[TopicRecord]) -> list[dict[str, Any]]:
    return [r.as_dict() for r in records]


def make_record(fmt: DataFormat, seq: int, key: str, ts: int) -> TopicRecord:
    if fmt is DataFormat.QUOTE:
        return quote(seq, key, ts, bid=float(seq))
    if fmt is DataFormat.CANDLE:
        return candle(seq, key, ts, close=float(seq))
    return TopicRecord(ts, key, {"n": seq, "nested": [key]}, seq)


batches = st.lists(st.lists(st.tuples(st.sampled_from(KEYS), st.integers(0, 40)), max_size=20), max_size=8)
queries = st.lists(
    st.builds(
        TopicQuery,
        key=st.none() | st.sampled_from(KEYS),
        from_ms=st.none() | st.integers(0, 20),
        to_ms=st.none() | st.integers(20, 45),
        since_seq=st.none() | st.integers(0, 120),
        limit=st.integers(1, 30),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(
    fmt=st.sampled_from(list(DataFormat)),
    capacity=st.integers(1, 60),
    batches=batches,
    queries=queries,
)
def test_memory_storage_answers_like_the_naive_model(
    naive_topic: Any, fmt: DataFormat, capacity: int, batches: list[list[tuple[str, int]]], queries: list[TopicQuery]
) -> None:
    storage = MemoryStorage(capacity)
    epoch, last_seq = storage.open("t", fmt)
    assert epoch and last_seq == 0
    model = naive_topic(upsert=fmt.upsert, capacity=capacity)
    seq = 0
    for batch in batches:
        records = []
        for key, ts in batch:
            seq += 1
            records.append(make_record(fmt, seq, key, ts))
        storage.append(records)
        model.append(records)
        assert storage.count() == len(model.records)
        assert storage.bounds() == model.bounds()
    for query in queries:
        got = storage.query(query)
        want, truncated = model.query(query)
        assert dicts(got.records) == dicts(want), query
        assert got.truncated == truncated, query
    assert dicts(storage.latest()) == dicts(model.latest())
    for key in KEYS:
        assert dicts(storage.latest(key)) == dicts(model.latest(key))
    assert storage.keys() == model.keys()


def test_candle_update_replaces_the_stored_version_and_takes_its_new_seq() -> None:
    storage = MemoryStorage()
    storage.open("ohlc.1s", DataFormat.CANDLE)
    storage.append([candle(1, "EURUSD", 1000, 1.0), candle(2, "EURUSD", 2000, 1.0)])
    storage.append([candle(3, "EURUSD", 1000, 9.0)])
    result = storage.query(TopicQuery(key="EURUSD"))
    assert [(r.ts_ms, r.seq, r.data["close"]) for r in result.records] == [(1000, 3, 9.0), (2000, 2, 1.0)]
    assert storage.count() == 2
    assert storage.bounds() == (2, 3)
    since = storage.query(TopicQuery(since_seq=2))
    assert [r.seq for r in since.records] == [3]


def test_candle_topic_evicts_the_candle_updated_longest_ago() -> None:
    storage = MemoryStorage(capacity=2)
    storage.open("ohlc.1s", DataFormat.CANDLE)
    storage.append([candle(1, "A", 1000), candle(2, "A", 2000), candle(3, "A", 1000), candle(4, "A", 3000)])
    assert [r.ts_ms for r in storage.query(TopicQuery()).records] == [1000, 3000]


def test_quote_topic_keeps_the_six_quote_fields_and_evicts_oldest() -> None:
    storage = MemoryStorage(capacity=3)
    storage.open("quotes.raw", DataFormat.QUOTE)
    storage.append([quote(i, "EURUSD", 1000 + i, bid=1.0 + i) for i in range(1, 6)])
    result = storage.query(TopicQuery(limit=2))
    assert result.truncated is True
    assert dicts(result.records) == dicts([quote(4, "EURUSD", 1004, 5.0), quote(5, "EURUSD", 1005, 6.0)])
    assert storage.bounds() == (3, 5)
    assert storage.count() == 3
    assert storage.keys() == [("EURUSD", 3, 1005)]


def test_each_open_starts_a_new_epoch_and_seq() -> None:
    epochs = set()
    for _ in range(5):
        storage = MemoryStorage()
        epoch, last_seq = storage.open("t", DataFormat.ANY)
        assert last_seq == 0
        epochs.add(epoch)
    assert len(epochs) == 5
    assert storage.bounds() == (0, 0)
    assert storage.count() == 0
    assert storage.latest() == [] and storage.keys() == []
    assert storage.durable is False


def test_config_reads_capacity_and_refuses_typos() -> None:
    storage = registry.create("storage", {"type": "memory", "capacity": 10})
    assert isinstance(storage, MemoryStorage) and storage.capacity == 10
    assert MemoryStorage.from_config(MemoryConfig()).capacity is None
    with pytest.raises(ConfigError, match="capacity: Expected int >= 1, got 0"):
        registry.create("storage", {"type": "memory", "capacity": 0})
    with pytest.raises(ConfigError, match=r"capacity: Expected int \| null, got str"):
        registry.create("storage", {"type": "memory", "capacity": "big"})
    with pytest.raises(ConfigError, match="capacty: unknown option; known: capacity"):
        registry.create("storage", {"type": "memory", "capacty": 5})


def test_use_before_open_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="before open"):
        MemoryStorage().count()


@pytest.mark.parametrize("fmt", [DataFormat.QUOTE, DataFormat.ANY])
def test_a_hole_in_the_seqs_keeps_the_records_on_both_sides(fmt: DataFormat, caplog: pytest.LogCaptureFixture) -> None:
    storage = MemoryStorage(capacity=100)
    storage.open("holed", fmt)
    keys = ["EURUSD", "GBPUSD"]
    records = [make_record(fmt, seq, keys[seq % 2], 1_000 * seq) for seq in (1, 2, 3, 4, 5, 7, 8, 9, 10)]
    storage.append(records[:2])
    storage.append(records[2:])  # 3..5, then the hole, then 7..10 in one batch
    assert "seqs 6..6 are missing" in caplog.text
    assert storage.bounds() == (1, 10) and storage.count() == 9
    assert dicts(storage.query(TopicQuery(limit=100)).records) == dicts(records)
    assert dicts(storage.query(TopicQuery(limit=6)).records) == dicts(records[3:])
    assert storage.query(TopicQuery(limit=6)).truncated and not storage.query(TopicQuery(limit=9)).truncated
    assert dicts(storage.query(TopicQuery(key="GBPUSD", since_seq=2, to_ms=9_000, limit=100)).records) == dicts(
        [r for r in records if r.key == "GBPUSD" and 2 < r.seq < 9]
    )
    assert dicts(storage.latest()) == dicts([records[-2], records[-1]])
    assert [tuple(k) for k in storage.keys()] == [("EURUSD", 4, 10_000), ("GBPUSD", 5, 9_000)]
    storage.append([make_record(fmt, 11, "EURUSD", 11_000)])
    assert storage.bounds() == (1, 11) and storage.count() == 10


@pytest.mark.parametrize("fmt", [DataFormat.QUOTE, DataFormat.ANY])
def test_records_out_of_ts_order_across_a_hole_answer_ascending_by_ts(fmt: DataFormat) -> None:
    storage = MemoryStorage(capacity=100)
    storage.open("holed", fmt)
    before = [make_record(fmt, seq, "EURUSD", ts) for seq, ts in ((1, 5_000), (2, 7_000))]
    after = [make_record(fmt, seq, "EURUSD", ts) for seq, ts in ((4, 6_000), (5, 4_000))]
    storage.append(before)
    storage.append(after)
    assert [(r.seq, r.ts_ms) for r in storage.query(TopicQuery(limit=100)).records] == [(5, 4_000), (1, 5_000), (4, 6_000), (2, 7_000)]
    assert [r.seq for r in storage.query(TopicQuery(limit=2)).records] == [4, 2]
    assert [r.seq for r in storage.latest("EURUSD")] == [2]


@pytest.mark.parametrize("fmt", [DataFormat.QUOTE, DataFormat.ANY])
def test_the_ring_before_a_hole_goes_once_the_rings_after_it_hold_capacity(fmt: DataFormat) -> None:
    storage = MemoryStorage(capacity=5)
    storage.open("holed", fmt)
    storage.append([make_record(fmt, seq, "EURUSD", 1_000 * seq) for seq in (1, 2, 3)])
    storage.append([make_record(fmt, seq, "EURUSD", 1_000 * seq) for seq in (6, 7, 8, 9)])
    assert storage.count() == 7 and storage.bounds() == (1, 9)
    storage.append([make_record(fmt, 10, "EURUSD", 10_000)])  # the newer ring is full: the older one has gone
    assert storage.count() == 5 and storage.bounds() == (6, 10)
    assert [r.seq for r in storage.query(TopicQuery(limit=100)).records] == [6, 7, 8, 9, 10]


def test_a_journal_damaged_in_the_middle_still_rebuilds_its_memory_topic(tmp_path: Path) -> None:
    """One flipped byte in the tick log: the topic opens (it raised "seq 7 does not follow 5") and holds every intact record."""
    from gauss_plugins.storage.raw_file import RawFileStorage, segments

    from gauss.topics import Topic

    topic = Topic("quotes.raw", "quote", MemoryStorage(), journal=RawFileStorage(tmp_path))
    epoch = topic.epoch
    topic.publish([quote(0, "EURUSD", 1_000 + i, bid=1.0 + i) for i in range(10)])
    topic.close()
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    sixth = [i for i in range(len(data)) if data.startswith(b'"bid":6.0', i)]
    assert len(sixth) == 1
    data[sixth[0] + 6] = ord("X")  # the checksum no longer matches: frame 6 is moved aside
    segment.write_bytes(bytes(data))
    again = Topic("quotes.raw", "quote", MemoryStorage(), journal=RawFileStorage(tmp_path))
    assert (again.epoch, again.last_seq) == (epoch, 10)
    assert [r.seq for r in again.query(limit=100).records] == [1, 2, 3, 4, 5, 7, 8, 9, 10]
    again.publish([quote(0, "EURUSD", 2_000, bid=11.0)])
    assert [r.seq for r in again.query(limit=100).records] == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    again.close()
