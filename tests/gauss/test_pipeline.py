"""Sources and stream sinks of an in-process hub, over real sockets on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from typing import Any, Iterator

import gevent
import gevent.socket
import pytest
from support import wait_until
from support.plugins import connect, lines, quote, read_lines, send_until_cut

from gauss.config import load_config
from gauss.core import encode_length_prefixed
from gauss.errors import ConfigError
from gauss.hub import Hub
from gauss.registry import create

NOW = int(time.time() * 1000)


def config(**source_options: Any) -> dict[str, Any]:
    return {
        "hub": {"status_interval": 0},
        "topics": [
            {"name": "quotes.raw", "format": "quote"},
            {"name": "bad.quotes", "format": "any"},
            {"name": "ohlc.*", "format": "candle"},
        ],
        "sources": [{"topic": "quotes.raw", "transport": {"type": "tcp-server", "port": 0}, **source_options}],
        "sinks": [{"topic": "quotes.raw", "transport": {"type": "tcp-server", "port": 0}, "queue_size": 200}],
    }


@pytest.fixture
def make_hub() -> Iterator[Any]:
    hubs: list[Hub] = []

    def make(cfg: dict[str, Any]) -> Hub:
        hub = Hub.from_config(cfg)
        hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.stop()


def test_quotes_in_come_out_on_two_sink_clients_identically_and_in_order(make_hub: Any) -> None:
    hub = make_hub(config())
    one, two = connect(hub.sinks[0].address), connect(hub.sinks[0].address)
    wait_until(lambda: hub.sinks[0].clients == 2)
    sent = [quote("EURUSD", 1.08 + i * 1e-5, 1.0802 + i * 1e-5, NOW + i) for i in range(40)]
    with connect(hub.sources[0].address) as feed:
        feed.sendall(lines(sent))
        got_one, got_two = read_lines(one, 40), read_lines(two, 40)
    assert got_one == got_two
    assert [json.loads(line) for line in got_one] == sent
    one.close()
    two.close()


def test_garbage_between_good_lines_loses_no_good_line(make_hub: Any) -> None:
    hub = make_hub(config(dead_letter="bad.quotes"))
    good = [quote("GBPUSD", 1.25, 1.2502, NOW + i) for i in range(10)]
    garbage = [b"{not json", b"\xff\xfe", b'{"symbol": "X"}', b"[1,2]", json.dumps(quote("X", -1.0, 1.0, NOW)).encode()]
    stream = b""
    for i, q in enumerate(good):
        stream += json.dumps(q).encode() + b"\n"
        if i < len(garbage):
            stream += garbage[i] + b"\n"
    with connect(hub.sources[0].address) as feed:
        feed.sendall(stream)
        wait_until(lambda: hub.topic("quotes.raw").last_seq == 10, what="10 good quotes")
        source = hub.sources[0]
        assert source.bad_frames == 4 and source.rejected_quotes == 1
        stored = hub.query("quotes.raw", limit=100).records
        assert [r.data for r in stored] == good
        letters = hub.query("bad.quotes", limit=100).records
        assert len(letters) == 5
        assert base64.b64decode(letters[0].data["raw"]) == b"{not json"
        assert "bad JSON" in letters[0].data["reason"]
        assert any("rejected quote" in r.data["reason"] for r in letters)
        assert hub.metrics.value("gauss_source_decode_errors_total", source="quotes.raw", reason="bad_frame") == 4
        # The connection is still open: one more good quote arrives.
        feed.sendall(lines([quote("GBPUSD", 1.26, 1.2602, NOW + 100)]))
        wait_until(lambda: hub.topic("quotes.raw").last_seq == 11)


def test_oversize_frame_closes_only_its_connection(make_hub: Any) -> None:
    hub = make_hub(config(max_frame_bytes=200))
    good, bad = connect(hub.sources[0].address), connect(hub.sources[0].address)
    bad.sendall(b"x" * 1000)
    bad.settimeout(10)
    assert bad.recv(10) == b""  # the server closed it
    good.sendall(lines([quote("EURUSD", 1.1, 1.2, NOW)]))
    wait_until(lambda: hub.topic("quotes.raw").last_seq == 1)
    assert hub.sources[0].oversize == 1
    good.close()
    bad.close()


def test_the_frames_before_an_oversize_one_in_the_same_read_are_kept(make_hub: Any) -> None:
    """SPEC section 6: the oversize frame closes its connection; the good frames ahead of it are not lost."""
    cfg = config(max_frame_bytes=200)
    cfg["sources"][0]["framing"] = "length-prefixed"
    hub = make_hub(cfg)
    sock = connect(hub.sources[0].address)
    good = [json.dumps(quote(s, 1.1, 1.2, NOW)).encode() for s in ("EURUSD", "GBPUSD")]
    sock.sendall(encode_length_prefixed(good) + (201).to_bytes(4, "big"))  # one write: two frames, then a header over the limit
    sock.settimeout(10)
    assert sock.recv(10) == b""  # the server closed it
    wait_until(lambda: hub.topic("quotes.raw").last_seq == 2)
    assert [r.key for r in hub.query("quotes.raw").records] == ["EURUSD", "GBPUSD"]
    assert hub.sources[0].oversize == 1
    sock.close()


def test_stalled_sink_client_does_not_stop_the_others_or_ingest(make_hub: Any) -> None:
    cfg = config()
    cfg["sinks"][0]["transport"]["send_buffer"] = 16384  # so the stalled client's backlog reaches its queue soon
    hub = make_hub(cfg)
    stalled = connect(hub.sinks[0].address)  # never reads
    reader = connect(hub.sinks[0].address)
    wait_until(lambda: hub.sinks[0].clients == 2)
    padding = "x" * 5000  # big payloads fill the stalled client's socket buffers quickly
    total, step = 3000, 100
    received: list[bytes] = []
    with connect(hub.sources[0].address) as feed:
        # In lock step with the reader, so only the stalled client can fall behind.
        for start in range(0, total, step):
            feed.sendall(lines([quote("EURUSD", 1.1, 1.2, NOW + i, note=padding) for i in range(start, start + step)]))
            received.extend(read_lines(reader, step, timeout=30))
    assert [json.loads(line)["ts_ms"] for line in received] == [NOW + i for i in range(total)]
    assert hub.topic("quotes.raw").last_seq == total
    wait_until(lambda: hub.metrics.value("gauss_subscriber_dropped_records_total", topic="quotes.raw", kind="sink") > 0)
    stalled.close()
    reader.close()


def test_stop_publishes_what_the_source_queued(make_hub: Any) -> None:
    hub = make_hub(config())
    with connect(hub.sources[0].address) as feed:
        feed.sendall(lines([quote("EURUSD", 1.1, 1.2, NOW + i) for i in range(500)]))
        wait_until(lambda: hub.sources[0].records == 500)
    hub.stop()
    assert hub.topic("quotes.raw").last_seq == 500


# --- hostile clients (issue 11) -------------------------------------------------------------

BOMB_FRAME = 1 << 20  # each bomb frame inflates to exactly max_frame_bytes: no single frame is too big


class Ticker:
    """The longest the loop ran without giving a greenlet that sleeps 5 ms its turn.

    Measured in this thread's CPU time (``time.thread_time``) as well as wall time: on a
    shared, loaded machine the wall-clock gaps include time the OS gave to other processes,
    which no code of ours can prevent; the CPU time between two ticks is the work the loop
    did without yielding.
    """

    def __init__(self) -> None:
        self.longest_cpu = 0.0
        self.longest_wall = 0.0
        self._greenlet = gevent.spawn(self._tick)

    def _tick(self) -> None:
        last_cpu, last_wall = time.thread_time(), time.perf_counter()
        while True:
            gevent.sleep(0.005)
            cpu, wall = time.thread_time(), time.perf_counter()
            self.longest_cpu = max(self.longest_cpu, cpu - last_cpu)
            self.longest_wall = max(self.longest_wall, wall - last_wall - 0.005)
            last_cpu, last_wall = cpu, wall

    def stop(self) -> float:
        """The longest stall in CPU seconds."""
        self._greenlet.kill()
        return self.longest_cpu


def compressed_config(name: str, **source_options: Any) -> dict[str, Any]:
    cfg = config(framing="length-prefixed", middleware=[name], **source_options)
    cfg["sinks"] = []
    return cfg


@pytest.mark.parametrize(("name", "budget"), [("gzip", None), ("lz4", None), ("snappy", 2 << 20)])
def test_compression_bombs_in_small_frames_close_their_connection_without_stalling_the_loop(
    make_hub: Any, name: str, budget: int | None
) -> None:
    # Snappy inflates at most ~21x, so a short read may stay under the default 4 MiB: a smaller budget shows the same rule.
    hub = make_hub(compressed_config(name, **({"max_inflate_bytes": budget} if budget else {})))
    source = hub.sources[0]
    middleware = source.middleware[0]
    bomb = encode_length_prefixed(middleware.encode([bytes(BOMB_FRAME)]) * 248)
    good_quotes = [quote("EURUSD", 1.1, 1.2, NOW + i) for i in range(20)]
    good_frames = encode_length_prefixed(middleware.encode([json.dumps(q).encode() for q in good_quotes]))
    ticker = Ticker()
    with connect(source.address) as feed, connect(source.address) as attacker:
        feed.sendall(good_frames[: len(good_frames) // 2])
        send_until_cut(attacker, bomb)  # a steady sender
        feed.sendall(good_frames[len(good_frames) // 2 :])
        wait_until(lambda: hub.topic("quotes.raw").last_seq == 20, what="the good quotes on the other connection")
    longest = ticker.stop()
    assert source.inflate_closed == 1
    assert hub.metrics.value("gauss_source_closed_connections_total", source="quotes.raw", reason="inflate_budget") == 1
    assert [r.data for r in hub.query("quotes.raw", limit=100).records] == good_quotes
    print(f"{name}: longest stall {longest * 1000:.1f} ms CPU, {ticker.longest_wall * 1000:.1f} ms wall")
    assert longest < 0.1, f"the loop stalled {longest * 1000:.0f} ms"


def test_connection_churn_is_counted_in_the_status_line_not_logged_per_connection(
    make_hub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config()
    cfg["hub"]["status_interval"] = 0.2
    cfg["sources"][0]["transport"]["max_connections"] = 20
    caplog.set_level(logging.INFO)
    hub = make_hub(cfg)
    idle = [connect(hub.sources[0].address) for _ in range(200)]  # 180 of them pushed out again
    for sock in idle[:50]:
        sock.close()
    with connect(hub.sources[0].address) as feed:
        feed.sendall(lines([quote("EURUSD", 1.1, 1.2, NOW)]))
        wait_until(lambda: hub.topic("quotes.raw").last_seq == 1, what="the feeder's quote")
    transport = hub.sources[0].transport
    wait_until(lambda: transport.accepted == 201)
    evicted = transport.closed_by["max_connections"]
    assert evicted >= 180
    assert hub.metrics.value("gauss_source_closed_connections_total", source="quotes.raw", reason="max_connections") == evicted

    def status_total(pattern: str) -> int:
        return sum(int(n) for r in caplog.records for n in re.findall(pattern, r.getMessage()))

    wait_until(lambda: status_total(r"source max_connections (\d+)") == evicted, what="the evictions in status lines")
    assert status_total(r"source connections \d+ \(\+(\d+)") == 201
    chatter = [
        r.getMessage() for r in caplog.records if r.name.startswith(("gauss", "gauss_plugins")) and "status:" not in r.getMessage()
    ]
    assert len(chatter) <= 6, chatter  # start-up lines only, nothing per connection
    for sock in idle:
        sock.close()


def sink_config(**sink_options: Any) -> dict[str, Any]:
    cfg = config()
    cfg["sinks"][0].update(sink_options)
    cfg["sinks"][0]["transport"]["send_buffer"] = 16384  # so a stalled client's backlog reaches the sink soon
    return cfg


def stalled_client(address: tuple[str, int]) -> Any:
    """A client that never reads, with a small receive buffer."""
    sock = gevent.socket.socket()
    sock.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(address)
    return sock


def hung_up(sock: Any, timeout: float = 10.0) -> bool:
    """Read what the server had sent until it closed the connection (False on a timeout)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def feed_until(hub: Hub, reader: Any, done: Any, timeout: float = 20.0) -> int:
    """Feed padded quotes in lock step with ``reader`` until ``done()``; the number of quotes sent."""
    padding = "x" * 5000
    sent = 0
    deadline = time.monotonic() + timeout
    with connect(hub.sources[0].address) as feed:
        while not done():
            assert time.monotonic() < deadline, "the stalled client was never disconnected"
            feed.sendall(lines([quote("EURUSD", 1.1, 1.2, NOW + sent + i, note=padding) for i in range(50)]))
            got = read_lines(reader, 50, timeout=30)
            assert [json.loads(line)["ts_ms"] for line in got] == [NOW + sent + i for i in range(50)]
            sent += 50
    return sent


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"write_timeout_s": 0.5, "overflow_grace_s": 600, "queue_size": 100_000}, "write_timeout"),
        ({"write_timeout_s": 600, "overflow_grace_s": 0.3, "queue_size": 200}, "slow"),
    ],
)
def test_sink_client_that_stops_reading_is_disconnected(make_hub: Any, options: dict[str, Any], reason: str) -> None:
    # write_timeout: one write blocks past write_timeout_s; slow: the queue stays overflowed past overflow_grace_s.
    hub = make_hub(sink_config(**options))
    sink = hub.sinks[0]
    stalled = stalled_client(sink.address)
    reader = connect(sink.address)
    wait_until(lambda: sink.clients == 2)
    started = time.monotonic()
    sent = feed_until(hub, reader, lambda: sink.disconnects[reason] == 1)
    assert time.monotonic() - started < 10
    assert hung_up(stalled)
    wait_until(lambda: sink.clients == 1, what="the stalled client gone")
    assert sink.disconnects == {"write_timeout": 0, "slow": 0, reason: 1}
    assert hub.metrics.value("gauss_sink_disconnects_total", sink="quotes.raw", reason=reason) == 1
    with connect(hub.sources[0].address) as feed:  # the reader is still served
        feed.sendall(lines([quote("EURUSD", 1.1, 1.2, NOW + sent)]))
        assert json.loads(read_lines(reader, 1)[0])["ts_ms"] == NOW + sent
    stalled.close()
    reader.close()


def test_sink_options_are_checked() -> None:
    table = {"type": "stream", "transport": {"type": "tcp-server", "port": 0}}
    sink = create("sink", table)
    assert (sink.write_timeout_s, sink.overflow_grace_s) == (30.0, 10.0)
    with pytest.raises(ConfigError, match="write_timeout_s: Expected float >= 0.001"):
        create("sink", {**table, "write_timeout_s": 0})
    with pytest.raises(ConfigError, match="overflow_grace_s: Expected float, got str"):
        create("sink", {**table, "overflow_grace_s": "soon"})


def test_max_inflate_bytes_defaults_to_4_mib_and_is_checked() -> None:
    assert load_config(config()).sources[0].max_inflate_bytes == 4 << 20
    assert load_config(config(max_inflate_bytes=1000)).sources[0].max_inflate_bytes == 1000
    with pytest.raises(ConfigError, match=r"sources\[0\]\.max_inflate_bytes: Expected int >= 1, got 0"):
        load_config(config(max_inflate_bytes=0))


def test_sink_clients_the_transport_closes_leave_at_once_even_on_a_quiet_topic(make_hub: Any) -> None:
    cfg = config()
    cfg["sinks"][0]["transport"]["max_connections"] = 2
    hub = make_hub(cfg)
    sink = hub.sinks[0]
    first = connect(sink.address)
    wait_until(lambda: sink.clients == 1)
    gevent.sleep(0.02)
    others = [connect(sink.address) for _ in range(5)]  # each pushes out the longest-idle client
    wait_until(lambda: sink.transport.closed_by["max_connections"] == 4)
    wait_until(lambda: sink.clients == 2, timeout=3, what="the pushed-out clients' subscriptions gone")
    assert len(hub.topic("quotes.raw").subscriptions) == 2
    assert hub.metrics.value("gauss_sink_disconnects_total", sink="quotes.raw", reason="max_connections") == 4
    assert hung_up(first)
    for sock in [first, *others]:
        sock.close()
