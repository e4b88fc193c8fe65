"""The hub as a library: publish, subscribe (callback or iterator), query, processors, stop."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import gevent
import pytest
from support import wait_until

from gauss.core import TopicRecord
from gauss.errors import ConfigError, UnknownTopic
from gauss.hub import Hub
from gauss.registry import PluginConfig

STORE = {"type": "support.plugins:ListStorage"}


def records(n: int, start: int = 0) -> list[TopicRecord]:
    return [TopicRecord(1_000 + i, "K" + str(i % 3), {"i": i}) for i in range(start, start + n)]


def hub_config(**processor: Any) -> dict[str, Any]:
    return {
        "hub": {"status_interval": 0},
        "topics": [{"name": "in", "storage": STORE}, {"name": "out.*", "storage": STORE}],
        "processors": [{"type": "support.plugins:Republish", "topic": "in", "target": "out.copy", **processor}],
    }


def test_processor_output_reaches_a_callback_subscriber_and_storage() -> None:
    hub = Hub.from_config(hub_config())
    hub.start()
    hub.publish("in", records(1))  # creates out.copy from its template
    wait_until(lambda: "out.copy" in hub.registry)
    got: list[int] = []
    hub.subscribe("out.copy", lambda batch: got.extend(r.data["i"] for r in batch))
    hub.publish("in", records(9, start=1))
    wait_until(lambda: len(got) == 9)
    assert got == list(range(1, 10))
    assert [r.seq for r in hub.query("out.copy", limit=100).records] == list(range(1, 11))
    hub.stop()


def test_iterator_subscription_yields_records_until_closed() -> None:
    with Hub.from_config({"topics": [{"name": "t", "storage": STORE}], "hub": {"status_interval": 0}}) as hub:
        sub = hub.subscribe("t", key="K1")
        hub.publish("t", records(6))
        seen = []
        for record in sub:
            seen.append(record.data["i"])
            if len(seen) == 2:
                sub.close()
        assert seen == [1, 4]
        with pytest.raises(UnknownTopic):
            hub.subscribe("nope")


def test_stop_drains_processors_flushes_and_stops_them() -> None:
    hub = Hub.from_config(hub_config(flush_interval=0.05))
    hub.start()
    processor = hub.processors[0].processor
    hub.publish("in", records(500))
    hub.stop()
    assert hub.registry.get("out.copy").last_seq == 500
    assert processor.flushes >= 1 and processor.stopped
    assert hub.registry.get("in").storage.closed


def test_a_processor_that_falls_behind_raises_the_alarm(caplog: pytest.LogCaptureFixture) -> None:
    class Slow:
        name = "slow"
        flush_interval = None

        def start(self, context: Any) -> None: ...

        def process(self, topic: str, batch: Sequence[TopicRecord], context: Any) -> None:
            gevent.sleep(1.5)

        def flush(self, context: Any) -> None: ...

        def stop(self, context: Any) -> None: ...

    hub = Hub.from_config({"topics": [{"name": "in", "storage": STORE}], "hub": {"status_interval": 0}})
    hub.start()
    runner = hub.add_processor(Slow(), "in", queue_size=2)
    hub.publish("in", records(2))
    gevent.sleep(0.01)  # the processor takes the first batch and sleeps
    hub.publish("in", records(2))  # fills the queue
    hub.publish("in", records(2))  # waits: the alarm goes off
    assert runner.lagging or any("is behind" in r.message for r in caplog.records)
    assert any("is behind" in r.message for r in caplog.records)
    assert hub.metrics.value("gauss_processor_lagging", processor="slow(in)") in (0.0, 1.0)
    hub.stop(timeout=10)


def test_status_line_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gauss.hub")
    hub = Hub.from_config({"topics": [{"name": "t", "storage": STORE}], "hub": {"status_interval": 0.05}})
    hub.start()
    hub.publish("t", records(10))
    wait_until(lambda: any("status: t" in r.message for r in caplog.records), what="a status line")
    hub.stop()


class VolatileRefusingConfig(PluginConfig, frozen=True):
    pass


class VolatileRefusingTransport:
    """A source transport that refuses a topic whose built storage is not durable (as a JetStream source does)."""

    Config = VolatileRefusingConfig
    description = "volatile-refusing"

    def __init__(self) -> None:
        self.closed = False

    @classmethod
    def from_config(cls, config: VolatileRefusingConfig) -> VolatileRefusingTransport:
        return cls()

    def attach_source(self, source: Any) -> None:
        if not source.topic.storage.durable:
            raise ConfigError("transport.durable", f"topic {source.topic.name!r} is not durable")

    def serve(self, handler: Callable[[Any], None]) -> None: ...

    def close(self) -> None:
        self.closed = True


def test_a_source_refused_once_built_names_its_position(tmp_path: Path) -> None:
    """What only a built topic tells (its storage's ``durable``) is a config error at ``sources[N]``, and nothing is left running."""
    transport = {"type": f"{__name__}:VolatileRefusingTransport"}
    config = {
        "hub": {"status_interval": 0},
        "topics": [{"name": "kept", "storage": {"type": "file", "dir": str(tmp_path)}}, {"name": "volatile", "storage": STORE}],
        "sources": [{"topic": "kept", "transport": transport}, {"topic": "volatile", "transport": transport}],
    }
    hub = Hub.from_config(config)
    with pytest.raises(ConfigError, match=r"^sources\[1\]\.transport\.durable: topic 'volatile' is not durable$"):
        hub.start()
    assert len(hub.sources) == 1 and hub.sources[0].transport.closed  # type: ignore[attr-defined]


@pytest.mark.parametrize("where", ["sources", "sinks", "api"])
def test_a_port_another_process_holds_is_a_config_error_naming_its_key(where: str) -> None:
    """It was an OSError ('cannot start: [Errno 98] Address already in use', exit 1) naming no key."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listener = {"type": "tcp-server", "port": port}
        config: dict[str, Any] = {"hub": {"status_interval": 0}, "topics": [{"name": "t", "storage": STORE}]}
        if where == "api":
            config["api"] = {"port": port}
            key = "api.port"
        else:
            config[where] = [{"topic": "t", "transport": listener}]
            key = f"{where}[0].transport.port"
        hub = Hub.from_config(config)
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: cannot listen on 127.0.0.1:{port}: Address already in use"):
            hub.start()
