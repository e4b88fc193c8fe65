"""Configuration: every mistake is one ConfigError naming the file, the key and the reason."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gauss.config import load_config
from gauss.errors import ConfigError
from gauss.records import DataFormat, OverflowPolicy

REPO = Path(__file__).resolve().parents[2]


def minimal(**extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "topics": [{"name": "quotes.raw", "format": "quote"}, {"name": "ohlc.*", "format": "candle"}],
        "sources": [{"topic": "quotes.raw", "transport": {"type": "tcp-server", "port": 0}}],
        "processors": [{"type": "ohlc", "topic": "quotes.raw", "timeframes": ["1m"]}],
        "sinks": [{"topic": "quotes.raw", "transport": {"type": "tcp-server", "port": 0}}],
    }
    config.update(extra)
    return config


def error_of(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


GOOD_SOURCE = """
[[topics]]
name = "quotes.raw"
format = "quote"

[[sources]]
topic = "quotes.raw"
transport = { type = "tcp-server", port = 9100 }
"""


def test_valid_config_becomes_typed_specs(tmp_path: Path) -> None:
    config = load_config(minimal(api={"port": 9999, "token": "s3cret"}), base_dir=tmp_path)
    assert config.api is not None
    assert config.api.port == 9999 and config.api.bind == "127.0.0.1" and config.api.token == "s3cret"
    assert config.topics[0].format is DataFormat.QUOTE
    assert config.sources[0].policy is OverflowPolicy.BACK_PRESSURE
    assert config.processors[0].policy is OverflowPolicy.BACK_PRESSURE
    plugin = config.processors[0].plugin
    assert plugin is not None and plugin.type == "ohlc" and plugin.config.timeframes == ("1m",)  # type: ignore[attr-defined]
    assert config.sinks[0].policy is OverflowPolicy.DROP and config.sinks[0].type == "stream"


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[[topics]\nname = 1")
    assert message.startswith(f"{tmp_path / 'config.toml'}: invalid TOML")


def test_unknown_framing_names_key_and_known_types(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD_SOURCE + 'framing = "line"\n')
    assert message == f"{tmp_path / 'config.toml'}: sources[0].framing.type: unknown framing 'line'; known: length-prefixed, lines"


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD_SOURCE + "queue_szie = 5\n")
    assert "sources[0].queue_szie: unknown option" in message


def test_unknown_key_inside_a_plugin_table_is_refused(tmp_path: Path) -> None:
    text = GOOD_SOURCE.replace("port = 9100", "port = 9100, prot = 1")
    assert "sources[0].transport.prot: unknown option" in error_of(tmp_path, text)


def test_bad_port_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD_SOURCE.replace("9100", "70000"))
    assert "sources[0].transport.port: Expected int <= 65535, got 70000" in message


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    assert "source: unknown section" in error_of(tmp_path, "[[source]]\ntopic = 'x'\n")


def test_duplicate_topic_name_is_refused() -> None:
    config = minimal()
    config["topics"].append({"name": "quotes.raw"})
    with pytest.raises(ConfigError, match=r"topics\[2\].name: duplicate topic name 'quotes.raw' \(also topics\[0\]\)"):
        load_config(config)


@pytest.mark.parametrize(
    ("processor", "error"),
    [
        ({"type": "ohlc", "topic": "quotes.raw", "timeframes": ["1m"], "output_prefix": "candles."}, r"processors\[0\].output_prefix: topic 'candles.1m' does not exist"),
        ({"type": "ohlc", "topic": "quotes.raw", "timeframes": ["1m"], "late_topic": "late"}, r"processors\[0\].late_topic: topic 'late' does not exist"),
        ({"type": "symbol-filter", "topic": "quotes.raw", "output": "eur", "allow": ["EURUSD"]}, r"processors\[0\].output: topic 'eur' does not exist"),
    ],
)
def test_processor_publishing_to_a_missing_topic_is_refused(processor: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_config(minimal(processors=[processor]))
    fixed = minimal(processors=[processor])
    fixed["topics"].append({"name": "*"})  # a catch-all template makes every name a topic
    load_config(fixed)


def test_processor_reading_a_missing_topic_is_refused() -> None:
    config = minimal(processors=[{"type": "ohlc", "topic": "quotes.nope"}])
    with pytest.raises(ConfigError, match=r"processors\[0\].topic: topic 'quotes.nope' does not exist"):
        load_config(config)


def test_unknown_processor_type_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"processors\[0\].type: unknown processor 'ohcl'"):
        load_config(minimal(processors=[{"type": "ohcl", "topic": "quotes.raw"}]))


def test_processor_options_are_checked_by_the_processor() -> None:
    with pytest.raises(ConfigError, match=r"processors\[0\].timeframe: unknown option"):
        load_config(minimal(processors=[{"type": "ohlc", "topic": "quotes.raw", "timeframe": ["1m"]}]))


def test_binary_codec_on_lines_framing_is_refused() -> None:
    config = minimal()
    config["sources"][0]["codec"] = "protobuf"
    with pytest.raises(ConfigError, match=r"sources\[0\].codec: codec 'protobuf' is binary"):
        load_config(config)


def test_middleware_on_lines_framing_is_refused_for_sources_and_sinks() -> None:
    config = minimal()
    config["sources"][0]["middleware"] = ["gzip"]
    with pytest.raises(ConfigError, match=r"sources\[0\].middleware"):
        load_config(config)
    config = minimal()
    config["sinks"][0]["middleware"] = ["gzip"]
    with pytest.raises(ConfigError, match=r"sinks\[0\].middleware"):
        load_config(config)


@pytest.mark.parametrize(
    ("source_bind", "sink_bind", "api", "error"),
    [
        ("127.0.0.1", "127.0.0.1", None, r"sinks\[0\].transport.port: 127.0.0.1:9400 is also where sources\[0\].transport.port listens"),
        ("127.0.0.1", "0.0.0.0", None, r"sinks\[0\].transport.port: 0.0.0.0:9400 is also where sources\[0\].transport.port listens"),
        ("localhost", "127.0.0.1", None, r"sinks\[0\].transport.port: 127.0.0.1:9400 is also where sources\[0\].transport.port"),
        ("127.0.0.2", "127.0.0.3", {"port": 9400, "bind": "::"}, r"sources\[0\].transport.port: 127.0.0.2:9400 is also where api.port listens"),
    ],
)
def test_two_listeners_on_one_address_are_refused(source_bind: str, sink_bind: str, api: dict[str, Any] | None, error: str) -> None:
    """They used to start and fail with EADDRINUSE (exit 1, no key named)."""
    config = minimal()
    config["sources"][0]["transport"] = {"type": "tcp-server", "bind": source_bind, "port": 9400}
    config["sinks"][0]["transport"] = {"type": "tcp-server", "bind": sink_bind, "port": 9400}
    if api is not None:
        config["api"] = api
    with pytest.raises(ConfigError, match=error):
        load_config(config)


def test_listeners_on_distinct_addresses_or_free_ports_load() -> None:
    config = minimal(api={"port": 0})
    config["sources"][0]["transport"] = {"type": "tcp-server", "bind": "127.0.0.2", "port": 9400}
    config["sinks"][0]["transport"] = {"type": "tcp-server", "bind": "127.0.0.3", "port": 9400}
    config["sinks"].append({"topic": "quotes.raw", "transport": {"type": "tcp-client", "port": 9400}})  # dials, does not listen
    assert len(load_config(config).sinks) == 2


def test_sink_plugin_errors_name_the_sink_key() -> None:
    config = minimal()
    config["sinks"][0]["codec"] = "jsn"
    with pytest.raises(ConfigError, match=r"sinks\[0\].codec.type: unknown codec 'jsn'"):
        load_config(config)


def test_bad_policy_is_refused() -> None:
    config = minimal()
    config["sinks"][0]["policy"] = "dorp"
    with pytest.raises(ConfigError, match=r"sinks\[0\].policy: unknown value 'dorp'"):
        load_config(config)


def test_dead_letter_topic_must_exist() -> None:
    config = minimal()
    config["sources"][0]["dead_letter"] = "bad.quotes"
    with pytest.raises(ConfigError, match=r"sources\[0\].dead_letter: topic 'bad.quotes' does not exist"):
        load_config(config)


def test_template_create_names_must_match() -> None:
    config = minimal()
    config["topics"][1]["create"] = ["candles.1m"]
    with pytest.raises(ConfigError, match=r"topics\[1\].create\[0\]: 'candles.1m' does not match"):
        load_config(config)


def test_max_future_ms_false_lifts_the_check() -> None:
    config = minimal()
    config["sources"][0]["max_future_ms"] = False
    assert load_config(config).sources[0].max_future_ms is None
    config["sources"][0]["max_future_ms"] = -1
    with pytest.raises(ConfigError, match=r"sources\[0\].max_future_ms"):
        load_config(config)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_relative_storage_paths_resolve_against_the_config_dir(tmp_path: Path) -> None:
    config = load_config(minimal(topics=[{"name": "q.*", "storage": {"type": "file", "dir": "data/{suffix}"}}], sources=[], processors=[], sinks=[]), base_dir=tmp_path)
    assert config.base_dir == tmp_path.resolve()
    (spec,) = config.topics
    assert spec.storage.config.dir == tmp_path.resolve() / "data/{suffix}"  # type: ignore[attr-defined]
    assert spec.build_storage("q.1m").directory == tmp_path.resolve() / "data/1m"


def test_default_config_toml_is_valid() -> None:
    pytest.importorskip("gauss_plugins.storage.file", reason="file storage not installed yet")
    config = load_config(REPO / "config.toml")
    assert [s.transport.config.port for s in config.sources] == [9100, 9301, 9302, 9303]  # type: ignore[attr-defined]
    assert config.api is not None and config.api.port == 9200
    assert [s.plugin.config.transport.config.port for s in config.sinks] == [9300, 9301, 9302, 9303]  # type: ignore[union-attr]
    assert config.topics[1].create == tuple(
        f"ohlc.{tf}" for tf in ("1s", "5s", "1m", "5m", "15m", "1h", "4h", "1d")
    )


# --- ${NAME} in configuration files (SPEC section 3) -----------------------------

ENV_CONFIG = """
[api]
bind = "${GAUSS_TEST_BIND:-127.0.0.1}"
token = "${GAUSS_TEST_TOKEN}"
cors_origins = ["https://${GAUSS_TEST_HOST}", "https://b.example"]

[[topics]]
name = "quotes.raw"
format = "quote"
storage = { type = "file", dir = "${GAUSS_TEST_DATA:-data}/quotes" }

[[sources]]
topic = "quotes.raw"
name = "feed-${GAUSS_TEST_TOKEN}-$${literal}"
transport = { type = "tcp-server", port = 0 }
"""


def test_env_references_expand_in_every_string_value(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(ENV_CONFIG)
    environ = {"GAUSS_TEST_TOKEN": "s3cret", "GAUSS_TEST_HOST": "a.example", "GAUSS_TEST_DATA": ""}
    config = load_config(path, environ=environ)
    assert config.api is not None and config.api.bind == "127.0.0.1"  # unset: the default
    assert config.api.token == "s3cret"
    assert config.api.cors_origins == ("https://a.example", "https://b.example")
    assert config.topics[0].storage.config.dir == tmp_path / "data/quotes"  # type: ignore[attr-defined]  # set but empty: the default too
    assert config.sources[0].name == "feed-s3cret-${literal}"
    config = load_config(path, environ={**environ, "GAUSS_TEST_BIND": "0.0.0.0", "GAUSS_TEST_DATA": "/srv"})
    assert config.api is not None and config.api.bind == "0.0.0.0"
    assert config.topics[0].storage.config.dir == Path("/srv/quotes")  # type: ignore[attr-defined]


def test_unset_env_reference_names_file_key_and_variable(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(ENV_CONFIG)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"GAUSS_TEST_TOKEN": "x"})
    assert str(info.value) == (
        f"{path}: api.cors_origins[0]: environment variable GAUSS_TEST_HOST is not set "
        "(used as ${GAUSS_TEST_HOST}; ${GAUSS_TEST_HOST:-default} gives a default)"
    )
    with pytest.raises(ConfigError, match=r"api\.token: environment variable GAUSS_TEST_TOKEN is not set"):
        load_config(path, environ={"GAUSS_TEST_HOST": "x"})


@pytest.mark.parametrize("value", ["${}", "${1X}", "${A", "${A:default}", "${A-x}"])
def test_malformed_env_reference_is_refused(tmp_path: Path, value: str) -> None:
    message = error_of(tmp_path, GOOD_SOURCE + f'name = "{value}"\n')
    assert f"{tmp_path / 'config.toml'}: sources[0].name: malformed reference" in message


def test_a_dict_config_is_taken_as_it_is() -> None:
    config = load_config(minimal(sources=[{"topic": "quotes.raw", "name": "${X}", "transport": {"type": "tcp-server", "port": 0}}]))
    assert config.sources[0].name == "${X}"


def test_max_key_bytes_defaults_to_64_and_is_checked() -> None:
    assert load_config(minimal()).sources[0].max_key_bytes == 64
    source = {"topic": "quotes.raw", "transport": {"type": "tcp-server", "port": 0}, "max_key_bytes": 16}
    assert load_config(minimal(sources=[source])).sources[0].max_key_bytes == 16
    with pytest.raises(ConfigError, match=r"sources\[0\]\.max_key_bytes"):
        load_config(minimal(sources=[{**source, "max_key_bytes": 0}]))


@pytest.mark.parametrize("bind", ["999.1.1.1", "not-a-host.invalid"])
def test_a_listen_address_that_cannot_be_bound_is_refused_naming_the_key(bind: str) -> None:
    with pytest.raises(ConfigError, match=rf"sources\[0\].transport.bind: '{re.escape(bind)}' is neither an IP address"):
        load_config(minimal(sources=[{"topic": "quotes.raw", "transport": {"type": "tcp-server", "bind": bind, "port": 0}}]))
    with pytest.raises(ConfigError, match=r"api.bind: .* is neither an IP address"):
        load_config(minimal(api={"bind": bind}))
    for good in ("127.0.0.1", "::1", "0.0.0.0", "localhost"):
        load_config(minimal(api={"bind": good}))
