"""The shipped cluster files: config.nats.toml and config.edge.toml load with SPEC section 7's defaults, the compose file hangs together."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from gauss.config import GaussConfig, load_config
from gauss.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TIMEFRAMES = ["1s", "5s", "1m", "5m", "15m", "1h", "4h", "1d"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("GAUSS_NATS_URL", "GAUSS_SHARD", "GAUSS_SHARDS", "GAUSS_EDGE", "GAUSS_BIND", "GAUSS_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def sink_transports(config: GaussConfig) -> list[Any]:
    """Each sink's own config (a stream sink's: its topic's transport beside the wire format)."""
    return [SimpleNamespace(topic=s.topic, transport=s.plugin.config.transport) for s in config.sinks]  # type: ignore[union-attr, attr-defined]


def test_shard_config_defaults_are_shard_0_of_1_on_the_default_ports(clean_env: pytest.MonkeyPatch) -> None:
    config = load_config(ROOT / "config.nats.toml")
    (source,) = config.sources
    assert source.topic == "quotes.raw"
    transport = source.transport.config
    assert source.transport.type == "nats"
    assert (transport.url, transport.subject, transport.stream, transport.stream_subjects, transport.durable) == (
        "nats://127.0.0.1:4222", "quotes.0.*", "QUOTES", ("quotes.*.*",), "gauss-shard-0",
    )  # fmt: skip
    assert transport.state_dir == ROOT / "data/shard-0/nats"
    assert source.name == "quotes.raw shard 0 of 1"
    assert config.api is not None and (config.api.bind, config.api.port) == ("127.0.0.1", 9200)
    bus_sinks = {s.topic: s.transport for s in sink_transports(config) if s.transport.type == "nats"}
    assert sorted(bus_sinks) == sorted(f"ohlc.{tf}" for tf in TIMEFRAMES)
    assert {t.config.subject for t in bus_sinks.values()} == {"gauss.{topic}.{key}"}
    assert [s.transport.config.port for s in sink_transports(config) if s.transport.type == "tcp-server"] == [9300]


def test_shard_config_takes_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("GAUSS_NATS_URL", "nats://bus:4333")
    clean_env.setenv("GAUSS_SHARD", "3")
    clean_env.setenv("GAUSS_SHARDS", "4")
    clean_env.setenv("GAUSS_BIND", "0.0.0.0")
    config = load_config(ROOT / "config.nats.toml")
    transport = config.sources[0].transport.config
    assert (transport.url, transport.subject, transport.durable) == ("nats://bus:4333", "quotes.3.*", "gauss-shard-3")
    assert config.sources[0].name == "quotes.raw shard 3 of 4"
    assert config.api is not None and config.api.bind == "0.0.0.0"
    assert all(s.transport.config.url == "nats://bus:4333" for s in sink_transports(config) if s.transport.type == "nats")


def test_edge_config_consumes_every_timeframe_into_its_own_topics(clean_env: pytest.MonkeyPatch) -> None:
    config = load_config(ROOT / "config.edge.toml")
    assert [s.topic for s in config.sources] == [f"ohlc.{tf}" for tf in TIMEFRAMES]
    for source, tf in zip(config.sources, TIMEFRAMES, strict=True):
        transport = source.transport.config
        assert transport.subject == f"gauss.ohlc.{tf}.*"
        assert (transport.stream, transport.durable) == ("GAUSS", f"gauss-edge-0-ohlc-{tf}")
    assert config.api is not None and config.api.port == 9210
    assert not config.processors and not config.sinks


def test_a_bad_bus_url_in_the_environment_is_a_config_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("GAUSS_NATS_URL", "http://bus:4222")
    with pytest.raises(ConfigError, match=r"config.nats.toml: sources\[0\].transport.url"):
        load_config(ROOT / "config.nats.toml")


def test_compose_cluster_mounts_shipped_files_and_maps_partitions_as_the_docs_say() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
    services = compose["services"]
    assert set(services) == {"nats", "shard0", "shard1", "edge", "quotes-gen"}
    for name in ("shard0", "shard1", "edge"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), volume
    assert [services[f"shard{k}"]["environment"]["GAUSS_SHARD"] for k in (0, 1)] == ["0", "1"]
    nats_conf = compose["configs"]["nats-conf"]["content"]
    mapping = re.search(r'mappings = \{ "quotes\.\*": "quotes\.\{\{partition\((\d+),1\)\}\}\.\{\{wildcard\(1\)\}\}" \}', nats_conf)
    assert mapping is not None and mapping.group(1) == services["shard0"]["environment"]["GAUSS_SHARDS"] == "2"
    assert services["quotes-gen"]["entrypoint"][:4] == ["gauss-quotes-gen", "auto", "--target", "nats://nats:4222"]
    docs = (ROOT / "docs" / "cluster.md").read_text()
    assert 'mappings = { "quotes.*": "quotes.{{partition(2,1)}}.{{wildcard(1)}}" }' in docs
