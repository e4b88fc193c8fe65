"""ClickHouse through a running ``gauss-serve``: same answers as memory and file, upserts, an outage.

One ``gauss-serve`` subprocess stores the same quotes in three topics
(memory ``quotes.raw``, and, through ``symbol-filter`` processors that pass
every symbol on, ``quotes.ch`` in ClickHouse and ``quotes.file`` in files) and
the same candles twice (``ohlc.*`` in ClickHouse, ``fohlc.*`` in files, from two
``ohlc`` processors). REST must answer every query identically for each pair.
The ClickHouse server is the private one of ``tests/conftest.py``; each test
uses its own database so tests sharing the session server never meet.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import websocket
from prometheus_client.parser import text_string_to_metric_families
from support import free_port, serve, wait_until

MINUTE = 60_000
SYMBOLS = ["EURUSD", "USDJPY", "BTC/USD"]
CandleMap = dict[tuple[str, int], tuple[float, float, float, float, int]]


# --- helpers -----------------------------------------------------------------


def get_json(api: str, path: str, **params: Any) -> Any:
    url = f"{api}{urllib.parse.quote(path)}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def storage_health(api: str) -> dict[tuple[str, str], float]:
    """``(figure, topic) -> value`` of the ``gauss_storage_*`` gauges in ``/metrics``."""
    with urllib.request.urlopen(f"{api}/metrics", timeout=30) as response:
        text = response.read().decode()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("gauss_storage_") and "topic" in sample.labels:
                out[(sample.name.removeprefix("gauss_storage_"), sample.labels["topic"])] = sample.value
    return out


def delivered(api: str, topics: list[str]) -> bool:
    """Every ClickHouse topic healthy with nothing waiting (memory or spool)."""
    health = storage_health(api)
    return all(
        health.get(("healthy", t)) == 1.0 and health.get(("buffered_records", t)) == 0.0 for t in topics
    )


def stored_count(api: str, topic: str) -> int:
    return sum(k["records"] for k in get_json(api, f"/api/topics/{topic}/keys"))


def candle_map(records: list[dict[str, Any]]) -> CandleMap:
    return {
        (r["key"], r["ts_ms"]): (r["data"]["open"], r["data"]["high"], r["data"]["low"], r["data"]["close"], r["data"]["ticks"])
        for r in records
    }  # fmt: skip


def without_seq(records: list[dict[str, Any]]) -> list[tuple[int, str, Any]]:
    return [(r["ts_ms"], r["key"], r["data"]) for r in records]


def shuffled_quotes(rng: random.Random, start_ms: int, count: int, step_ms: int) -> list[dict[str, Any]]:
    """Random-walk quotes (full-precision doubles), a few displaced by up to 12 steps (out of order)."""
    mids = {s: rng.uniform(0.5, 200.0) for s in SYMBOLS}
    out = []
    for i in range(count):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        mids[symbol] *= 1.0 + rng.gauss(0.0, 0.0005)
        spread = mids[symbol] * rng.uniform(1e-5, 1e-4)
        out.append(
            {"symbol": symbol, "bid": mids[symbol] - spread, "ask": mids[symbol] + spread,
             "bid_size": rng.uniform(1.0, 1e6), "ask_size": rng.uniform(1.0, 1e6), "ts_ms": start_ms + i * step_ms}
        )  # fmt: skip
    for _ in range(count // 20):
        i = rng.randrange(count - 12)
        j = i + rng.randint(1, 12)
        out[i], out[j] = out[j], out[i]
    return out


def send(port: int, quotes: list[dict[str, Any]]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as feed:
        feed.sendall(b"".join(json.dumps(q).encode() + b"\n" for q in quotes))


# --- one gauss-serve, the same stream in memory, files and ClickHouse --------------------


def parallel_config(directory: Path, ch_url: str, database: str, source: int, api: int) -> Path:
    clickhouse = (
        f'type = "clickhouse", url = "{ch_url}", database = "{database}", flush_interval = 0.1, '
        'retry_min = 0.05, retry_max = 0.5, connect_timeout = 2.0, timeout = 10.0'
    )
    path = directory / "config.toml"
    path.write_text(
        f"""
[hub]
status_interval = 1.0

[api]
port = {api}

[[topics]]
name = "quotes.raw"
format = "quote"
storage = {{ type = "memory", capacity = 100000 }}

[[topics]]
name = "quotes.ch"
format = "quote"
storage = {{ {clickhouse} }}

[[topics]]
name = "quotes.file"
format = "quote"
storage = {{ type = "file", dir = "data/quotes" }}

[[topics]]
name = "ohlc.*"
format = "candle"
create = ["ohlc.5s", "ohlc.1m", "ohlc.5m"]
storage = {{ {clickhouse} }}

[[topics]]
name = "fohlc.*"
format = "candle"
create = ["fohlc.5s", "fohlc.1m", "fohlc.5m"]
storage = {{ type = "file", dir = "data/fohlc/{{suffix}}" }}

[[sources]]
topic = "quotes.raw"
transport = {{ type = "tcp-server", port = {source} }}

[[processors]]
type = "symbol-filter"
topic = "quotes.raw"
output = "quotes.ch"
deny = ["-none-"]

[[processors]]
type = "symbol-filter"
topic = "quotes.raw"
output = "quotes.file"
deny = ["-none-"]

[[processors]]
type = "ohlc"
topic = "quotes.raw"
timeframes = ["5s", "1m", "5m"]

[[processors]]
type = "ohlc"
topic = "quotes.raw"
timeframes = ["5s", "1m", "5m"]
output_prefix = "fohlc."
"""
    )
    return path


QUOTE_TOPICS = ("quotes.raw", "quotes.ch", "quotes.file")
TIMEFRAMES = {"5s": 5_000, "1m": MINUTE, "5m": 5 * MINUTE}


def test_clickhouse_answers_like_memory_and_file_and_keeps_one_row_per_candle(
    tmp_path: Path, clickhouse_server: Any
) -> None:
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")  # shown on failure: replay with random.Random(seed)
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    start = now - now % MINUTE - 9 * MINUTE
    sent = shuffled_quotes(rng, start, 2400, 150)  # 6 minutes from start
    database = f"e2e_{uuid.uuid4().hex[:12]}"
    source, api_port = free_port(), free_port()
    config = parallel_config(tmp_path, clickhouse_server.url, database, source, api_port)
    api = f"http://127.0.0.1:{api_port}"
    ch_topics = ["quotes.ch", *(f"ohlc.{tf}" for tf in TIMEFRAMES)]

    server = serve.Server(config)
    try:
        # Phase 1, then phase 2 once phase 1's candles are in ClickHouse: the candles
        # open at the split (inside a bucket of every timeframe: 196.5 s from a
        # minute boundary) get a second version in a later INSERT, an upsert.
        half = 1310
        send(source, sent[:half])
        wait_until(lambda: all(stored_count(api, t) == half for t in QUOTE_TOPICS), what="phase 1 in every quote topic")
        wait_until(
            lambda: candle_map(get_json(api, "/api/topics/ohlc.1m", limit=100_000)["records"])
            == serve.expected_candles(sent[:half], MINUTE),
            what="phase 1 candles",
        )
        wait_until(lambda: delivered(api, ch_topics), what="phase 1 delivered to ClickHouse")
        first = candle_map(get_json(api, "/api/topics/ohlc.1m", limit=100_000)["records"])
        send(source, sent[half:])
        wait_until(lambda: all(stored_count(api, t) == len(sent) for t in QUOTE_TOPICS), what="every quote stored")
        for tf, width in TIMEFRAMES.items():
            expected = serve.expected_candles(sent, width)
            for prefix in ("ohlc.", "fohlc."):
                topic = prefix + tf

                def complete(topic: str = topic, expected: CandleMap = expected) -> bool:
                    return candle_map(get_json(api, f"/api/topics/{topic}", limit=100_000)["records"]) == expected

                wait_until(complete, what=f"final candles of {topic}")
        wait_until(lambda: delivered(api, ch_topics), what="everything delivered to ClickHouse")

        # The memory topic holds exactly what was sent, numbered in arrival order.
        everything = get_json(api, "/api/topics/quotes.raw", limit=100_000)
        arrival = sorted(range(len(sent)), key=lambda i: (sent[i]["ts_ms"], i))
        assert [(r["seq"], r["data"]) for r in everything["records"]] == [(i + 1, sent[i]) for i in arrival]
        assert everything["truncated"] is False

        # Same query, same answer: quotes (seq included: each filter forwards every batch in order).
        mid = sent[half]["ts_ms"]
        quote_queries: list[dict[str, Any]] = [
            {},
            {"limit": 100_000},
            {"limit": 7},
            {"key": "BTC/USD", "limit": 100_000},
            {"key": "EURUSD", "from": mid - 20_000, "to": mid + 20_000},
            {"from": mid - MINUTE, "to": mid + MINUTE, "limit": 50},
            {"from": mid, "limit": 100_000},
            {"to": mid, "limit": 100_000},
            {"since_seq": 1500, "limit": 100_000},
            {"since_seq": 1000, "key": "USDJPY", "limit": 20},
            {"from": now + MINUTE},
        ]
        for params in quote_queries:
            answers = [get_json(api, f"/api/topics/{t}", **params) for t in QUOTE_TOPICS]
            reference = answers[0]
            assert reference["records"] or params.get("from") == now + MINUTE, params
            for topic, answer in zip(QUOTE_TOPICS[1:], answers[1:], strict=True):
                assert answer["records"] == reference["records"], (topic, params)
                assert answer["truncated"] == reference["truncated"], (topic, params)
        assert get_json(api, "/api/topics/quotes.raw")["truncated"] is True
        keys = [get_json(api, f"/api/topics/{t}/keys") for t in QUOTE_TOPICS]
        assert keys[1] == keys[0] and keys[2] == keys[0]
        assert {k["key"]: k["records"] for k in keys[0]} == {s: len(sent) // len(SYMBOLS) for s in SYMBOLS}
        latest = [get_json(api, f"/api/topics/{t}/latest")["records"] for t in QUOTE_TOPICS]
        assert latest[1] == latest[0] and latest[2] == latest[0] and len(latest[0]) == len(SYMBOLS)

        # Candles: the same (ts_ms, key, data) from ClickHouse and files (seq is each topic's own).
        for tf in TIMEFRAMES:
            candle_queries: list[dict[str, Any]] = [
                {"limit": 100_000},
                {"limit": 5},
                {"key": "BTC/USD", "limit": 100_000},
                {"key": "USDJPY", "from": mid - 6 * MINUTE, "to": mid + MINUTE, "limit": 3},
                {"from": start + MINUTE, "limit": 100_000},  # 5 minutes wide: a 5m bucket starts in it
            ]
            for params in candle_queries:
                ch, files = (get_json(api, f"/api/topics/{p}{tf}", **params) for p in ("ohlc.", "fohlc."))
                assert ch["records"], (tf, params)
                assert without_seq(ch["records"]) == without_seq(files["records"]), (tf, params)
                assert ch["truncated"] == files["truncated"], (tf, params)
            ch_keys, file_keys = (get_json(api, f"/api/topics/{p}{tf}/keys") for p in ("ohlc.", "fohlc."))
            assert ch_keys == file_keys, tf
            ch_latest, file_latest = (get_json(api, f"/api/topics/{p}{tf}/latest")["records"] for p in ("ohlc.", "fohlc."))
            assert without_seq(ch_latest) == without_seq(file_latest), tf

        # The candles open at the split were written twice (two INSERTs), and replaced.
        final = candle_map(get_json(api, "/api/topics/ohlc.1m", limit=100_000)["records"])
        assert any(first[slot] != final[slot] for slot in first), "no candle changed after the split"
        health = storage_health(api)
    finally:
        assert server.terminate() == 0, server.output()

    # Candle upserts leave one row per candle, in ClickHouse itself.
    for tf, width in TIMEFRAMES.items():
        topic = f"ohlc.{tf}"
        expected = serve.expected_candles(sent, width)
        assert health[("inserted_records", topic)] > len(expected), topic  # some candles had several versions
        where = f"topic = '{topic}'"
        duplicated = clickhouse_server.query(
            f"SELECT count() FROM (SELECT key, ts_ms, count() AS n FROM {database}.candles FINAL "
            f"WHERE {where} GROUP BY key, ts_ms HAVING n > 1)"
        )
        assert int(duplicated) == 0, topic
    partitions = clickhouse_server.query(
        f"SELECT DISTINCT partition FROM system.parts WHERE database = '{database}' AND table = 'candles' AND active"
    )
    for partition in partitions.split():  # one by one: an old server merges one partition per OPTIMIZE
        clickhouse_server.query(f"OPTIMIZE TABLE {database}.candles PARTITION {partition} FINAL")
    for tf, width in TIMEFRAMES.items():
        rows = clickhouse_server.query(
            f"SELECT key, ts_ms, count(), any(ticks) FROM {database}.candles WHERE topic = 'ohlc.{tf}' "
            "GROUP BY key, ts_ms FORMAT TabSeparated"
        )
        found = {}
        for line in rows.splitlines():
            key, ts_ms, n, ticks = line.split("\t")
            found[(key, int(ts_ms))] = (int(n), int(ticks))
        expected = serve.expected_candles(sent, width)
        assert found == {slot: (1, candle[4]) for slot, candle in expected.items()}, tf
    quote_rows = clickhouse_server.query(
        f"SELECT count(), uniqExact(seq), min(seq), max(seq) FROM {database}.quotes FINAL WHERE topic = 'quotes.ch'"
    )
    assert quote_rows.split() == ["2400", "2400", "1", "2400"]
    clickhouse_server.query(f"DROP DATABASE {database}")


# --- an outage of ClickHouse while quotes keep flowing ------------------------------------


def outage_config(directory: Path, ch_url: str, source: int, api: int) -> Path:
    clickhouse = (
        f'type = "clickhouse", url = "{ch_url}", flush_interval = 0.1, retry_min = 0.05, retry_max = 0.5, '
        'connect_timeout = 1.0, timeout = 5.0'
    )
    path = directory / "config.toml"
    path.write_text(
        f"""
[hub]
status_interval = 1.0

[api]
port = {api}

[[topics]]
name = "quotes.raw"
format = "quote"
storage = {{ type = "memory", capacity = 100000 }}

[[topics]]
name = "quotes.ch"
format = "quote"
storage = {{ {clickhouse} }}

[[topics]]
name = "ohlc.1m"
format = "candle"
storage = {{ {clickhouse} }}

[[sources]]
topic = "quotes.raw"
transport = {{ type = "tcp-server", port = {source} }}

[[processors]]
type = "symbol-filter"
topic = "quotes.raw"
output = "quotes.ch"
deny = ["-none-"]

[[processors]]
type = "ohlc"
topic = "quotes.raw"
timeframes = ["1m"]
"""
    )
    return path


class Feeder(threading.Thread):
    """Sends quotes in small chunks on one connection until stopped (or ``limit`` quotes)."""

    def __init__(self, port: int, quotes: list[dict[str, Any]], chunk: int = 20, pause: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.port, self.quotes, self.chunk, self.pause = port, quotes, chunk, pause
        self.sent = 0
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as feed:
                while not self.halt.is_set() and self.sent < len(self.quotes):
                    part = self.quotes[self.sent : self.sent + self.chunk]
                    feed.sendall(b"".join(json.dumps(q).encode() + b"\n" for q in part))
                    self.sent += len(part)
                    time.sleep(self.pause)
        except BaseException as exc:  # reported by the test thread
            self.error = exc


def crash(clickhouse: Any) -> None:
    """Kill clickhouse-server outright (SIGKILL); ``start()`` brings it back with its data.

    NOTE: a graceful ``stop()`` (SIGTERM) keeps serving open keep-alive
    connections, Gauss's among them, until its 20 s grace runs out: no
    outage at all for that long. A crash is the harsher test anyway.
    """
    process = clickhouse.process
    assert process is not None and process.poll() is None
    process.kill()
    process.wait(timeout=30)


def test_clickhouse_outage_mid_stream_loses_no_accepted_quote(tmp_path: Path, clickhouse_factory: Any) -> None:
    clickhouse = clickhouse_factory()
    now = int(time.time() * 1000)
    quotes = serve.quotes(SYMBOLS, now - now % MINUTE - 40 * MINUTE, 20_000, 100)
    source, api_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    server = serve.Server(outage_config(tmp_path, clickhouse.url, source, api_port))
    feeder = Feeder(source, quotes)
    try:
        feeder.start()
        wait_until(lambda: feeder.sent >= 1000 or not feeder.is_alive(), what="the first quotes")
        wait_until(lambda: storage_health(api).get(("inserted_records", "quotes.ch"), 0) > 0, what="a first insert")
        crash(clickhouse)
        at_stop = feeder.sent
        wait_until(
            lambda: storage_health(api).get(("insert_errors", "quotes.ch"), 0) > 0
            and storage_health(api).get(("insert_errors", "ohlc.1m"), 0) > 0,
            what="the storages to notice the outage",
        )
        wait_until(lambda: feeder.sent >= at_stop + 1000 or not feeder.is_alive(), what="quotes during the outage")
        health = storage_health(api)
        assert health[("healthy", "quotes.ch")] == 0.0 and health[("buffered_records", "quotes.ch")] > 0
        # Meanwhile the ClickHouse topics answer 503 with a message (SPEC 4); the memory topic still answers,
        # and the listing names every topic, the ClickHouse ones with records null and the error.
        for path in ("/api/topics/quotes.ch", "/api/topics/quotes.ch/keys", "/api/topics/ohlc.1m/latest"):
            with pytest.raises(urllib.error.HTTPError) as failed:
                get_json(api, path)
            assert failed.value.code == 503, path
            assert json.loads(failed.value.read())["error"].startswith("storage unavailable: "), path
        assert len(get_json(api, "/api/topics/quotes.raw", limit=10)["records"]) == 10
        listing = {t["name"]: t for t in get_json(api, "/api/topics")}
        for name in ("quotes.ch", "ohlc.1m"):
            assert listing[name]["records"] is None and listing[name]["error"].startswith("storage unavailable"), name
        assert listing["quotes.raw"]["records"] >= at_stop and "error" not in listing["quotes.raw"]
        clickhouse.start()
        at_start = feeder.sent
        wait_until(lambda: feeder.sent >= at_start + 1000 or not feeder.is_alive(), what="quotes after the outage")
        feeder.halt.set()
        feeder.join(timeout=30)
        assert feeder.error is None, feeder.error
        assert 3000 <= feeder.sent < len(quotes), "the feeder must still have been sending at the restart"
        sent = quotes[: feeder.sent]

        wait_until(lambda: stored_count(api, "quotes.raw") == len(sent), what="every quote accepted")
        wait_until(lambda: delivered(api, ["quotes.ch", "ohlc.1m"]), what="the backlog delivered after the outage")
        health = storage_health(api)
        assert health[("dropped_records", "quotes.ch")] == 0 and health[("dropped_records", "ohlc.1m")] == 0

        stored = get_json(api, "/api/topics/quotes.ch", limit=100_000)["records"]
        assert [r["data"] for r in stored] == sent
        assert [r["seq"] for r in stored] == list(range(1, len(sent) + 1))
        assert stored == get_json(api, "/api/topics/quotes.raw", limit=100_000)["records"]
        wait_until(
            lambda: candle_map(get_json(api, "/api/topics/ohlc.1m", limit=100_000)["records"])
            == serve.expected_candles(sent, MINUTE),
            what="candles of every quote",
        )
    finally:
        feeder.halt.set()
        assert server.terminate() == 0, server.output()

    # In ClickHouse itself, not only through the storage: every quote once.
    rows = clickhouse.query(
        "SELECT count(), uniqExact(seq), min(seq), max(seq) FROM gauss.quotes FINAL WHERE topic = 'quotes.ch'"
    )
    assert rows.split() == [str(len(sent)), str(len(sent)), "1", str(len(sent))]


# --- a batch ClickHouse refuses; a SIGKILL of gauss-serve -------------------------------


def quotes_ch_config(directory: Path, ch_url: str, database: str, source: int, api: int, flush_interval: float) -> Path:
    path = directory / "config.toml"
    path.write_text(
        f"""
[api]
port = {api}

[[topics]]
name = "quotes.raw"
format = "quote"
storage = {{ type = "memory", capacity = 100000 }}

[[topics]]
name = "quotes.ch"
format = "quote"

[topics.storage]
type = "clickhouse"
url = "{ch_url}"
database = "{database}"
flush_interval = {flush_interval}
retry_min = 0.05
retry_max = 0.5
spool_dir = "spool"

[[sources]]
topic = "quotes.raw"
transport = {{ type = "tcp-server", port = {source} }}

[[processors]]
type = "symbol-filter"
topic = "quotes.raw"
output = "quotes.ch"
deny = ["-none-"]
"""
    )
    return path


def subscribed(api_port: int, topic: str) -> tuple[str, int]:
    """``(epoch, last_seq)`` of ``topic`` as a WebSocket client learns them when it subscribes."""
    conn = websocket.create_connection(f"ws://127.0.0.1:{api_port}/ws", timeout=10)
    try:
        conn.send(json.dumps({"action": "subscribe", "topic": topic}))
        answer = json.loads(conn.recv())
        return str(answer["epoch"]), int(answer["last_seq"])
    finally:
        conn.close()


def test_a_batch_clickhouse_refuses_is_dead_lettered_and_the_next_is_stored(tmp_path: Path, clickhouse_server: Any) -> None:
    database = f"e2e_{uuid.uuid4().hex[:12]}"
    source, api_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    server = serve.Server(quotes_ch_config(tmp_path, clickhouse_server.url, database, source, api_port, 0.1))
    now = int(time.time() * 1000)
    good = serve.quotes(SYMBOLS, now - 60_000, 30, 100)
    # ClickHouse itself refuses any quote with a bid above 1000 (a CHECK in all but name): the old
    # storage resent that batch forever and stored nothing after it.
    clickhouse_server.query(f"ALTER TABLE {database}.quotes ADD COLUMN guard UInt8 MATERIALIZED throwIf(bid > 1000)")
    refused = {**good[10], "bid": 5000.0, "ask": 5000.5}
    sent = [*good[:10], refused, *good[10:]]
    try:
        for part in (sent[:10], [refused], sent[11:]):  # one batch each: the source reads each send apart
            count = stored_count(api, "quotes.raw")
            send(source, part)
            wait_until(lambda count=count, part=part: stored_count(api, "quotes.raw") == count + len(part), what="a batch")
        wait_until(lambda: delivered(api, ["quotes.ch"]), what="every batch handled")
        health = storage_health(api)
        assert health[("dead_letter_records", "quotes.ch")] == 1.0
        assert health[("dead_letter_batches", "quotes.ch")] == 1.0
        stored = get_json(api, "/api/topics/quotes.ch", limit=1000)["records"]
        assert [r["data"] for r in stored] == [*good[:10], *good[10:]]
        assert [r["seq"] for r in stored] == [*range(1, 11), *range(12, len(sent) + 1)]
        assert "refused" in server.output() and "for good" in server.output()
    finally:
        assert server.terminate() == 0, server.output()
    letters = list((tmp_path / "spool").rglob("dead-letter/*.rowbinary"))
    assert [p.name.split("-")[0] for p in letters] == [f"{11:020d}"]
    clickhouse_server.query(f"DROP DATABASE {database}")


def test_sigkill_of_gauss_serve_keeps_what_clients_saw_under_the_same_epoch(tmp_path: Path, clickhouse_server: Any) -> None:
    database = f"e2e_{uuid.uuid4().hex[:12]}"
    source, api_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    # No insert before the kill: what clients see comes from the spool alone.
    config = quotes_ch_config(tmp_path, clickhouse_server.url, database, source, api_port, 3600.0)
    now = int(time.time() * 1000)
    sent = serve.quotes(SYMBOLS, now - 60_000, 200, 100)
    server = serve.Server(config)
    try:
        send(source, sent)
        wait_until(lambda: stored_count(api, "quotes.ch") == len(sent), what="every quote visible")
        seen = get_json(api, "/api/topics/quotes.ch", limit=1000)["records"]
        epoch, last_seq = subscribed(api_port, "quotes.ch")
        assert last_seq == len(sent)
    finally:
        server.proc.kill()
        server.proc.wait(timeout=30)
        server.log.close()
    assert clickhouse_server.query(f"SELECT count() FROM {database}.quotes") == "0\n"
    server = serve.Server(config)
    try:
        assert subscribed(api_port, "quotes.ch") == (epoch, len(sent)), "same epoch, same last seq"
        wait_until(lambda: delivered(api, ["quotes.ch"]), what="the spool delivered after the restart")
        assert get_json(api, "/api/topics/quotes.ch", limit=1000)["records"] == seen
        more = serve.quotes(SYMBOLS, now, 5, 100)
        send(source, more)
        wait_until(lambda: stored_count(api, "quotes.ch") == len(sent) + 5, what="new quotes after the restart")
        after = get_json(api, "/api/topics/quotes.ch", since_seq=len(sent), limit=1000)["records"]
        assert [r["seq"] for r in after] == list(range(len(sent) + 1, len(sent) + 6)), "no seq handed out twice"
    finally:
        assert server.terminate() == 0, server.output()
    clickhouse_server.query(f"DROP DATABASE {database}")
