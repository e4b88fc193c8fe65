"""The ``nats`` transport against a real nats-server (Debian's, started per test with JetStream in tmp_path)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import gevent
import nats.js.errors
import nats.js.manager
import pytest
import support.plugins
from gauss_plugins.transport import nats as bus
from gauss_plugins.transport.nats import fnv1a_32, shard_of, subject_covers, subject_token
from prometheus_client.parser import text_string_to_metric_families
from support import wait_until
from support.nats import BusClient, NatsServer, quote_messages
from support.plugins import ListStorage, quote
from support.serve import serve_command

from gauss.core import TopicRecord
from gauss.errors import ConfigError
from gauss.hub import Hub
from gauss.registry import create
from gauss.wire import WireFormat

START = 1_732_406_400_000
DURABLE_LIST = {"type": "support.plugins:ListStorage", "durable": True}
"""A durable topic storage (SPEC section 7: a JetStream source needs one, or a journal)."""


@pytest.fixture(autouse=True)
def fresh_durable_lists() -> Iterator[None]:
    """A durable ListStorage keeps its records by topic name across hubs: each test starts without any."""
    support.plugins._DURABLE.clear()
    yield
    support.plugins._DURABLE.clear()


def source_table(server: NatsServer, tmp_path: Path, **transport: Any) -> dict[str, Any]:
    table = {"type": "nats", "url": server.url, "subject": "q.>", "stream": "Q", "durable": "d1", "state_dir": str(tmp_path / "state")}
    table.update(transport)
    return table


def quote_hub(tmp_path: Path, transport: dict[str, Any], storage: Any = DURABLE_LIST, journal: Any = None, **source: Any) -> Hub:
    topic = {"name": "quotes.raw", "format": "quote", "storage": storage, **({"journal": journal} if journal else {})}
    config = {
        "hub": {"status_interval": 0},
        "topics": [topic],
        "sources": [{"topic": "quotes.raw", "transport": transport, "max_future_ms": False, **source}],
    }
    hub = Hub.from_config(config, base_dir=tmp_path)
    hub.start()
    return hub


def stream_ready(client: BusClient, stream: str, durable: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            client.consumer_info(stream, durable)
        except Exception:  # noqa: BLE001 - not created yet
            return False
        return True

    return ready


def quotes_for(symbols: list[str], count: int) -> list[dict[str, Any]]:
    return [quote(symbols[i % len(symbols)], 1.0 + i * 1e-6, 1.0001 + i * 1e-6, START + i) for i in range(count)]


def stored(hub: Hub, topic: str = "quotes.raw") -> list[TopicRecord]:
    records = hub.registry.get(topic).query(limit=100_000).records
    return sorted(records, key=lambda r: r.seq)


def samples(hub: Hub, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` in the hub's exposition, as ``(labels, value)``."""
    families = text_string_to_metric_families(hub.metrics.exposition().decode())
    return [(s.labels, s.value) for family in families for s in family.samples if s.name == name]


def sample(hub: Hub, name: str, **labels: str) -> float | None:
    found = [value for have, value in samples(hub, name) if labels.items() <= have.items()]
    assert len(found) <= 1, found
    return found[0] if found else None


# --- pure functions ---------------------------------------------------------------------


def test_fnv1a_32_known_vectors() -> None:
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968
    assert shard_of("foobar", 7) == 0xBF9CF968 % 7


def test_subject_token_escapes_only_what_a_subject_cannot_carry() -> None:
    assert subject_token("EURUSD") == "EURUSD"
    assert subject_token("BTC/USD") == "BTC/USD"
    assert subject_token("€uro") == "€uro"
    assert subject_token("BRK.B") == "BRK%2EB"
    assert subject_token("a b*>%") == "a%20b%2A%3E%25"
    assert subject_token("") == "_"


def test_subject_covers_follows_the_nats_wildcards() -> None:
    covered = [("q.>", "q.a"), ("q.>", "q.a.*"), ("q.>", "q.>"), (">", "a.b"), ("q.*", "q.a"), ("q.*", "q.*"),
               ("q.*.*", "q.0.*"), ("q.a", "q.a"), ("q.*.b", "q.a.b")]  # fmt: skip
    not_covered = [("q.*", "q.>"), ("q.*", "q.a.b"), ("q.>", "q"), ("q.a", "q.*"), ("q.a", "q.b"), ("q.*.b", "q.a.*"),
                   ("ct.*", "zz.*"), ("q.a.b", "q.a")]  # fmt: skip
    assert [pair for pair in covered if not subject_covers(*pair)] == []
    assert [pair for pair in not_covered if subject_covers(*pair)] == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"subject": "q.>", "durable": "d"}, "durable: needs a 'stream'"),
        ({"subject": "q.>", "url": "http://x"}, "url: must be a nats:// or tls:// URL"),
        ({"subject": "q.>", "url": "nats://127.0.0.1:99999"}, r"url: port '99999' is out of range \(1-65535\)"),
        ({"subject": "q.>", "url": "nats://127.0.0.1:0"}, r"url: port 0 is out of range"),
        ({"subject": "q.>", "url": "nats://127.0.0.1:abc"}, "url: port 'abc' is not a number"),
        ({"subject": "q.>", "url": "nats://"}, "url: has no host"),
        ({"subject": "q.>", "url": "tls://:4222"}, "url: has no host"),
        ({"subject": "q.>", "url": "nats://a:4222,nats://b:4222"}, "url: must be one server URL"),
        ({"subject": "q.>", "stream": "Q", "durable": "a.b"}, "durable: must not contain"),
        ({"subject": "q.>", "stream": "Q", "durable": "a/b"}, "durable: must not contain"),
        ({"subject": "q.>", "stream": "C.T", "durable": "d"}, r"stream: must not contain '\.', '\*', '>', '/', '\\', white space or control characters \(a JetStream name\), got 'C.T'"),
        ({"subject": "q", "stream": "Q T"}, "stream: must not contain"),
        ({"subject": "q", "stream": "a\\b"}, "stream: must not contain"),
        ({"subject": "q", "stream": "Q>"}, "stream: must not contain"),
        ({"subject": "zz.*", "stream": "Q", "durable": "d", "stream_subjects": ["ct.*", "q.>"]},
         r"subject: 'zz\.\*' is not within stream_subjects \(ct\.\*, q\.>\): the stream would not hold its messages"),
        ({"subject": "q.>", "stream": "Q", "durable": "d", "stream_subjects": ["q.*"]}, r"subject: 'q\.>' is not within stream_subjects"),
        ({"subject": "q.{symbol}"}, r"subject: unknown placeholder \{symbol\}: a sink's subject may name \{topic\}, \{key\}, \{shard\}"),
        ({"subject": "q.{key}", "stream": "Q", "durable": "d"},
         r"subject: a source's subject takes no placeholders \(\{key\} is for a sink's subject; a sink takes no 'durable'\)"),
        ({"subject": "q..a"}, "subject: must not have an empty token"),
        ({"subject": "q."}, "subject: must not have an empty token"),
        ({"subject": "q.>.a"}, "subject: '>' may only be the last token"),
        ({}, r"subject: missing \(required\)"),
        ({"subject": "q a"}, "subject: must not contain white space"),
        ({"subject": "q", "shard": 2}, "shard: unknown option"),
        ({"subject": "q", "shards": 0}, "shards: Expected int >= 1, got 0"),
        ({"subject": "q", "batch": 100_001}, "batch: Expected int <= 100000"),
        ({"subject": "q", "max_message_bytes": 63}, "max_message_bytes: Expected int >= 64"),
        ({"subject": "q", "ack_wait_s": 0.05}, "ack_wait_s: Expected float >= 0.1"),
        ({"subject": "q", "stream_subjects": ["a", ""]}, r"stream_subjects\[1\]: Expected str of length >= 1"),
        ({"subject": "q", "reconnect_min": 2, "reconnect_max": 1}, "reconnect_max: must be at least reconnect_min"),
        ({"subject": "q", "state_dir": ""}, "state_dir: Expected a path"),
    ],
)
def test_config_errors_name_the_option(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create("transport", {"type": "nats", **table})


def test_a_malformed_url_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[[topics]]\nname = "q"\n[[sources]]\ntopic = "q"\n'
        'transport = { type = "nats", url = "nats://127.0.0.1:99999", subject = "q.>" }\n'
    )
    result = subprocess.run([*serve_command(), "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "sources[0].transport.url: port '99999' is out of range" in result.stderr


def test_well_formed_urls_are_accepted() -> None:
    for url in ("nats://127.0.0.1", "tls://user:secret@nats.example:4443", "nats://[::1]:4222", "nats://nohost.invalid:4222"):
        assert create("transport", {"type": "nats", "url": url, "subject": "q"}).url == url
    assert create("transport", {"type": "nats", "url": "nats://[::1]:4223", "subject": "q"}).address == ("::1", 4223)


def test_options_reach_the_transport(tmp_path: Path) -> None:
    table = {"type": "nats", "subject": "q.>", "stream": "Q", "durable": "d", "shards": 3, "state_dir": "state"}
    transport = create("transport", table, base_dir=tmp_path)
    assert (transport.url, transport.subject, transport.stream, transport.durable) == (bus.DEFAULT_URL, "q.>", "Q", "d")
    assert transport.stream_subjects == ["q.>"] and transport.shards == 3
    assert (transport.batch, transport.max_ack_pending, transport.ack_wait_s, transport.queue_size) == (256, 10_000, 30.0, 1024)
    assert (transport.reconnect_min, transport.reconnect_max, transport.max_message_bytes) == (0.1, 1.0, 1 << 20)
    assert transport.state_dir == tmp_path / "state"
    assert create("transport", {"type": "nats", "subject": "q"}, base_dir=tmp_path).state_dir == tmp_path / "nats-state"
    assert create("transport", {"type": "nats", "subject": "q", "stream_subjects": ["a", "b"]}).stream_subjects == ["a", "b"]


def test_subjects_within_stream_subjects_and_sink_templates_are_accepted() -> None:
    durable = {"type": "nats", "stream": "Q", "durable": "d"}
    assert create("transport", {**durable, "subject": "q.0.*", "stream_subjects": ["x.>", "q.*.*"]}).subject == "q.0.*"
    assert create("transport", {**durable, "subject": "q.a", "stream_subjects": ["q.>"]}).subject == "q.a"
    assert create("transport", {"type": "nats", "subject": "gauss.{topic}.{shard}.{key}", "stream": "GAUSS"}).stream == "GAUSS"


def test_a_jetstream_source_refuses_a_shedding_queue(nats_server: NatsServer, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^sources\[0\]\.policy: a JetStream source must use back_pressure .*, got drop$"):
        quote_hub(tmp_path, source_table(nats_server, tmp_path), policy="drop")


@pytest.mark.parametrize(
    ("storage", "journal", "refused"),
    [
        ("memory", None, r"its 'memory' storage is not durable and it has no journal"),
        # a storage's durability is the built instance's: this class has no ``durable`` until it is made
        ({"type": "support.plugins:ListStorage"}, None, r"its 'support.plugins:ListStorage' storage is not durable and it has no journal"),
        ("memory", {"type": "raw-file", "path": "ticks"}, None),
        (DURABLE_LIST, None, None),
    ],
)
def test_a_jetstream_source_needs_a_durable_topic(
    nats_server: NatsServer, tmp_path: Path, storage: Any, journal: Any, refused: str | None
) -> None:
    """SPEC section 7: a message is acknowledged once its records are durable in the topic, so a volatile topic is refused."""
    table = source_table(nats_server, tmp_path)
    if refused is not None:
        with pytest.raises(ConfigError, match=rf"^sources\[0\]\.transport\.durable: topic 'quotes.raw' is not durable \({refused}\): .* give the topic a journal or a durable storage$"):
            quote_hub(tmp_path, table, storage=storage, journal=journal)
        return
    hub = quote_hub(tmp_path, table, storage=storage, journal=journal)
    try:
        with BusClient(nats_server.url) as client:
            wait_until(stream_ready(client, "Q", "d1"), what="stream and consumer")
    finally:
        hub.stop()


@pytest.mark.parametrize(
    ("transport", "message"),
    [
        ({"subject": "q.>", "stream": "Q"}, r"^sources\[0\]\.transport\.stream: a source reads a stream only through a durable consumer: give 'durable' too"),
        ({"subject": "q.{key}"}, r"^sources\[0\]\.transport\.subject: a source's subject takes no placeholders \(\{key\} is for a sink's subject\), got 'q.\{key\}'$"),
        ({"subject": "q.{topic}.x"}, r"^sources\[0\]\.transport\.subject: a source's subject takes no placeholders \(\{topic\}"),
    ],
)
def test_what_a_source_refuses_names_its_key(nats_server: NatsServer, tmp_path: Path, transport: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        quote_hub(tmp_path, {"type": "nats", "url": nats_server.url, **transport})


@pytest.mark.parametrize(
    ("transport", "message"),
    [
        ({"subject": "gauss.*"}, r"^sinks\[0\]\.transport\.subject: the sink of topic 't' publishes to its subject: a wildcard token \('\*'\) only subscribes; got 'gauss\.\*'$"),
        ({"subject": "gauss.{key}.>"}, r"^sinks\[0\]\.transport\.subject: the sink of topic 't' publishes to its subject: a wildcard token \('>'\)"),
        ({"subject": "gauss.all", "stream": "G", "durable": "d"}, r"^sinks\[0\]\.transport\.durable: the sink of topic 't' publishes: only a source reads through a durable consumer"),
    ],
)
def test_what_a_sink_refuses_names_its_key(nats_server: NatsServer, tmp_path: Path, transport: dict[str, Any], message: str) -> None:
    config = {
        "hub": {"status_interval": 0},
        "topics": [{"name": "t", "storage": "memory"}],
        "sinks": [{"topic": "t", "transport": {"type": "nats", "url": nats_server.url, **transport}}],
    }
    hub = Hub.from_config(config, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=message):
        hub.start()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (  # finding 1: memory storage and no journal; acknowledged, then lost on SIGKILL
            '[[sources]]\ntopic = "q"\npolicy = "back_pressure"\n'
            'transport = { type = "nats", url = "URL", subject = "q.*", stream = "Q", durable = "d" }\n',
            r"sources[0].transport.durable: topic 'q' is not durable (its 'memory' storage is not durable and it has no journal)",
        ),
        (
            '[[sources]]\ntopic = "q"\npolicy = "drop"\n'
            'transport = { type = "nats", url = "URL", subject = "q.*", stream = "Q", durable = "d" }\n',
            "sources[0].policy: a JetStream source must use back_pressure",
        ),
        (
            '[[sources]]\ntopic = "q"\ntransport = { type = "nats", url = "URL", subject = "q.*", stream = "Q" }\n',
            "sources[0].transport.stream: a source reads a stream only through a durable consumer",
        ),
        (
            '[[sinks]]\ntopic = "q"\ntransport = { type = "nats", url = "URL", subject = "q.*" }\n',
            "sinks[0].transport.subject: the sink of topic 'q' publishes to its subject: a wildcard token ('*') only subscribes",
        ),
    ],
)
def test_gauss_serve_exits_2_for_what_only_the_built_hub_tells(nats_server: NatsServer, tmp_path: Path, body: str, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[hub]\nstatus_interval = 0\n[[topics]]\nname = "q"\nstorage = "memory"\n' + body.replace("URL", nats_server.url))
    result = subprocess.run([*serve_command(), "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"gauss-serve: {config}: {message}" in result.stderr


# --- sinks: subjects and the server's partition() -------------------------------------------


def test_sink_shard_subject_equals_the_server_partition(nats_server: NatsServer, tmp_path: Path) -> None:
    keys = [f"K{i}" for i in range(300)] + ["EURUSD", "BTC/USD", "€uro", "x-y_z", "USD:JPY"]
    config = {
        "hub": {"status_interval": 0},
        "topics": [{"name": "t", "storage": "memory"}],
        "sinks": [{"topic": "t", "transport": {"type": "nats", "url": nats_server.url, "subject": "gauss.{topic}.{shard}.{key}", "shards": 7}}],
    }
    with BusClient(nats_server.url) as client:
        mapped = client.subscribe("p7.*.*")
        routed = client.subscribe("gauss.t.*.*")
        client.publish([(f"p7.{key}", b"x") for key in keys])
        hub = Hub.from_config(config, base_dir=tmp_path)
        hub.start()
        try:
            wait_until(lambda: hub.sinks[0].transport.connected and hub.sinks[0].clients == 1, what="sink connected and subscribed")
            hub.publish("t", [TopicRecord(START, key, {"k": key}) for key in keys])
            wait_until(lambda: len(routed) == len(keys) and len(mapped) == len(keys), what="every key on both sides")
        finally:
            hub.stop()
    server_shard = {subject.split(".", 2)[2]: int(subject.split(".")[1]) for subject, _ in mapped}
    sink_shard = {json.loads(data)["k"]: int(subject.split(".")[2]) for subject, data in routed}
    assert sink_shard == server_shard
    assert sink_shard == {key: shard_of(key, 7) for key in keys}
    assert len(set(sink_shard.values())) == 7


def test_sink_routes_each_key_to_its_subject_in_order_several_records_a_message(nats_server: NatsServer, tmp_path: Path) -> None:
    config = {
        "hub": {"status_interval": 0},
        "topics": [{"name": "ohlc.1m", "format": "any", "storage": "memory"}],
        "sinks": [{"topic": "ohlc.1m", "transport": {"type": "nats", "url": nats_server.url, "subject": "gauss.{topic}.{key}"}}],
    }
    symbols = ["EURUSD", "GBPUSD", "USDJPY", "BRK.B"]
    with BusClient(nats_server.url) as client:
        got = client.subscribe("gauss.ohlc.1m.*")
        hub = Hub.from_config(config, base_dir=tmp_path)
        hub.start()
        try:
            wait_until(lambda: hub.sinks[0].transport.connected and hub.sinks[0].clients == 1, what="sink connected and subscribed")
            for batch in range(20):
                hub.publish("ohlc.1m", [TopicRecord(START + batch * 100 + i, symbols[i % 4], {"symbol": symbols[i % 4], "n": batch * 100 + i}) for i in range(100)])
            wait_until(lambda: sum(data.count(b"\n") for _, data in got) == 2000, what="2000 records")
        finally:
            hub.stop()
    per_key: dict[str, list[int]] = {}
    for subject, data in got:
        for line in data.splitlines():
            record = json.loads(line)
            assert subject == f"gauss.ohlc.1m.{subject_token(record['symbol'])}"
            per_key.setdefault(record["symbol"], []).append(record["n"])
    assert {k: len(v) for k, v in per_key.items()} == {s: 500 for s in symbols}
    for numbers in per_key.values():
        assert numbers == sorted(numbers)
    assert len(got) < 2000  # several records a message


def test_bus_series_are_unique_per_transport_and_topic(nats_server: NatsServer, tmp_path: Path) -> None:
    sink = {"type": "nats", "url": nats_server.url, "subject": "gauss.{topic}.{key}"}
    config = {
        "hub": {"status_interval": 0},
        "topics": [{"name": "ohlc.*", "format": "any", "storage": "memory", "create": ["ohlc.1m", "ohlc.5m"]}],
        "sinks": [{"topic": "ohlc.1m", "transport": sink}, {"topic": "ohlc.5m", "transport": sink},
                  {"topic": "ohlc.5m", "transport": sink, "name": "again"}],
    }  # fmt: skip
    hub = Hub.from_config(config, base_dir=tmp_path)
    hub.start()
    try:
        wait_until(lambda: all(s.transport.connected for s in hub.sinks), what="sinks connected")
        description = hub.sinks[0].transport.description
        for name in ("gauss_bus_connected", "gauss_bus_acks_total", "gauss_bus_dropped_messages_total", "gauss_bus_redeliveries_skipped_total"):
            found = samples(hub, name)
            labels = [tuple(sorted(have.items())) for have, _ in found]
            assert len(labels) == len(set(labels)), f"{name}: duplicate series {labels}"
            assert sorted((have["transport"], have["topic"]) for have, _ in found) == [(description, "ohlc.1m"), (description, "ohlc.5m")]
        assert sample(hub, "gauss_bus_connected", topic="ohlc.5m") == 1.0  # both ohlc.5m sinks, in one series
    finally:
        hub.stop()


# --- sources --------------------------------------------------------------------------------


def test_core_source_takes_every_payload_of_every_message(nats_server: NatsServer, tmp_path: Path) -> None:
    hub = quote_hub(tmp_path, {"type": "nats", "url": nats_server.url, "subject": "live.*"})
    try:
        wait_until(lambda: hub.sources[0].transport.connected, what="connected")
        gevent.sleep(0.2)  # the subscription is made right after connecting
        sent = quotes_for(["EURUSD", "GBPUSD"], 500)
        with BusClient(nats_server.url) as client:
            client.publish(quote_messages(sent, per_message=25, prefix="live"))
        wait_until(lambda: hub.registry.get("quotes.raw").last_seq == 500, what="500 quotes")
        assert sorted((r.key, r.ts_ms) for r in stored(hub)) == sorted((q["symbol"], q["ts_ms"]) for q in sent)
    finally:
        hub.stop()


def test_jetstream_source_stores_each_message_once_and_acks_after_storage(nats_server: NatsServer, tmp_path: Path) -> None:
    symbols = [f"S{i}" for i in range(5)]
    sent = quotes_for(symbols, 2000)
    with BusClient(nats_server.url) as client:
        hub = quote_hub(tmp_path, source_table(nats_server, tmp_path, reconnect_max=0.2))
        try:
            wait_until(stream_ready(client, "Q", "d1"), what="stream and consumer")
            storage = hub.registry.get("quotes.raw").storage
            assert isinstance(storage, ListStorage)
            storage.fail_appends = {1, 2}  # two batches refused: their messages must be redelivered, not acked
            bad = b'{"symbol": "S0", "bid": "x"}\n'
            client.publish([(s, data if i != 3 else bad + data) for i, (s, data) in enumerate(quote_messages(sent, 20, "q"))], stream_ack=True)
            wait_until(lambda: len(storage.records) >= 2000, what="2000 quotes stored")
            wait_until(lambda: client.consumer_info("Q", "d1").num_ack_pending == 0, what="every message acknowledged")
            info = client.consumer_info("Q", "d1")
            transport = hub.sources[0].transport
        finally:
            hub.stop()
    keys = [(r.key, r.ts_ms) for r in storage.records]
    assert len(keys) == len(set(keys)) == 2000
    assert storage.appends >= 3
    assert transport.messages > 100  # the refused messages came back (100 were published)
    assert info.num_pending == 0
    assert hub.sources[0].bad_frames >= 1  # counted at each delivery of its message
    assert transport.acked >= 100


def test_redeliveries_after_a_crash_are_not_stored_twice(nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that stored everything but whose acknowledgements never arrived is restarted: nothing twice."""
    symbols = [f"S{i}" for i in range(4)]
    sent = quotes_for(symbols, 1200)
    table = source_table(nats_server, tmp_path, ack_wait_s=1.0)
    storage = DURABLE_LIST
    with BusClient(nats_server.url) as client:
        monkeypatch.setattr(bus.NatsTransport, "_ack", lambda self, msgs, nak: None)  # every ack lost
        hub = quote_hub(tmp_path, table, storage=storage)
        try:
            wait_until(stream_ready(client, "Q", "d1"), what="stream and consumer")
            messages = quote_messages(sent, 10, "q")
            for start in range(0, len(messages), 10):  # 12 rounds: 12 stored batches
                client.publish(messages[start : start + 10], stream_ack=True)
                target = 10 * (start + 10)
                wait_until(lambda: hub.registry.get("quotes.raw").last_seq == target, what="the round stored")  # noqa: B023
            gevent.sleep(1.5)  # past ack_wait: redeliveries to the same node are recognised too
            first_skipped = hub.sources[0].transport.redeliveries_skipped
        finally:
            hub.stop()
        assert client.consumer_info("Q", "d1").num_ack_pending == 120
        state = json.loads(next((tmp_path / "state").glob("*.json")).read_text())
        assert state["storing"] and max(state["storing"]) == 120  # the last batch was noted as being stored: the topic says it was
        monkeypatch.undo()
        hub = quote_hub(tmp_path, table, storage=storage)
        try:
            wait_until(lambda: client.consumer_info("Q", "d1").num_ack_pending == 0, what="redeliveries acknowledged")
            client.publish(quote_messages(quotes_for(["NEW"], 10), 10, "q"), stream_ack=True)
            wait_until(lambda: hub.registry.get("quotes.raw").last_seq == 1210, what="a new message after them")
            records = stored(hub)
            skipped = hub.sources[0].transport.redeliveries_skipped
        finally:
            hub.stop()
    assert len(records) == 1210
    for symbol in symbols:  # every quote once, each symbol's in the order sent
        assert [r.ts_ms for r in records if r.key == symbol] == [q["ts_ms"] for q in sent if q["symbol"] == symbol]
    assert first_skipped > 0
    assert skipped == 120


def test_a_durable_made_for_another_subject_is_moved_to_the_new_one(
    nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """nats-server 2.9.10 changes a durable's filter subject in place: the source reads its new subject, not the old one."""
    first = source_table(nats_server, tmp_path, subject="q.a.*", stream_subjects=["q.>"])
    with BusClient(nats_server.url) as client:
        hub = quote_hub(tmp_path, first)
        try:
            wait_until(stream_ready(client, "Q", "d1"), what="stream and consumer")
            client.publish(quote_messages(quotes_for(["A"], 10), 10, "q.a"), stream_ack=True)
            wait_until(lambda: hub.registry.get("quotes.raw").last_seq == 10, what="the q.a quotes")
        finally:
            hub.stop()
        assert client.consumer_info("Q", "d1").config.filter_subject == "q.a.*"
        caplog.set_level(logging.WARNING, logger=bus.__name__)
        hub = quote_hub(tmp_path, {**first, "subject": "q.b.*"})
        try:
            wait_until(lambda: client.consumer_info("Q", "d1").config.filter_subject == "q.b.*", what="the filter moved")
            later = [quote(q["symbol"], q["bid"], q["ask"], q["ts_ms"] + 100) for q in quotes_for(["A"], 5)]
            client.publish(quote_messages(later, 5, "q.a") + quote_messages(quotes_for(["B"], 10), 10, "q.b"), stream_ack=True)
            wait_until(lambda: hub.registry.get("quotes.raw").last_seq == 20, what="the q.b quotes")
            wait_until(lambda: client.consumer_info("Q", "d1").num_ack_pending == 0, what="acknowledged")
            gevent.sleep(0.3)  # a q.a quote would have come with them
            records = stored(hub)
        finally:
            hub.stop()
    assert [r.key for r in records] == ["A"] * 10 + ["B"] * 10
    moved = [r.getMessage() for r in caplog.records if "changed to" in r.getMessage()]
    assert len(moved) == 1 and "durable d1 filtered q.a.*: changed to q.b.*; it goes on after stream sequence 1" in moved[0]


def test_a_durable_the_server_will_not_move_is_named_in_one_warning(
    nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = source_table(nats_server, tmp_path, subject="q.a.*", stream_subjects=["q.>"])
    with BusClient(nats_server.url) as client:
        hub = quote_hub(tmp_path, first)
        try:
            wait_until(stream_ready(client, "Q", "d1"), what="stream and consumer")
        finally:
            hub.stop()

    async def refuse(self: Any, stream: str, config: Any = None, **params: Any) -> Any:
        raise nats.js.errors.BadRequestError(code=400, err_code=10012, description="filter subject can not be updated")

    monkeypatch.setattr(nats.js.manager.JetStreamManager, "add_consumer", refuse)
    caplog.set_level(logging.WARNING, logger=bus.__name__)
    hub = quote_hub(tmp_path, {**first, "subject": "q.b.*"})
    try:
        wait_until(lambda: any("refused" in r.getMessage() for r in caplog.records), what="the warning")
        with BusClient(nats_server.url) as client:
            assert client.consumer_info("Q", "d1").config.filter_subject == "q.a.*"
    finally:
        hub.stop()
    warned = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert "durable d1 filters q.a.*, not q.b.*, and the server refused to change it" in warned[0].getMessage()


def test_bus_connected_metric_follows_the_server_and_the_source_reconnects(nats_server: NatsServer, tmp_path: Path) -> None:
    hub = quote_hub(tmp_path, source_table(nats_server, tmp_path, reconnect_max=0.2))

    def connected() -> float | None:
        for line in hub.metrics.exposition().decode().splitlines():
            if line.startswith("gauss_bus_connected{") and "q.>" in line:
                return float(line.rsplit(" ", 1)[1])
        return None

    try:
        with BusClient(nats_server.url) as client:
            wait_until(stream_ready(client, "Q", "d1"), what="stream and consumer")
            client.publish(quote_messages(quotes_for(["A", "B"], 100), 10, "q"), stream_ack=True)
        wait_until(lambda: hub.registry.get("quotes.raw").last_seq == 100, what="first 100")
        assert connected() == 1.0
        nats_server.stop()
        wait_until(lambda: connected() == 0.0, what="disconnected in /metrics")
        nats_server.start()
        wait_until(lambda: connected() == 1.0, what="reconnected in /metrics")
        with BusClient(nats_server.url) as client:
            client.publish(quote_messages(quotes_for(["A", "B"], 300)[100:], 10, "q"), stream_ack=True)
        wait_until(lambda: hub.registry.get("quotes.raw").last_seq == 300, what="300 after the restart")
        assert len({(r.key, r.ts_ms) for r in stored(hub)}) == 300
    finally:
        hub.stop()


def test_a_damaged_message_loses_only_itself(nats_server: NatsServer, tmp_path: Path) -> None:
    table = source_table(nats_server, tmp_path)
    hub = quote_hub(tmp_path, table, framing="length-prefixed", max_frame_bytes=1000)
    try:
        good = [quote("EURUSD", 1.0, 1.1, START + i) for i in range(3)]
        framed = create("framing", {"type": "length-prefixed"}).encode([json.dumps(q).encode() for q in good])
        with BusClient(nats_server.url) as client:
            wait_until(stream_ready(client, "Q", "d1"), what="stream and consumer")
            client.publish([("q.a", b"\x00\x01\x00\x00" + b"x" * 10), ("q.a", framed[:-3]), ("q.a", framed)], stream_ack=True)
            # the oversize one is dropped; the truncated one keeps its two complete frames
            wait_until(lambda: hub.registry.get("quotes.raw").last_seq == 5, what="the good frames")
            wait_until(lambda: client.consumer_info("Q", "d1").num_ack_pending == 0, what="all three acknowledged")
        assert hub.sources[0].oversize == 1
        assert hub.sources[0].bad_frames == 1  # the truncated one's third frame
    finally:
        hub.stop()


def test_frame_errors_and_bytes_of_messages_are_counted_as_on_tcp(nats_server: NatsServer, tmp_path: Path) -> None:
    hub = quote_hub(tmp_path, source_table(nats_server, tmp_path), framing="length-prefixed", codec="protobuf")
    wire = WireFormat.build("length-prefixed", "protobuf")

    def message(i: int) -> bytes:
        q = quote("EURUSD", 1.0, 1.1, START + i)
        return wire.encode([TopicRecord(q["ts_ms"], "EURUSD", q)])

    def count(name: str, **labels: str) -> float | None:
        return sample(hub, f"gauss_source_{name}", **labels)

    try:
        with BusClient(nats_server.url) as client:
            wait_until(stream_ready(client, "Q", "d1"), what="stream and consumer")
            client.publish([("q.a", b"\x7f\x00\x00\x10abc"), ("q.a", message(0))], stream_ack=True)
            wait_until(lambda: hub.registry.get("quotes.raw").last_seq == 1, what="the good message after the oversize one")
            assert count("decode_errors_total", reason="oversize_frame") == 1.0
            assert count("decode_errors_total", reason="bad_frame") == 0.0
            # a message is whole: bytes after its last whole frame are a bad frame, the frames before it count
            truncated = [b"\x00\x00", b"\x00\x00\x00\x10abc", message(1) + b"\x00\x00\x00\x10abc", message(2)]
            client.publish([("q.a", data) for data in truncated], stream_ack=True)
            wait_until(lambda: hub.registry.get("quotes.raw").last_seq == 3, what="the whole frames")
            wait_until(lambda: count("decode_errors_total", reason="bad_frame") == 3.0, what="three truncated frames")
            wait_until(lambda: client.consumer_info("Q", "d1").num_ack_pending == 0, what="all acknowledged")
        sent = [b"\x7f\x00\x00\x10abc", message(0), *truncated]
        assert count("bytes_total") == float(sum(len(data) for data in sent))
        assert hub.sources[0].bytes == sum(len(data) for data in sent)
        assert count("decode_errors_total", reason="oversize_frame") == 1.0
        assert [r.ts_ms for r in stored(hub)] == [START, START + 1, START + 2]
    finally:
        hub.stop()


def test_quotes_gen_publishes_to_quotes_symbol(nats_server: NatsServer) -> None:
    script = Path(sys.executable).with_name("gauss-quotes-gen")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gauss.cli.quotes_gen"]
    with BusClient(nats_server.url) as client:
        got = client.subscribe("quotes.*.*")  # the server maps quotes.<SYMBOL> to quotes.<partition>.<SYMBOL>
        result = subprocess.run(
            [*command, "auto", "--target", nats_server.url, "--symbols", "EURUSD,USDJPY", "--rate", "2000", "--count", "300"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        wait_until(lambda: sum(data.count(b"\n") for _, data in got) == 300, what="300 quotes on the bus")
    assert {subject for subject, _ in got} == {f"quotes.{shard_of(s, 2)}.{s}" for s in ("EURUSD", "USDJPY")}
    for subject, data in got:
        assert {json.loads(line)["symbol"] for line in data.splitlines()} == {subject.split(".")[2]}
    assert len(got) < 300  # several quotes a message
    bad = subprocess.run([*command, "auto", "--target", "nats://host:port"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "nats://HOST[:PORT]" in bad.stderr
