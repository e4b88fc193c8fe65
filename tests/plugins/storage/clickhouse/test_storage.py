"""The ClickHouse storage against a real, private clickhouse-server (see tests/conftest.py).

The reference semantics are the naive model of ``tests/plugins/storage/conftest.py``,
the same oracle the memory storage answers to.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from gauss_plugins.storage.clickhouse import ClickHouseConfig, ClickHouseStorage
from gauss_plugins.storage.clickhouse.client import ClickHouseError, ClickHouseUnavailable, classify
from gauss_plugins.storage.clickhouse.spool import DiskSpool
from support import wait_until

from gauss import registry
from gauss.core import TopicRecord
from gauss.errors import ConfigError, StorageError, StorageUnavailable
from gauss.records import DataFormat, TopicQuery

KEYS = ["EURUSD", "BTC/USD", "ÄÖÜ", "it's", "back\\slash", "tab\there", "new\nline"]


def quote(seq: int, key: str, ts: int, bid: float) -> TopicRecord:
    data = {"symbol": key, "bid": bid, "ask": bid + 0.5, "bid_size": 1.0, "ask_size": 2.0, "ts_ms": ts}
    return TopicRecord(ts, key, data, seq)


def candle(seq: int, key: str, ts: int, close: float) -> TopicRecord:
    data = {
        "symbol": key,
        "timeframe": "1s",
        "ts_ms": ts,
        "open": 1.0,
        "high": 2.0,
        "low": 0.5,
        "close": close,
        "ticks": seq,
    }
    return TopicRecord(ts, key, data, seq)


def make_record(fmt: DataFormat, seq: int, key: str, ts: int, rnd: random.Random) -> TopicRecord:
    price = rnd.uniform(0.5, 2.0)
    if fmt is DataFormat.QUOTE:
        return quote(seq, key, ts, price)
    if fmt is DataFormat.CANDLE:
        return candle(seq, key, ts, price)
    return TopicRecord(ts, key, {"n": seq, "nested": [key, price], "none": None}, seq)


def dicts(records: list[TopicRecord]) -> list[dict[str, Any]]:
    return [r.as_dict() for r in records]


def create(table: dict[str, Any]) -> ClickHouseStorage:
    storage = registry.create("storage", {"type": "clickhouse", **table})
    assert isinstance(storage, ClickHouseStorage)
    return storage


def unique_db() -> str:
    return "t_" + uuid.uuid4().hex[:12]


@pytest.fixture
def make_storage(clickhouse_server: Any, tmp_path: Path) -> Any:
    """Build storages on the session server (one fresh database per test); closes them after."""
    made: list[ClickHouseStorage] = []
    database = unique_db()

    def build(server: Any = None, **options: Any) -> ClickHouseStorage:
        server = server or clickhouse_server
        table = {"url": server.url, "database": database, "spool_dir": str(tmp_path / "spool")}
        table.update(options)
        storage = create(table)
        made.append(storage)
        return storage

    build.database = database  # type: ignore[attr-defined]
    yield build
    for storage in made:
        storage.close()


# --- configuration -----------------------------------------------------------


def test_registered_as_clickhouse_entry_point() -> None:
    assert "clickhouse" in registry.known("storage")
    storage = registry.create("storage", {"type": "clickhouse", "batch_size": 5})
    assert isinstance(storage, ClickHouseStorage) and storage.batch_size == 5


@pytest.mark.parametrize(
    ("table", "key", "reason"),
    [
        ({"url": "127.0.0.1:8123"}, "url", "http"),
        ({"batch_size": 0}, "batch_size", "Expected int >= 1, got 0"),
        ({"batch_size": 2_000_000}, "batch_size", "<= 1000000"),
        ({"flush_interval": "1s"}, "flush_interval", "Expected float, got str"),
        ({"bogus": 1}, "bogus", "unknown option"),
        ({"retry_min": 5.0, "retry_max": 1.0}, "retry_max", "retry_min"),
        ({"password": "x", "password_env": "GAUSS_CH_PASSWORD"}, "password_env", "not both"),
        ({"fsync": "sometimes"}, "fsync", "unknown value 'sometimes'; known: always, interval, never"),
        ({"max_spool_bytes": 0}, "max_spool_bytes", ">= 1"),
        ({"database": ""}, "database", "length >= 1"),
        ({"spool_dir": True}, "spool_dir", "Invalid enum value True"),
        ({"startup_timeout": float("inf")}, "startup_timeout", "finite"),
    ],
)
def test_bad_option_names_the_key(table: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        create(table)
    assert info.value.key == key
    assert reason in info.value.reason


def test_spool_dir_is_relative_to_the_config_file_or_false_for_none(tmp_path: Path) -> None:
    storage = registry.create("storage", {"type": "clickhouse", "spool_dir": "spool"}, base_dir=tmp_path)
    assert isinstance(storage, ClickHouseStorage)
    assert storage.spool_dir == tmp_path / "spool" and storage.durable is True
    default = registry.create("storage", {"type": "clickhouse"}, base_dir=tmp_path)
    assert default.spool_dir == tmp_path / "data/clickhouse-spool"
    assert create({"spool_dir": str(tmp_path / "abs")}).spool_dir == tmp_path / "abs"
    for none in (False, ""):
        storage = create({"spool_dir": none})
        assert storage.spool_dir is None and storage.durable is False
    assert ClickHouseStorage.from_config(ClickHouseConfig(spool_dir=False, fsync=True)).fsync == "always"


def test_password_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAUSS_TEST_CH_PASSWORD", "s3cret")
    storage = create({"password_env": "GAUSS_TEST_CH_PASSWORD"})
    assert storage._writer._session.headers["X-ClickHouse-Key"] == "s3cret"


# --- against the server --------------------------------------------------------


@pytest.mark.parametrize("fmt", list(DataFormat))
def test_answers_like_the_naive_model_before_and_after_delivery(make_storage: Any, naive_topic: Any, fmt: DataFormat) -> None:
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    storage = make_storage(flush_interval=3600.0, batch_size=1_000_000)
    epoch, last_seq = storage.open("t.one", fmt)
    assert last_seq == 0 and epoch
    model = naive_topic(fmt.upsert)
    seq = 0
    for _ in range(6):
        batch = []
        for _ in range(rnd.randint(1, 40)):
            seq += 1
            batch.append(make_record(fmt, seq, rnd.choice(KEYS), rnd.randint(1, 60), rnd))
        storage.append(batch)
        model.append(batch)
        if rnd.random() < 0.5:
            storage.flush()  # some delivered, some still pending: answers merge both

    def check() -> None:
        for _ in range(25):
            low = rnd.choice([None, rnd.randint(0, 30)])
            query = TopicQuery(
                key=rnd.choice([None, *KEYS]),
                from_ms=low,
                to_ms=rnd.choice([None, rnd.randint(low or 0, 70)]),
                since_seq=rnd.choice([None, rnd.randint(0, seq)]),
                limit=rnd.randint(1, 60),
            )
            result = storage.query(query)
            want, truncated = model.query(query)
            assert dicts(result.records) == dicts(want), f"seed {seed}: {query}"
            assert result.truncated == truncated, f"seed {seed}: {query}"
        assert dicts(storage.latest()) == dicts(model.latest()), f"seed {seed}"
        for key in KEYS:
            assert dicts(storage.latest(key)) == dicts(model.latest(key)), f"seed {seed}: {key!r}"
        assert storage.keys() == model.keys(), f"seed {seed}"
        assert storage.count() == len(model.records), f"seed {seed}"
        assert storage.bounds() == model.bounds(), f"seed {seed}"

    check()
    storage.flush()
    assert storage.buffered == 0 and storage.healthy
    check()


def test_payloads_that_do_not_fit_the_typed_columns_come_back_as_they_went_in(make_storage: Any) -> None:
    storage = make_storage()
    storage.open("odd", DataFormat.QUOTE)
    odd = [
        TopicRecord(5, "K", {"symbol": "K", "bid": 1, "ask": 2.0, "bid_size": 0.0, "ask_size": 0.0, "ts_ms": 5}, 1),
        TopicRecord(6, "K", {"symbol": "other", "bid": 1.0}, 2),
        TopicRecord(7, "K", [1, 2, 3], 3),
        TopicRecord(8, "K", {**quote(4, "K", 8, 1.5).data, "venue": "X"}, 4),
    ]
    storage.append(odd)
    storage.flush()
    back = storage.query(TopicQuery()).records
    assert dicts(back) == dicts(odd)
    assert type(back[0].data["bid"]) is int


def test_floats_come_back_bit_for_bit(make_storage: Any) -> None:
    rnd = random.Random(7)
    storage = make_storage()
    storage.open("t.floats", DataFormat.QUOTE)
    values = [rnd.uniform(0.5, 2.0) for _ in range(500)] + [rnd.random() * 10 ** rnd.randint(-9, 9) for _ in range(500)]
    values += [math.inf, 5e-324, 1.7976931348623157e308]
    records = [quote(i + 1, "EURUSD", 1_700_000_000_000 + i, v) for i, v in enumerate(values)]
    storage.append(records)
    storage.flush()
    assert storage.buffered == 0
    got = storage.query(TopicQuery(limit=10_000)).records
    assert [r.data["bid"] for r in got] == values
    assert dicts(got) == dicts(records)


def test_candle_upserts_leave_one_row_per_candle(make_storage: Any, clickhouse_server: Any) -> None:
    storage = make_storage(batch_size=3)
    storage.open("ohlc.1m", DataFormat.CANDLE)
    seq = 0
    for version in range(10):
        batch = []
        for key in ("EURUSD", "USDJPY"):
            for bucket in range(3):
                seq += 1
                batch.append(candle(seq, key, 60_000 * bucket, close=1.0 + version))
        storage.append(batch)
        storage.flush()
    table = f"{make_storage.database}.candles"
    assert clickhouse_server.query(f"SELECT count() FROM {table} FINAL") == "6\n"

    def merged() -> bool:
        # NOTE: OPTIMIZE is silently a no-op while a background merge holds the parts; ask again until merged.
        clickhouse_server.query(f"OPTIMIZE TABLE {table} PARTITION 197001 FINAL")
        return clickhouse_server.query(f"SELECT count() FROM {table}") == "6\n"

    wait_until(merged, timeout=30, what="OPTIMIZE FINAL to merge the versions")
    assert clickhouse_server.query(f"SELECT DISTINCT close FROM {table}") == "10\n"
    assert storage.count() == 6
    assert {r.data["close"] for r in storage.query(TopicQuery()).records} == {10.0}


def test_retried_insert_that_had_landed_does_not_duplicate_quotes(make_storage: Any, clickhouse_server: Any) -> None:
    storage = make_storage()
    storage.open("q", DataFormat.QUOTE)
    batch = [quote(i, "EURUSD", 1000 + i, 1.1) for i in range(1, 51)]
    body = storage.layout.encode("q", batch)
    columns = ", ".join(name for name, _ in storage.layout.columns)
    for _ in range(3):  # the same batch, as a retry after a lost answer would send it
        clickhouse_server.query(f"INSERT INTO {make_storage.database}.quotes ({columns}) FORMAT RowBinary", body)
    assert storage.count() == 50
    assert dicts(storage.query(TopicQuery()).records) == dicts(batch)


def test_epoch_and_seq_survive_a_restart(make_storage: Any) -> None:
    first = make_storage()
    epoch, last = first.open("quotes.raw", DataFormat.QUOTE)
    assert last == 0
    first.append([quote(i, "EURUSD", 1000 + i, 1.2) for i in range(1, 11)])
    first.close()
    second = make_storage()
    assert second.open("quotes.raw", DataFormat.QUOTE) == (epoch, 10)
    assert second.count() == 10
    other = make_storage()
    other_epoch, other_last = other.open("quotes.other", DataFormat.QUOTE)
    assert other_last == 0 and other_epoch != epoch


def test_empty_topic_gets_a_new_epoch_each_open(make_storage: Any) -> None:
    a = make_storage().open("empty", DataFormat.ANY)
    b = make_storage().open("empty", DataFormat.ANY)
    assert a[1] == b[1] == 0 and a[0] != b[0]


def test_table_of_another_format_is_refused(make_storage: Any) -> None:
    make_storage(table="shared").open("a", DataFormat.QUOTE)
    with pytest.raises(StorageError, match="does not fit candle records"):
        make_storage(table="shared").open("b", DataFormat.CANDLE)


def test_topics_share_a_table_without_mixing(make_storage: Any) -> None:
    one = make_storage()
    two = make_storage()
    one.open("ohlc.1m", DataFormat.CANDLE)
    two.open("ohlc.5m", DataFormat.CANDLE)
    one.append([candle(1, "EURUSD", 60_000, 1.0)])
    two.append([candle(1, "EURUSD", 300_000, 2.0), candle(2, "EURUSD", 600_000, 3.0)])
    one.flush()
    two.flush()
    assert one.count() == 1 and two.count() == 2
    assert [r.data["close"] for r in two.query(TopicQuery()).records] == [2.0, 3.0]


def test_credentials_are_used(make_storage: Any, clickhouse_server: Any) -> None:
    good = make_storage(user=clickhouse_server.USER, password=clickhouse_server.PASSWORD)
    good.open("auth", DataFormat.QUOTE)
    good.append([quote(1, "EURUSD", 1000, 1.0)])
    good.flush()
    assert good.count() == 1
    bad = make_storage(user=clickhouse_server.USER, password="wrong", startup_timeout=30.0)
    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot open"):
        bad.open("auth", DataFormat.QUOTE)
    assert time.monotonic() - started < 25, "an authentication error must not be retried as an outage"


def test_dropped_table_is_created_again(make_storage: Any, clickhouse_server: Any) -> None:
    storage = make_storage(flush_interval=0.05, retry_min=0.05, retry_max=0.2)
    storage.open("q", DataFormat.QUOTE)
    storage.append([quote(1, "EURUSD", 1000, 1.0)])
    storage.flush()
    clickhouse_server.query(f"DROP TABLE {make_storage.database}.quotes")
    storage.append([quote(2, "EURUSD", 1001, 1.0)])
    storage.flush()
    wait_until(lambda: storage.buffered == 0, what="delivery after the table came back")
    assert [r.seq for r in storage.query(TopicQuery()).records] == [2]


# --- ClickHouse away -----------------------------------------------------------


def test_outage_loses_nothing_accepted(clickhouse_factory: Any, make_storage: Any, tmp_path: Path) -> None:
    server = clickhouse_factory()
    storage = make_storage(
        server,
        flush_interval=0.05,
        retry_min=0.05,
        retry_max=0.3,
        connect_timeout=1.0,
        timeout=2.0,
        flush_timeout=1.0,
        spool_dir=str(tmp_path / "spool"),
    )
    storage.open("quotes.raw", DataFormat.QUOTE)
    seq = 0

    def send(n: int) -> None:
        nonlocal seq
        batch = []
        for _ in range(n):
            seq += 1
            batch.append(quote(seq, "EURUSD", 1_000 + seq, 1.0 + seq / 1e6))
        storage.append(batch)

    send(100)
    wait_until(lambda: storage.buffered == 0, what="first delivery")
    server.stop()
    started = time.monotonic()
    for _ in range(20):
        send(50)  # keeps accepting while ClickHouse is away
    assert time.monotonic() - started < 5, "append must never wait on ClickHouse"
    wait_until(lambda: not storage.healthy and storage.insert_errors > 0, what="the outage to be noticed")
    wait_until(lambda: storage.spooled_bytes > 0, what="records to reach the disk spool")
    assert storage.buffered == 1000
    assert storage.health()["healthy"] == 0.0
    with pytest.raises(StorageUnavailable):
        storage.count()
    with pytest.raises(StorageUnavailable):
        storage.query(TopicQuery())
    server.start()
    wait_until(lambda: storage.buffered == 0 and storage.healthy, what="delivery after the outage")
    assert storage.count() == 1100
    records = storage.query(TopicQuery(limit=5000)).records
    assert [r.seq for r in records] == list(range(1, 1101))
    assert storage.dropped == 0
    assert not list((tmp_path / "spool").rglob("*.spool")), "delivered segments are deleted"


def test_restart_during_outage_resends_the_spool(clickhouse_factory: Any, make_storage: Any, tmp_path: Path) -> None:
    server = clickhouse_factory()
    options = {
        "flush_interval": 0.05,
        "retry_min": 0.05,
        "retry_max": 0.3,
        "connect_timeout": 1.0,
        "timeout": 2.0,
        "flush_timeout": 1.0,
        "spool_dir": str(tmp_path / "spool"),
    }
    first = make_storage(server, **options)
    epoch, _ = first.open("ohlc.1m", DataFormat.CANDLE)
    first.append([candle(1, "EURUSD", 0, 1.0)])
    first.flush()
    server.stop()
    first.append([candle(2, "EURUSD", 0, 2.0), candle(3, "EURUSD", 60_000, 3.0)])
    first.close()  # ClickHouse away: the batch stays on disk
    assert list((tmp_path / "spool").rglob("*.spool"))
    server.start()
    second = make_storage(server, **options)
    assert second.open("ohlc.1m", DataFormat.CANDLE) == (epoch, 3)
    wait_until(lambda: second.buffered == 0, what="the spool to drain")
    assert [(r.seq, r.data["close"]) for r in second.query(TopicQuery()).records] == [(2, 2.0), (3, 3.0)]


def test_a_full_spool_refuses_the_batch_counted_and_logged(clickhouse_factory: Any, make_storage: Any, caplog: Any) -> None:
    server = clickhouse_factory()
    storage = make_storage(
        server, flush_interval=0.05, retry_min=0.05, retry_max=0.2, connect_timeout=1.0, timeout=1.0,
        max_spool_bytes=20_000,
    )  # fmt: skip
    storage.open("q", DataFormat.QUOTE)
    server.stop()
    seq = 0
    refused = 0
    for _ in range(10):
        batch = [quote(seq + i, "EURUSD", 1000 + seq + i, 1.0) for i in range(1, 51)]
        try:
            storage.append(batch)
            seq += 50  # numbered on: a refused batch's seqs are not handed out (the topic rolls them back)
        except StorageError as exc:
            assert "full" in str(exc)
            refused += 1
    accepted = seq
    assert refused > 0 and accepted > 0
    assert storage.dropped == 50 * refused
    assert storage.buffered == accepted
    assert "dropped 50 records" in caplog.text
    # What a topic asks after a refused batch answers at once while ClickHouse cannot be reached.
    wait_until(lambda: storage.insert_errors > 0, what="the worker to notice the outage")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="unreachable"):
        storage.bounds()
    assert time.monotonic() - started < 0.1
    server.start()
    wait_until(lambda: storage.buffered == 0, what="delivery")
    assert storage.count() == accepted


def test_unreachable_at_open_fails_after_startup_timeout(tmp_path: Path) -> None:
    storage = create({"url": "http://127.0.0.1:9", "startup_timeout": 0.3, "connect_timeout": 0.2, "spool_dir": str(tmp_path)})
    with pytest.raises(StorageError, match="127.0.0.1:9"):
        storage.open("q", DataFormat.QUOTE)


def test_health_is_exported_to_metrics(make_storage: Any) -> None:
    from gauss.metrics import Metrics
    from gauss.topics import TopicRegistry

    metrics = Metrics()
    topics = TopicRegistry(metrics=metrics)
    metrics.watch(topics)
    storage = make_storage(flush_interval=3600.0)
    topic = topics.create("quotes.ch", format=DataFormat.QUOTE, storage=storage)
    topic.publish([TopicRecord(1000 + i, "EURUSD", quote(0, "EURUSD", 1000 + i, 1.0).data) for i in range(7)])
    labels = {"topic": "quotes.ch", "storage": topic.storage_type}
    assert metrics.value("gauss_storage_healthy", **labels) == 1.0
    assert metrics.value("gauss_storage_buffered_records", **labels) == 7.0
    storage.flush()
    assert metrics.value("gauss_storage_buffered_records", **labels) == 0.0
    assert metrics.value("gauss_storage_inserted_records", **labels) == 7.0
    assert b"gauss_storage_dropped_records" in metrics.exposition()


# --- failures that are not an outage ---------------------------------------------


@pytest.mark.parametrize(
    ("message", "code", "status", "retryable"),
    [
        ("Code: 252, e.displayText() = DB::Exception: Too many parts (300). Merges are processing", 252, 500, True),
        ("Code: 252, e.displayText() = DB::Exception: Too many partitions for single INSERT block", 252, 500, False),
        ("Code: 241, e.displayText() = DB::Exception: Memory limit (for query) exceeded", 241, 500, True),
        ("Code: 242, e.displayText() = DB::Exception: Table is in readonly mode", 242, 500, True),
        ("Code: 319, e.displayText() = DB::Exception: Unknown status of insert", 319, 500, True),
        ("Code: 27, e.displayText() = DB::Exception: Cannot parse input", 27, 500, False),
        ("Code: 16, e.displayText() = DB::Exception: No such column payload in table", 16, 500, False),
        ("Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero", 395, 500, False),
        ("Bad Gateway", 0, 502, True),
        ("Service Unavailable", 0, 503, True),
        ("Too Many Requests", 0, 429, True),
        ("Request Entity Too Large", 0, 413, False),
    ],
)
def test_failures_are_told_retryable_or_permanent(message: str, code: int, status: int, retryable: bool) -> None:
    error = classify(message, code, status)
    assert issubclass(error, ClickHouseError)
    assert issubclass(error, ClickHouseUnavailable) is retryable
    assert issubclass(error, StorageUnavailable) is retryable


def guard_bids(server: Any, table: str, limit: float = 1e6) -> None:
    """Make ClickHouse itself refuse any row whose bid exceeds ``limit`` (error 395), as a CHECK would."""
    server.query(f"ALTER TABLE {table} ADD COLUMN guard UInt8 MATERIALIZED throwIf(bid > {limit})")


def test_a_refused_batch_is_dead_lettered_and_the_next_is_accepted(make_storage: Any, clickhouse_server: Any) -> None:
    # One INSERT carries the three batches: the refusal is narrowed down to the bad one.
    storage = make_storage(flush_interval=3600.0)
    storage.open("quotes.guarded", DataFormat.QUOTE)
    guard_bids(clickhouse_server, f"{make_storage.database}.quotes")
    good = [quote(i, "EURUSD", 1000 + i, 1.1) for i in range(1, 11)]
    bad = [quote(i, "EURUSD", 1000 + i, 5e9 if i == 13 else 1.1) for i in range(11, 16)]
    after = [quote(i, "EURUSD", 1000 + i, 1.2) for i in range(16, 21)]
    for batch in (good, bad, after):
        storage.append(batch)
    storage.flush()
    assert storage.buffered == 0 and storage.healthy
    assert [r.seq for r in storage.query(TopicQuery()).records] == [r.seq for r in good + after]
    assert storage.dead_letter_records == 5 and storage.dead_letter_batches == 1
    assert storage.health()["dead_letter_records"] == 5.0
    letters = list(storage._dead.directory.glob("*.rowbinary"))
    assert [p.name for p in letters] == [f"{11:020d}-{15:020d}-5.rowbinary"]
    note = json.loads(letters[0].with_suffix(".json").read_text())
    assert note["code"] == 395 and note["records"] == 5 and "throwIf" in note["error"]
    # The file is the batch as ClickHouse takes it, once the cause is mended.
    clickhouse_server.query(f"ALTER TABLE {make_storage.database}.quotes DROP COLUMN guard")
    clickhouse_server.query(note["insert"], letters[0].read_bytes())
    assert storage.count() == 20
    # More batches flow as before.
    storage.append([quote(21, "EURUSD", 1021, 1.3)])
    storage.flush()
    assert storage.count() == 21 and storage.buffered == 0


def test_a_spooled_batch_refused_after_a_restart_is_dead_lettered(
    clickhouse_factory: Any, make_storage: Any, tmp_path: Path
) -> None:
    server = clickhouse_factory()
    options = {"flush_interval": 0.05, "retry_min": 0.05, "retry_max": 0.3, "connect_timeout": 1.0, "timeout": 2.0,
               "flush_timeout": 0.5}  # fmt: skip
    first = make_storage(server, **options)
    epoch, _ = first.open("quotes.raw", DataFormat.QUOTE)
    guard_bids(server, f"{make_storage.database}.quotes")
    server.stop()
    first.append([quote(1, "EURUSD", 1001, 1.0)])
    first.append([quote(2, "EURUSD", 1002, 7e9)])  # ClickHouse will refuse this one
    first.append([quote(3, "EURUSD", 1003, 1.0)])
    first.close()
    server.start()
    second = make_storage(server, **options)
    assert second.open("quotes.raw", DataFormat.QUOTE) == (epoch, 3)
    wait_until(lambda: second.buffered == 0, what="the spool to drain past the refused batch")
    assert [r.seq for r in second.query(TopicQuery()).records] == [1, 3]
    assert second.dead_letter_records == 1
    second.append([quote(4, "EURUSD", 1004, 1.0)])
    second.flush()
    assert [r.seq for r in second.query(TopicQuery()).records] == [1, 3, 4]
    second.close()
    third = make_storage(server, **options)
    assert third.open("quotes.raw", DataFormat.QUOTE) == (epoch, 4)
    assert third.dead_letter_records == 1, "a dead-lettered batch is never sent again"


# --- visible means written; seq after a crash ----------------------------------------


def test_append_returns_with_the_batch_in_the_spool_file(make_storage: Any, tmp_path: Path) -> None:
    storage = make_storage(flush_interval=3600.0, fsync="always")
    storage.open("q", DataFormat.QUOTE)
    batch = [quote(i, "EURUSD", 1000 + i, 1.0 + i) for i in range(1, 6)]
    storage.append(batch)
    spool = DiskSpool(storage._spool.directory, 1 << 20)
    spool.load()
    frames = spool.read(100)
    assert [(f.first_seq, f.last_seq, f.records) for f in frames] == [(1, 5, 5)]
    assert dicts(storage.layout.decode(frames[0].body, with_topic=True)) == dicts(batch)


CHILD = """
import sys, time
from gauss_plugins.storage.clickhouse import ClickHouseConfig, ClickHouseStorage
from gauss.core import TopicRecord
from gauss.records import DataFormat
url, database, spool, fsync = sys.argv[1:5]
storage = ClickHouseStorage.from_config(ClickHouseConfig(url=url, database=database, spool_dir=spool, fsync=fsync,
                                                         flush_interval=0.05, batch_size=7))
epoch, seq = storage.open("quotes.raw", DataFormat.QUOTE)
print(epoch, seq, flush=True)
while True:
    batch = []
    for _ in range(5):
        seq += 1
        data = {"symbol": "EURUSD", "bid": 1.0, "ask": 1.5, "bid_size": 1.0, "ask_size": 1.0, "ts_ms": 1000 + seq}
        batch.append(TopicRecord(1000 + seq, "EURUSD", data, seq))
    storage.append(batch)
    print(seq, flush=True)  # a client may see these now
    time.sleep(0.002)
"""


def run_and_kill(server: Any, database: str, spool: Path, fsync: str = "interval", appends: int = 200) -> tuple[str, int]:
    """A process appending batches, SIGKILLed mid-stream; ``(its epoch, the last seq it reported)``."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, server.url, database, str(spool), fsync],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert child.stdout is not None
    epoch = child.stdout.readline().split()[0]
    last = 0
    for _ in range(appends):
        last = int(child.stdout.readline())
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    return epoch, last


def test_sigkill_keeps_every_seq_a_client_saw_under_the_same_epoch(make_storage: Any, clickhouse_server: Any, tmp_path: Path) -> None:
    epoch, seen = run_and_kill(clickhouse_server, make_storage.database, tmp_path / "spool")
    storage = make_storage(flush_interval=0.05)
    reopened, last = storage.open("quotes.raw", DataFormat.QUOTE)
    assert reopened == epoch
    assert last >= seen, "a seq some client saw would be handed out again"
    storage.flush()
    held = [r.seq for r in storage.query(TopicQuery(limit=100_000)).records]
    assert held == list(range(1, last + 1)), "every seq up to the last is held, once"
    storage.append([quote(last + 1, "EURUSD", 5000, 1.0)])
    storage.flush()
    assert storage.bounds() == (1, last + 1)


@pytest.mark.parametrize("damage", ["state file missing", "another boot"])
def test_a_spool_that_cannot_prove_itself_starts_a_new_epoch_above_every_seq(
    make_storage: Any, clickhouse_server: Any, tmp_path: Path, damage: str
) -> None:
    epoch, seen = run_and_kill(clickhouse_server, make_storage.database, tmp_path / "spool", appends=50)
    state = next((tmp_path / "spool").rglob("state.json"))
    if damage == "state file missing":
        state.unlink()
    else:  # as after a power loss: the spool's tail may be gone, and it was not fsynced per batch
        state.write_text(json.dumps({**json.loads(state.read_text()), "boot_id": "an-earlier-boot"}))
    storage = make_storage(flush_interval=0.05)
    reopened, last = storage.open("quotes.raw", DataFormat.QUOTE)
    assert reopened != epoch, damage
    assert last >= seen, damage


def test_fsync_always_trusts_the_spool_across_a_machine_restart(make_storage: Any, clickhouse_server: Any, tmp_path: Path) -> None:
    epoch, seen = run_and_kill(clickhouse_server, make_storage.database, tmp_path / "spool", fsync="always", appends=50)
    state = next((tmp_path / "spool").rglob("state.json"))
    state.write_text(json.dumps({**json.loads(state.read_text()), "boot_id": "an-earlier-boot"}))
    storage = make_storage(flush_interval=0.05, fsync="always")
    assert storage.open("quotes.raw", DataFormat.QUOTE)[0] == epoch


def test_a_damaged_spool_keeps_every_intact_batch_and_moves_the_damage_aside(
    clickhouse_factory: Any, make_storage: Any, tmp_path: Path
) -> None:
    server = clickhouse_factory()
    first = make_storage(server, flush_interval=3600.0, flush_timeout=0.2, connect_timeout=1.0, timeout=1.0)
    epoch, _ = first.open("q", DataFormat.QUOTE)
    server.stop()
    for seq in range(1, 11):
        first.append([quote(seq, "EURUSD", 1000 + seq, 1.0)])
    first.close()
    segment = next((tmp_path / "spool").rglob("*.spool"))
    data = bytearray(segment.read_bytes())
    frame = len(data) // 10
    data[4 * frame + frame // 2] ^= 0xFF  # a byte in the middle of the fifth batch
    segment.write_bytes(bytes(data[: len(data) - 3]))  # and the last batch torn
    server.start()
    second = make_storage(server, flush_interval=0.05)
    assert second.open("q", DataFormat.QUOTE)[0] == epoch
    assert second.health()["spool_corrupt_bytes"] == frame + frame - 3
    assert segment.with_name(segment.name + ".corrupt").stat().st_size == frame + frame - 3
    wait_until(lambda: second.buffered == 0, what="the intact batches delivered")
    assert [r.seq for r in second.query(TopicQuery()).records] == [1, 2, 3, 4, 6, 7, 8, 9]


def test_without_a_spool_dir_every_open_is_a_new_epoch(make_storage: Any) -> None:
    first = make_storage(spool_dir=False)
    epoch, _ = first.open("q", DataFormat.QUOTE)
    assert first.durable is False
    first.append([quote(1, "EURUSD", 1001, 1.0)])
    first.close()
    second = make_storage(spool_dir=False)
    reopened, last = second.open("q", DataFormat.QUOTE)
    assert reopened != epoch and last == 1


def test_spool_files_of_the_earlier_format_are_migrated_and_delivered(make_storage: Any, tmp_path: Path) -> None:
    first = make_storage(flush_interval=3600.0)
    epoch, _ = first.open("q", DataFormat.QUOTE)
    first.close()
    directory = first._spool.directory
    batch = [quote(i, "EURUSD", 1000 + i, 1.0) for i in range(1, 4)]
    (directory / f"{1:020d}-{3:020d}-3.rowbinary").write_bytes(first.layout.encode("q", batch))
    second = make_storage(flush_interval=0.05)
    assert second.open("q", DataFormat.QUOTE) == (epoch, 3)
    assert not list(directory.glob("*.rowbinary"))
    wait_until(lambda: second.buffered == 0, what="the migrated batch delivered")
    assert dicts(second.query(TopicQuery()).records) == dicts(batch)


FULL_DISK_CHILD = """
import os, resource, signal, sys
from gauss_plugins.storage.clickhouse import ClickHouseConfig, ClickHouseStorage
from gauss.core import TopicRecord
from gauss.errors import StorageError
from gauss.records import DataFormat
url, database, spool = sys.argv[1:4]
storage = ClickHouseStorage.from_config(ClickHouseConfig(url=url, database=database, spool_dir=spool, flush_interval=3600.0))
epoch, seq = storage.open("quotes.raw", DataFormat.QUOTE)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))
accepted = refused = 0
while accepted < 20:
    batch = []
    for i in range(1, 6):
        data = {"symbol": "EURUSD", "bid": 1.0, "ask": 1.5, "bid_size": 1.0, "ask_size": 1.0, "ts_ms": 1000 + seq + i}
        batch.append(TopicRecord(1000 + seq + i, "EURUSD", data, seq + i))
    try:
        storage.append(batch)
    except StorageError as exc:
        refused += 1  # the topic rolls the numbering back: the next batch takes the same seqs
        print("refused", exc, flush=True)
        if refused > 5:
            break
        continue
    seq += 5
    accepted += 1
print("done", epoch, seq, refused, flush=True)
os._exit(0)  # as a crash: no close, no clean state
"""


def test_a_write_that_fails_part_way_leaves_nothing_torn_and_the_next_batch_is_kept(
    make_storage: Any, clickhouse_server: Any, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK_CHILD, clickhouse_server.url, make_storage.database, str(tmp_path / "spool")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    last = done.stdout.strip().splitlines()[-1].split()
    assert last[0] == "done", done.stdout + done.stderr
    epoch, seq, refused = last[1], int(last[2]), int(last[3])
    assert seq == 100 and refused >= 2, done.stdout  # every 3000-byte segment filled up at least once
    storage = make_storage(flush_interval=0.05)
    assert storage.open("quotes.raw", DataFormat.QUOTE) == (epoch, seq)
    assert storage.health()["spool_corrupt_bytes"] == 0.0, "a failed write was rolled back"
    wait_until(lambda: storage.buffered == 0, what="the spool delivered")
    assert [r.seq for r in storage.query(TopicQuery(limit=1000)).records] == list(range(1, 101))


def test_queries_see_a_contiguous_prefix_of_what_waits_past_max_buffer_records(make_storage: Any) -> None:
    storage = make_storage(flush_interval=3600.0, max_buffer_records=10)
    storage.open("q", DataFormat.QUOTE)

    def batch(first: int) -> list[TopicRecord]:
        return [quote(i, "EURUSD", 1000 + i, 1.0) for i in range(first, first + 5)]

    for first in (1, 6, 11, 16):
        storage.append(batch(first))
    assert [r.seq for r in storage.query(TopicQuery()).records] == list(range(1, 11)), "no gap: the newest wait on disk"
    storage.flush()
    assert [r.seq for r in storage.query(TopicQuery()).records] == list(range(1, 21))
    storage.append(batch(21))  # everything on disk only was delivered: the memory copy resumes
    assert [r.seq for r in storage.query(TopicQuery()).records] == list(range(1, 26))
    assert storage.buffered == 5


def test_fsync_interval_syncs_the_spool_within_a_second_or_so(make_storage: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    storage = make_storage(flush_interval=3600.0)  # nothing delivered: the spool alone holds the batch
    storage.open("q", DataFormat.QUOTE)
    started = time.monotonic()
    storage.append([quote(1, "EURUSD", 1001, 1.0)])
    assert not any(p.endswith(".spool") for p in synced), "interval: append does not fsync"
    wait_until(lambda: any(p.endswith(".spool") for p in synced), timeout=5, what="the interval fsync")
    assert time.monotonic() - started < 2.5
    assert not storage._spool.dirty
