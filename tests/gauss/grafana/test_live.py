"""The datasource against a real ``gauss-serve`` fed with quotes over its TCP source.

Grafana's side is played by :mod:`gauss.grafana.harness` (the real
executable, handshake, gRPC); Gauss is a real server process on free ports
with a lines+JSON source, the OHLC processor and the REST/WebSocket API.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pyarrow as pa
import pytest
from support import free_ports

from gauss.grafana.harness import PluginProcess, plugin_context
from gauss.grafana.pluginv2 import backend_pb2 as pb

SYMBOLS = ("EURUSD", "GBPUSD")
HISTORY_STEP_MS = 10_000
HISTORY_QUOTES = 600  # 100 minutes of quotes every 10 s per symbol
TIMEFRAMES = ("1s", "5s", "1m", "5m", "15m", "1h", "4h", "1d")
ALLOWED_TYPES = (pa.string(), pa.int64(), pa.float64(), pa.timestamp("ns"))
TOKEN = "s3cret-token"


CONFIG = """
[api]
bind = "127.0.0.1"
port = {api_port}
token = "{token}"

[hub]
status_interval = 0

[[topics]]
name = "quotes.raw"
format = "quote"
storage = {{ type = "file", dir = "{data}/quotes" }}

[[topics]]
name = "ohlc.*"
format = "candle"
storage = "memory"
create = [{ohlc_topics}]

[[sources]]
topic = "quotes.raw"
transport = {{ type = "tcp-server", bind = "127.0.0.1", port = {source_port} }}
framing = "lines"
codec = "json"

[[processors]]
type = "ohlc"
topic = "quotes.raw"
"""


@dataclass
class GaussServer:
    """A running ``gauss-serve`` and how to reach it."""

    config: Path
    api_port: int
    source_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.config.with_name("gauss-serve.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        command = [str(Path(sys.executable).with_name("gauss-serve")), "--config", str(self.config)]
        # A file, not a pipe: a full pipe would block the server's logging.
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, cwd=self.config.parent)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gauss-serve exited: {self.log.read_text()}")
            try:
                if self.get("/api/health") == {"status": "ok"}:
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("gauss-serve did not come up within 60 s")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def _open(self, path: str) -> bytes:
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()  # type: ignore[no-any-return]

    def get(self, path: str) -> object:
        return json.loads(self._open(path))

    def metrics(self) -> str:
        return self._open("/metrics").decode()

    def send(self, quotes: list[dict]) -> None:
        """Send quotes as JSON lines over the TCP source, one connection."""
        payload = b"".join(json.dumps(q).encode() + b"\n" for q in quotes)
        with socket.create_connection(("127.0.0.1", self.source_port), timeout=10) as connection:
            connection.sendall(payload)


def quote(symbol: str, ts_ms: int, bid: float) -> dict:
    return {"symbol": symbol, "bid": bid, "ask": round(bid + 0.0002, 6), "bid_size": 1.0 + ts_ms % 7,
            "ask_size": 2.5, "ts_ms": ts_ms}


def make_server(directory: Path) -> GaussServer:
    """A configured (not yet started) gauss-serve in ``directory`` on free ports."""
    api_port, source_port = free_ports(2)
    config = directory / "config.toml"
    ohlc_topics = ", ".join(f'"ohlc.{tf}"' for tf in TIMEFRAMES)
    config.write_text(
        CONFIG.format(api_port=api_port, source_port=source_port, data=directory, ohlc_topics=ohlc_topics, token=TOKEN)
    )
    return GaussServer(config, api_port, source_port)


@pytest.fixture
def fresh_gauss(tmp_path: Path) -> Iterator[GaussServer]:
    """A running gauss-serve with no records, for tests that restart it."""
    server = make_server(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gauss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GaussServer, int, int]]:
    """A gauss-serve holding 100 minutes of history for EURUSD and GBPUSD; yields it and the range."""
    server = make_server(tmp_path_factory.mktemp("gauss"))
    server.start()
    now = int(time.time() * 1000)
    start = now - now % 60_000 - HISTORY_QUOTES * HISTORY_STEP_MS
    history = [quote(symbol, start + i * HISTORY_STEP_MS, 1.1 + 0.0001 * ((i * 37 + n) % 101))
               for i in range(HISTORY_QUOTES) for n, symbol in enumerate(SYMBOLS)]
    server.send(history)
    last = history[-1]["ts_ms"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        candles = server.get(f"/api/topics/ohlc.1m?key=GBPUSD&from={last - last % 60_000}")["records"]  # type: ignore[index]
        quotes = server.get(f"/api/topics/quotes.raw?key=GBPUSD&from={last}")["records"]  # type: ignore[index]
        if candles and quotes:
            break
        time.sleep(0.2)
    else:
        server.stop()
        raise AssertionError("history did not reach the candle topics")
    time.sleep(0.6)  # let the open candles' last versions be published
    try:
        yield server, start, last
    finally:
        server.stop()


def rest_records(server: GaussServer, topic: str, symbol: str, from_ms: int, to_ms: int, limit: int) -> list[dict]:
    answer = server.get(f"/api/topics/{topic}?key={symbol}&from={from_ms}&to={to_ms}&limit={limit}")
    return answer["records"]  # type: ignore[index,no-any-return]


def decode(blob: bytes) -> pa.Table:
    assert blob[:6] == b"ARROW1" and blob[-6:] == b"ARROW1"
    table = pa.ipc.open_file(pa.BufferReader(blob)).read_all()
    assert set(table.schema.metadata) >= {b"name", b"refId", b"meta"}
    for field in table.schema:
        assert field.type in ALLOWED_TYPES, field
    return table


def data_query(ref_id: str, model: dict, from_ms: int, to_ms: int, max_points: int) -> pb.DataQuery:
    return pb.DataQuery(refId=ref_id, maxDataPoints=max_points, intervalMS=1000, json=json.dumps(model).encode(),
                        timeRange=pb.TimeRange(fromEpochMS=from_ms, toEpochMS=to_ms))


def test_check_health_ok_when_gauss_is_up(plugin: PluginProcess, gauss: tuple[GaussServer, int, int]) -> None:
    server = gauss[0]
    answer = plugin.diagnostics.CheckHealth(pb.CheckHealthRequest(pluginContext=plugin_context(server.url, token=TOKEN)), timeout=30)
    assert answer.status == pb.CheckHealthResponse.OK, answer.message
    assert "Gauss is up" in answer.message


def test_candles_hold_the_values_the_rest_api_returns(plugin: PluginProcess, gauss: tuple[GaussServer, int, int]) -> None:
    server, start, last = gauss
    request = pb.QueryDataRequest(
        pluginContext=plugin_context(server.url, uid="dsuid", token=TOKEN),
        queries=[data_query("A", {"kind": "candles", "timeframe": "1m", "symbols": list(SYMBOLS)}, start, last, 1000)],
    )
    response = plugin.data.QueryData(request, timeout=60).responses["A"]
    assert response.status == 200 and not response.error, response.error
    assert len(response.frames) == len(SYMBOLS)
    for symbol, blob in zip(SYMBOLS, response.frames, strict=True):
        table = decode(blob)
        meta = json.loads(table.schema.metadata[b"meta"])
        assert table.schema.metadata[b"refId"] == b"A"
        assert meta["channel"] == f"ds/dsuid/candles/1m/{symbol}"
        assert "/api/topics/ohlc.1m?" in meta["executedQueryString"]
        assert json.loads(table.schema.field("close").metadata[b"labels"]) == {"symbol": symbol}
        expected = rest_records(server, "ohlc.1m", symbol, start - start % 60_000, last + 1, 100_000)
        assert len(expected) >= HISTORY_QUOTES * HISTORY_STEP_MS // 60_000
        assert table.column("time").cast(pa.int64()).to_pylist() == [r["ts_ms"] * 1_000_000 for r in expected]
        for name in ("open", "high", "low", "close", "ticks"):
            assert table.column(name).to_pylist() == [r["data"][name] for r in expected], name


def test_max_data_points_picks_a_coarser_timeframe(plugin: PluginProcess, gauss: tuple[GaussServer, int, int]) -> None:
    server, start, last = gauss
    model = {"kind": "candles", "timeframe": "1m", "symbols": "EURUSD"}
    request = pb.QueryDataRequest(pluginContext=plugin_context(server.url, token=TOKEN), queries=[data_query("A", model, start, last, 30)])
    response = plugin.data.QueryData(request, timeout=60).responses["A"]
    assert response.status == 200, response.error
    table = decode(response.frames[0])
    meta = json.loads(table.schema.metadata[b"meta"])
    assert meta["custom"]["timeframe"] == "5m" and meta["custom"]["requestedTimeframe"] == "1m"
    assert "/api/topics/ohlc.5m?" in meta["executedQueryString"] and "maxDataPoints is 30" in meta["executedQueryString"]
    assert 0 < table.num_rows <= 30 + 1
    expected = rest_records(server, "ohlc.5m", "EURUSD", start - start % 300_000, last + 1, 100_000)
    assert table.column("close").to_pylist() == [r["data"]["close"] for r in expected]


def test_quotes_hold_the_rest_values_newest_first_when_truncated(plugin: PluginProcess, gauss: tuple[GaussServer, int, int]) -> None:
    server, start, last = gauss
    model = {"kind": "quotes", "symbols": ["GBPUSD"]}
    request = pb.QueryDataRequest(pluginContext=plugin_context(server.url, token=TOKEN), queries=[data_query("Q", model, start, last, 50)])
    response = plugin.data.QueryData(request, timeout=60).responses["Q"]
    assert response.status == 200, response.error
    table = decode(response.frames[0])
    meta = json.loads(table.schema.metadata[b"meta"])
    assert meta["custom"]["truncated"] is True and meta["notices"][0]["severity"] == "warning"
    expected = rest_records(server, "quotes.raw", "GBPUSD", start, last + 1, 50)
    assert len(expected) == 50 and expected[-1]["ts_ms"] == last
    assert table.column("time").cast(pa.int64()).to_pylist() == [r["ts_ms"] * 1_000_000 for r in expected]
    for name in ("bid", "ask", "bid_size", "ask_size"):
        assert table.column(name).to_pylist() == [r["data"][name] for r in expected], name
    assert table.column("mid").to_pylist() == [(r["data"]["bid"] + r["data"]["ask"]) / 2 for r in expected]


def test_unknown_topic_is_a_per_query_error_from_downstream(plugin: PluginProcess, gauss: tuple[GaussServer, int, int]) -> None:
    server, start, last = gauss
    request = pb.QueryDataRequest(
        pluginContext=plugin_context(server.url, token=TOKEN),
        queries=[data_query("A", {"kind": "quotes", "topic": "no.such.topic", "symbols": "EURUSD"}, start, last, 10),
                 data_query("B", {"kind": "candles", "timeframe": "1h", "symbols": "EURUSD"}, start, last, 10)],
    )
    answer = plugin.data.QueryData(request, timeout=60)
    assert answer.responses["A"].status == 404 and answer.responses["A"].errorSource == "downstream"
    assert answer.responses["B"].status == 200 and len(answer.responses["B"].frames) == 1


def test_quotes_of_a_candle_topic_are_a_per_query_400(plugin: PluginProcess, gauss: tuple[GaussServer, int, int]) -> None:
    """Not rows of nulls: the query names a topic that holds no quotes."""
    server, start, last = gauss
    model = {"kind": "quotes", "topic": "ohlc.1m", "symbols": "EURUSD"}
    request = pb.QueryDataRequest(pluginContext=plugin_context(server.url, token=TOKEN), queries=[data_query("C", model, start, last, 10)])
    response = plugin.data.QueryData(request, timeout=60).responses["C"]
    assert response.status == 400 and response.errorSource == "downstream", response
    assert "'ohlc.1m' holds no quotes" in response.error


def test_resources_list_topics_and_symbols(plugin: PluginProcess, gauss: tuple[GaussServer, int, int]) -> None:
    server = gauss[0]

    def call(path: str, url: str = "") -> tuple[int, object]:
        request = pb.CallResourceRequest(pluginContext=plugin_context(server.url, token=TOKEN), path=path, method="GET", url=url or path)
        (answer,) = list(plugin.resource.CallResource(request, timeout=30))
        return answer.code, json.loads(answer.body)

    code, topics = call("topics")
    assert code == 200 and {"quotes.raw", "ohlc.1m"} <= {t["name"] for t in topics}  # type: ignore[union-attr]
    code, keys = call("topics/ohlc.1m/keys")
    assert code == 200 and {k["key"] for k in keys} >= set(SYMBOLS)  # type: ignore[union-attr]
    assert call("symbols", "symbols?topic=quotes.raw") == (200, sorted(SYMBOLS))


class QuoteFeed:
    """Sends one live quote of ``symbol`` every 50 ms over one TCP connection until stopped."""

    def __init__(self, server: GaussServer, symbol: str) -> None:
        self.server = server
        self.symbol = symbol
        self.sent: dict[int, float] = {}  # ts_ms -> monotonic send time
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        connection: socket.socket | None = None
        while not self.stop.wait(0.05):
            ts = int(time.time() * 1000)
            line = json.dumps(quote(self.symbol, ts, 1.2 + (ts % 1000) / 1e6)).encode() + b"\n"
            try:
                if connection is None:
                    connection = socket.create_connection(("127.0.0.1", self.server.source_port), timeout=5)
                connection.sendall(line)
                self.sent[ts] = time.monotonic()
            except OSError:
                if connection is not None:
                    connection.close()
                connection = None
        if connection is not None:
            connection.close()

    def __enter__(self) -> QuoteFeed:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def read_packets(call: grpc.Call, count: int, timeout: float) -> list[tuple[float, dict]]:
    """Read ``count`` packets (arrival time, JSON) or fail after ``timeout`` seconds."""
    packets: list[tuple[float, dict]] = []
    done = threading.Event()

    def reader() -> None:
        try:
            for packet in call:
                packets.append((time.monotonic(), json.loads(packet.data)))
                if len(packets) >= count:
                    break
        except grpc.RpcError:
            pass
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    assert done.wait(timeout), f"only {len(packets)} of {count} packets within {timeout}s"
    return packets


def ws_subscribers(server: GaussServer) -> float:
    """Open WebSocket subscriptions per Gauss's ``/metrics`` (``gauss_subscribers{kind="ws"}``)."""
    total = 0.0
    for line in server.metrics().splitlines():
        if line.startswith("gauss_subscribers{") and re.search(r'kind="ws"', line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_run_stream_delivers_live_quotes_and_candles_then_releases_on_cancel(
    plugin: PluginProcess, gauss: tuple[GaussServer, int, int]
) -> None:
    server = gauss[0]
    context = plugin_context(server.url, uid="dsuid", token=TOKEN)
    before = ws_subscribers(server)
    with QuoteFeed(server, "USDJPY") as feed:
        quotes_call = plugin.stream.RunStream(pb.RunStreamRequest(pluginContext=context, path="quotes/USDJPY"))
        candles_call = plugin.stream.RunStream(pb.RunStreamRequest(pluginContext=context, path="candles/1s/USDJPY"))
        quote_packets = read_packets(quotes_call, 5, 30)
        candle_packets = read_packets(candles_call, 3, 30)
        deadline = time.monotonic() + 30
        while ws_subscribers(server) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ws_subscribers(server) == before + 2
        quotes_call.cancel()
        candles_call.cancel()
    first = quote_packets[0][1]
    assert [f["name"] for f in first["schema"]["fields"]] == ["time", "bid", "ask", "mid", "bid_size", "ask_size"]
    assert all(set(p) == {"data"} for _, p in quote_packets[1:])
    latencies = []
    for arrived, packet in quote_packets:
        times = packet["data"]["values"][0]
        assert all(t in feed.sent for t in times), "stream times must be the quotes' ms timestamps"
        latencies.extend(arrived - feed.sent[t] for t in times)
    assert min(latencies) < 1.0, f"no quote arrived within a second of being sent: {latencies}"
    candle_schema = candle_packets[0][1]["schema"]
    assert [f["name"] for f in candle_schema["fields"]] == ["time", "open", "high", "low", "close", "ticks"]
    assert candle_schema["fields"][1]["labels"] == {"symbol": "USDJPY"}
    assert all(t % 1000 == 0 for _, p in candle_packets for t in p["data"]["values"][0])
    deadline = time.monotonic() + 30
    while ws_subscribers(server) > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ws_subscribers(server) == before, "the Gauss WebSocket subscriptions were not released on cancel"


def test_run_stream_resumes_after_gauss_restarts_without_a_hole(plugin: PluginProcess, fresh_gauss: GaussServer) -> None:
    server = fresh_gauss
    context = plugin_context(server.url, token=TOKEN)
    call = plugin.stream.RunStream(pb.RunStreamRequest(pluginContext=context, path="quotes/AUDUSD"))
    received: list[int] = []
    reader_done = threading.Event()

    def reader() -> None:
        try:
            for packet in call:
                received.extend(json.loads(packet.data)["data"]["values"][0])
        except grpc.RpcError:
            pass
        reader_done.set()

    threading.Thread(target=reader, daemon=True).start()
    now = int(time.time() * 1000)
    before = [quote("AUDUSD", now + i, 0.65) for i in range(5)]
    deadline = time.monotonic() + 30
    while not received and time.monotonic() < deadline:
        server.send(before[:1])  # until the subscription is in place and sees one
        time.sleep(0.3)
        before = before[1:] or [quote("AUDUSD", int(time.time() * 1000), 0.65)]
    assert received, "the stream delivered nothing"
    server.stop()
    server.start()
    # Sent right after the restart, most likely before the plugin has reconnected:
    # only a resumed subscription (since_seq) brings these to the stream.
    after = [quote("AUDUSD", int(time.time() * 1000) + i, 0.66) for i in range(20)]
    server.send(after)
    wanted = {q["ts_ms"] for q in after}
    deadline = time.monotonic() + 30
    while not wanted <= set(received) and time.monotonic() < deadline:
        time.sleep(0.1)
    call.cancel()
    reader_done.wait(10)
    assert wanted <= set(received), f"missing after reconnect: {sorted(wanted - set(received))}"


def test_the_datasource_token_is_what_gets_gauss_to_answer(plugin: PluginProcess, gauss: tuple[GaussServer, int, int]) -> None:
    server, start, last = gauss
    for token in (None, "wrong-token"):
        context = plugin_context(server.url, token=token)
        health = plugin.diagnostics.CheckHealth(pb.CheckHealthRequest(pluginContext=context), timeout=30)
        assert health.status == pb.CheckHealthResponse.ERROR and "check the API token" in health.message
        model = {"kind": "candles", "timeframe": "1m", "symbols": "EURUSD"}
        request = pb.QueryDataRequest(pluginContext=context, queries=[data_query("A", model, start, last, 100)])
        response = plugin.data.QueryData(request, timeout=60).responses["A"]
        assert response.status in (401, 403) and response.errorSource == "downstream" and not response.frames
