"""Every built-in plugin, created from a minimal table, satisfies its protocol."""

from __future__ import annotations

from typing import Any

import pytest

import gauss
from gauss import registry

MINIMAL_TABLES: dict[tuple[str, str], dict[str, Any]] = {
    ("transport", "tcp-server"): {"port": 0},
    ("transport", "tcp-client"): {"port": 9},
    ("transport", "nats"): {"subject": "quotes.>"},
    ("storage", "file"): {"dir": "unused"},
    ("storage", "raw-file"): {"path": "unused"},
    ("processor", "symbol-filter"): {"output": "out", "allow": ["EURUSD"]},
    ("sink", "stream"): {"transport": {"type": "tcp-server", "port": 0}},
}

PROTOCOLS: dict[str, type] = {
    "transport": gauss.Transport,
    "framing": gauss.Framing,
    "middleware": gauss.Middleware,
    "codec": gauss.Codec,
    "storage": gauss.TopicStorage,
    "processor": gauss.TopicProcessor,
    "sink": gauss.TopicSink,
}

BUILT_INS = [(kind, name) for kind in PROTOCOLS for name in registry.known(kind)]


def test_every_kind_has_built_ins() -> None:
    assert {kind for kind, _ in BUILT_INS} == set(PROTOCOLS)


@pytest.mark.parametrize(("kind", "name"), BUILT_INS)
def test_built_in_plugin_satisfies_its_protocol(kind: str, name: str) -> None:
    plugin = registry.create(kind, {"type": name, **MINIMAL_TABLES.get((kind, name), {})})
    try:
        assert isinstance(plugin, PROTOCOLS[kind]), f"{kind} {name!r} does not satisfy {PROTOCOLS[kind].__name__}"
    finally:
        close = getattr(plugin, "close", None) if kind == "transport" else None
        if close is not None:
            close()


def test_json_codec_offers_the_fused_quote_path() -> None:
    assert isinstance(registry.create("codec", "json"), gauss.QuoteCodec)
