"""A Gauss cluster over NATS JetStream (SPEC section 7), as shipped: config.nats.toml shards and config.edge.toml.

A private nats-server (JetStream in tmp_path, ``quotes.* -> quotes.{{partition(2,1)}}.*``)
and gauss-serve processes: two shard nodes and one API edge, each on free
ports. Quotes come from an independent nats-py client to ``quotes.<SYMBOL>``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from gauss_plugins.transport.nats import shard_of
from support import free_port, wait_until
from support.nats import BusClient, NatsServer, quote_messages, require_nats_server
from support.serve import Server, expected_candles, quotes

ROOT = Path(__file__).resolve().parents[2]
MINUTE = 60_000
SYMBOLS = [f"SYM{i:02d}" for i in range(20)]


class Node:
    """One gauss-serve of the cluster, from a shipped config with its ports moved to free ones."""

    def __init__(self, directory: Path, shipped: str, env: dict[str, str], ports: dict[int, int]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        text = (ROOT / shipped).read_text()
        for old, new in ports.items():
            assert f"port = {old}\n" in text or f"port = {old} " in text, old
            text = text.replace(f"port = {old}", f"port = {new}")
        self.config = directory / shipped
        self.config.write_text(text)
        self.env = env
        self.api = next(new for old, new in ports.items() if old in (9200, 9210))
        self.server: Server | None = None

    def start(self) -> Node:
        self.server = Server(self.config, env=self.env)
        return self

    def kill(self) -> None:
        assert self.server is not None
        self.server.proc.send_signal(signal.SIGKILL)
        self.server.proc.wait(30)
        self.server.log.close()
        self.server = None

    def stop(self) -> None:
        if self.server is not None:
            code = self.server.terminate()
            output = self.server.output()
            self.server = None
            assert code == 0, output

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api}{path}", timeout=30) as response:
            return json.loads(response.read())

    def count(self, topic: str) -> int:
        return next((t["records"] or 0) for t in self.get("/api/topics") if t["name"] == topic)

    def records(self, topic: str, key: str) -> list[dict[str, Any]]:
        return sorted(self.get(f"/api/topics/{topic}?key={key}&limit=100000")["records"], key=lambda r: r["seq"])

    def candles(self, topic: str, keys: list[str]) -> dict[tuple[str, int], tuple[float, float, float, float, int]]:
        out = {}
        for key in keys:
            for r in self.get(f"/api/topics/{topic}?key={key}&limit=100000")["records"]:
                d = r["data"]
                out[(r["key"], r["ts_ms"])] = (d["open"], d["high"], d["low"], d["close"], d["ticks"])
        return out


class Cluster:
    def __init__(self, directory: Path, *, edge: bool = True) -> None:
        require_nats_server()
        self.bus = NatsServer(directory / "nats", shards=2).start()
        env = {"GAUSS_NATS_URL": self.bus.url, "GAUSS_SHARDS": "2"}
        self.shards = [
            Node(directory / f"shard{k}", "config.nats.toml", {**env, "GAUSS_SHARD": str(k)}, {9200: free_port(), 9300: free_port()})
            for k in range(2)
        ]
        self.edge = Node(directory / "edge", "config.edge.toml", {**env, "GAUSS_EDGE": "0"}, {9210: free_port()}) if edge else None
        self.nodes = [*self.shards, *([self.edge] if self.edge else [])]
        for node in self.nodes:
            node.start()
        self.client = BusClient(self.bus.url)
        wait_until(self._consumers_ready, 60, "the shards' durable consumers")

    def _consumers_ready(self) -> bool:
        try:
            for k in range(2):
                self.client.consumer_info("QUOTES", f"gauss-shard-{k}")
            if self.edge is not None:
                self.client.consumer_info("GAUSS", "gauss-edge-0-ohlc-1m")
        except Exception:  # noqa: BLE001 - not created yet
            return False
        return True

    def stored(self) -> int:
        return sum(node.count("quotes.raw") for node in self.shards)

    def close(self) -> None:
        try:
            for node in self.nodes:
                if node.server is not None:
                    node.stop()
        finally:
            self.client.close()
            self.bus.stop()


def recent_quotes(count: int, step_ms: int = 100) -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
    return quotes(SYMBOLS, now - now % MINUTE - 30 * MINUTE, count, step_ms)


def check_shards_hold_each_quote_once(cluster: Cluster, sent: list[dict[str, Any]]) -> None:
    for symbol in SYMBOLS:
        held = [node.records("quotes.raw", symbol) for node in cluster.shards]
        owner = shard_of(symbol, 2)
        assert held[1 - owner] == [], f"{symbol} reached both shards"
        assert [(r["ts_ms"], r["data"]["bid"]) for r in held[owner]] == [
            (q["ts_ms"], q["bid"]) for q in sent if q["symbol"] == symbol
        ], f"{symbol}: shard {owner} does not hold each quote once, in order"


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_quotes_reach_one_shard_each_in_order_and_the_edge_serves_all_candles(cluster: Cluster) -> None:
    sent = recent_quotes(6000, step_ms=250)
    cluster.client.publish(quote_messages(sent, per_message=20), stream_ack=True)
    wait_until(lambda: cluster.stored() == len(sent), 90, f"{len(sent)} quotes in the shards")
    check_shards_hold_each_quote_once(cluster, sent)
    assert {shard_of(s, 2) for s in SYMBOLS} == {0, 1}
    expected = expected_candles(sent, MINUTE)
    assert cluster.edge is not None
    wait_until(lambda: cluster.edge.candles("ohlc.1m", SYMBOLS) == expected, 60, "the edge's ohlc.1m")
    for k, shard in enumerate(cluster.shards):  # each shard computed its own symbols' candles
        mine = [s for s in SYMBOLS if shard_of(s, 2) == k]
        assert shard.candles("ohlc.1m", mine) == {key: c for key, c in expected.items() if key[0] in mine}


def test_a_shard_killed_mid_stream_resumes_with_every_quote_once(cluster: Cluster) -> None:
    sent = recent_quotes(40_000, step_ms=40)
    messages = quote_messages(sent, per_message=10)
    victim = cluster.shards[0]
    published = threading.Event()

    def publish() -> None:
        with BusClient(cluster.bus.url) as client:
            for start in range(0, len(messages), 100):  # about 10,000 quotes/s
                client.publish(messages[start : start + 100])
                time.sleep(0.1)
        published.set()

    share = sum(1 for q in sent if shard_of(q["symbol"], 2) == 0)
    feeder = threading.Thread(target=publish, daemon=True)
    feeder.start()
    wait_until(lambda: victim.count("quotes.raw") > 3000, 60, "shard 0 well under way")
    before = victim.count("quotes.raw")
    victim.kill()
    assert before < share, "shard 0 had its whole share before the kill: make the stream longer"
    victim.start()
    feeder.join(120)
    assert published.is_set()
    wait_until(lambda: cluster.stored() == len(sent), 120, f"{len(sent)} quotes in the shards")
    check_shards_hold_each_quote_once(cluster, sent)
    mine = [s for s in SYMBOLS if shard_of(s, 2) == 0]
    expected = {key: c for key, c in expected_candles(sent, MINUTE).items() if key[0] in mine}
    wait_until(lambda: victim.candles("ohlc.1m", mine) == expected, 60, "shard 0's candles after the restart")


def test_nodes_reconnect_after_a_bus_restart_and_lose_nothing_acknowledged(cluster: Cluster) -> None:
    sent = recent_quotes(4000, step_ms=400)
    first, second = sent[:2000], sent[2000:]
    cluster.client.publish(quote_messages(first, per_message=20), stream_ack=True)
    wait_until(lambda: cluster.stored() == len(first), 60, "the first half")
    cluster.client.close()
    cluster.bus.stop()
    time.sleep(3)
    cluster.bus.start()
    cluster.client = BusClient(cluster.bus.url)
    cluster.client.publish(quote_messages(second, per_message=20), stream_ack=True)  # acknowledged by JetStream
    wait_until(lambda: cluster.stored() == len(sent), 90, "every acknowledged quote")
    check_shards_hold_each_quote_once(cluster, sent)
    for node in cluster.nodes:
        connected = [line for line in _metrics(node).splitlines() if line.startswith("gauss_bus_connected{")]
        assert connected and all('transport="nats' in line and line.endswith(" 1.0") for line in connected), connected
    assert cluster.edge is not None
    expected = expected_candles(sent, MINUTE)
    wait_until(lambda: cluster.edge.candles("ohlc.1m", SYMBOLS) == expected, 60, "the edge's ohlc.1m")


def _metrics(node: Node) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.api}/metrics", timeout=30) as response:
        return response.read().decode()
