"""``gauss.sink.StreamSink`` attached to a real topic, over real sockets; the sink protocol checked at build time."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import gevent
import pytest
from support import wait_until
from support.plugins import ListStorage, connect

from gauss.config import SourceSpec
from gauss.core import TopicRecord
from gauss.errors import ConfigError
from gauss.hub import Hub
from gauss.protocols import TopicSink
from gauss.records import OverflowPolicy
from gauss.registry import convert, create
from gauss.sink import StreamSink
from gauss.topics import Topic
from gauss.wire import WireFormat

NOW = int(time.time() * 1000)


def quotes(n: int, start: int = 0) -> list[TopicRecord]:
    return [
        TopicRecord(NOW + i, "EURUSD", {"symbol": "EURUSD", "bid": 1.0 + i, "ask": 2.0 + i, "ts_ms": NOW + i})
        for i in range(start, start + n)
    ]


def read_exactly(sock: Any, size: int, timeout: float = 20.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < size:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


@pytest.fixture
def attached() -> Any:
    sinks: list[StreamSink] = []

    def make(table: dict[str, Any], **attach: Any) -> tuple[StreamSink, Topic]:
        sink = create("sink", {"type": "stream", "transport": {"type": "tcp-server", "port": 0}, **table})
        topic = Topic("q", "any", ListStorage())
        sink.attach(topic, **{"capacity": 1000, "policy": OverflowPolicy.DROP, **attach})
        sink.start()
        sinks.append(sink)
        return sink, topic

    yield make
    for sink in sinks:
        sink.stop(timeout=1)


def test_the_stream_sink_implements_the_sink_protocol() -> None:
    sink = create("sink", {"type": "stream", "transport": {"type": "tcp-server", "port": 0}})
    assert isinstance(sink, StreamSink) and isinstance(sink, TopicSink)


def test_every_client_gets_the_wire_bytes_of_what_is_published_after_it_connected(attached: Any) -> None:
    sink, topic = attached({"framing": "length-prefixed", "codec": "protobuf", "middleware": ["gzip"]})
    wire = WireFormat.build("length-prefixed", "protobuf", ["gzip"])
    topic.publish(quotes(2))  # nobody connected: sent to no one
    one, two = connect(sink.address), connect(sink.address)
    wait_until(lambda: sink.clients == 2)
    batch = quotes(3, start=2)
    topic.publish(batch)
    expected = wire.encode(batch)
    assert read_exactly(one, len(expected)) == expected == read_exactly(two, len(expected))
    assert sink.records_sent == 6 and sink.bytes_sent == 2 * len(expected)
    assert sink.description == f"sink q: {sink.transport.description} (protobuf -> gzip -> length-prefixed)"
    one.close()
    two.close()


def test_a_client_that_does_not_read_loses_records_under_drop_and_the_other_gets_all(attached: Any) -> None:
    sink, topic = attached({"transport": {"type": "tcp-server", "port": 0, "send_buffer": 16384}}, capacity=100)
    stalled, reader = connect(sink.address), connect(sink.address)
    wait_until(lambda: sink.clients == 2)
    received = b""
    sent = 0
    while topic.subscriptions and all(sub.dropped == 0 for sub in topic.subscriptions):
        topic.publish(quotes(20, start=sent))
        sent += 20
        reader.settimeout(5)
        while received.count(b"\n") < sent:
            received += reader.recv(1 << 16)
        assert sent < 200_000, "the stalled client never lost a record"
    assert received.count(b"\n") == sent
    assert sorted(sub.dropped > 0 for sub in topic.subscriptions) == [False, True]
    stalled.close()
    reader.close()


def test_stop_sends_what_the_queues_hold_then_closes(attached: Any) -> None:
    sink, topic = attached({})
    client = connect(sink.address)
    wait_until(lambda: sink.clients == 1)
    topic.publish(quotes(500))
    sink.stop(timeout=10)
    data = b""
    client.settimeout(10)
    while chunk := client.recv(1 << 16):
        data += chunk
    client.close()
    assert data.count(b"\n") == 500
    assert sink.clients == 0


def test_closed_by_counts_the_sinks_and_the_transports_disconnects(attached: Any) -> None:
    sink, _ = attached({"transport": {"type": "tcp-server", "port": 0, "max_connections": 1}})
    first = connect(sink.address)
    wait_until(lambda: sink.clients == 1)
    second = connect(sink.address)  # pushes out the first
    wait_until(lambda: sink.closed_by.get("max_connections") == 1)
    assert sink.closed_by == {**sink.transport.closed_by, "write_timeout": 0, "slow": 0}
    first.close()
    second.close()


class RecordConn:
    """A connection that takes records (a message bus), as :class:`gauss.protocols.RecordConnection` declares."""

    peer = "bus"

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[TopicRecord], bytes]] = []
        self._done = gevent.event.Event()

    def recv(self, max_bytes: int = 65536) -> bytes:
        return b""

    def sendall(self, data: bytes) -> None:
        raise AssertionError("a record connection is sent records, not bytes")

    def send_records(
        self, topic: str, records: Sequence[TopicRecord], encode: Callable[[list[TopicRecord]], bytes]
    ) -> int:
        data = encode(list(records))
        self.batches.append((topic, list(records), data))
        return len(data)

    def close(self) -> None:
        self._done.set()

    @property
    def closed(self) -> bool:
        return self._done.is_set()


class OneConnection:
    """A transport that serves one :class:`RecordConn`."""

    description = "one record connection"

    def __init__(self) -> None:
        self.conn = RecordConn()
        self._greenlet: gevent.Greenlet | None = None

    def serve(self, handler: Callable[[Any], None]) -> None:
        self._greenlet = gevent.spawn(handler, self.conn)

    def close(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)


def test_a_record_connection_gets_the_records_and_the_encoder() -> None:
    transport = OneConnection()
    sink = StreamSink(transport, WireFormat.build("lines", "json"))
    topic = Topic("q", "any", ListStorage())
    sink.attach(topic, capacity=100, policy=OverflowPolicy.DROP)
    sink.start()
    wait_until(lambda: sink.clients == 1)
    batch = quotes(3)
    topic.publish(batch)
    wait_until(lambda: transport.conn.batches)
    [(name, sent, data)] = transport.conn.batches
    assert (name, [r.data for r in sent], data) == ("q", [r.data for r in batch], sink.wire.encode(batch))
    assert (sink.records_sent, sink.bytes_sent) == (3, len(data))
    sink.stop(timeout=1)


def test_lines_sink_of_a_binary_codec_is_refused_with_the_spec_2_message() -> None:
    with pytest.raises(ConfigError, match=r"^codec: codec 'avro' is binary; 'lines' framing carries text codecs only"):
        create("sink", {"type": "stream", "transport": {"type": "tcp-server", "port": 0}, "codec": "avro"})
    table = {
        "type": "stream",
        "transport": {"type": "tcp-server", "port": 0},
        "framing": "length-prefixed",
        "codec": "avro",
    }
    assert create("sink", table).wire.chain(outbound=True) == "avro -> length-prefixed"


def full_quote(i: int, symbol: str) -> TopicRecord:
    return TopicRecord(NOW + i, symbol, {"symbol": symbol, "bid": 1.5, "ask": 1.75, "bid_size": 1.0, "ask_size": 2.0, "ts_ms": NOW + i})


@contextmanager
def loopback(wire_table: dict[str, Any]) -> Iterator[tuple[Hub, Any]]:
    """A started hub whose topic ``a`` goes out through a sink of ``wire_table`` and back into topic ``b`` (and the source)."""
    hub = Hub.from_config(
        {
            "hub": {"status_interval": 0},
            "topics": [{"name": "a", "format": "quote"}, {"name": "b", "format": "quote"}],
            "sinks": [{"topic": "a", "transport": {"type": "tcp-server", "port": 0}, **wire_table}],
        }
    )
    hub.start()
    try:
        port = hub.sinks[0].address[1]  # type: ignore[attr-defined]
        source = hub.add_source(convert({"topic": "b", "transport": {"type": "tcp-client", "port": port}, **wire_table}, SourceSpec))
        wait_until(lambda: hub.sinks[0].clients == 1)  # type: ignore[attr-defined]
        yield hub, source
    finally:
        hub.stop()


def test_what_a_sink_writes_a_source_with_the_same_table_reads() -> None:
    """Sink -> tcp-client source loopback with two middleware: one WireFormat, so the order agrees both ways."""
    with loopback({"framing": "length-prefixed", "codec": "avro", "middleware": ["lz4", "snappy"]}) as (hub, source):
        assert source.wire.chain() == "length-prefixed -> lz4 -> snappy -> avro"
        batch = [full_quote(i, s) for i, s in enumerate(["EURUSD", "GBPUSD", "USDJPY"])]
        hub.publish("a", batch)
        wait_until(lambda: hub.topic("b").count() == 3)
        assert [r.data for r in hub.query("b").records] == [r.data for r in batch]
        assert source.bad_frames == 0


def test_a_record_that_cannot_be_a_line_is_skipped_and_the_rest_of_its_batch_sent() -> None:
    """A symbol holding a newline is a valid JSON quote; as a CSV row it cannot be a line: only it is lost, not the batch or the client."""
    with loopback({"framing": "lines", "codec": "csv"}) as (hub, source):
        hub.publish("a", [full_quote(0, "NLA"), full_quote(1, "NL\nX"), full_quote(2, "NLB")])
        hub.publish("a", [full_quote(3, "NLC")])
        wait_until(lambda: hub.topic("b").count() == 3)
        assert [r.key for r in hub.query("b").records] == ["NLA", "NLB", "NLC"]
        assert hub.sinks[0].wire.framing.skipped == 1  # type: ignore[attr-defined]
        assert source.bad_frames == 0 and source.connections == 1
