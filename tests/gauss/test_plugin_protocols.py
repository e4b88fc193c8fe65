"""A plugin that lacks a member of its protocol is refused when it is built, naming it and what it lacks."""

from __future__ import annotations

from typing import Any

import pytest
from support.fake_plugins import IncompleteProcessor, IncompleteSink

from gauss.config import load_config
from gauss.errors import ConfigError
from gauss.hub import Hub

CASES = [
    ("sinks", "support.fake_plugins:IncompleteSink", IncompleteSink, "sink", "TopicSink", "attach, closed_by"),
    ("processors", "support.fake_plugins:IncompleteProcessor", IncompleteProcessor, "processor", "TopicProcessor", "flush"),
]


def methods(missing: str) -> str:
    """What a configuration's check of the class finds (data members are set by ``__init__``, checked at build)."""
    return ", ".join(m for m in missing.split(", ") if m != "closed_by")


@pytest.mark.parametrize(("section", "factory", "cls", "kind", "protocol", "missing"), CASES)
def test_refused_at_load_with_its_name(
    section: str, factory: str, cls: type, kind: str, protocol: str, missing: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"topics": [{"name": "q"}], section: [{"topic": "q", "type": factory}]})
    assert info.value.key == f"{section}[0].type"
    assert (
        info.value.reason
        == f"{kind} {factory!r} (support.fake_plugins.{cls.__name__}) does not implement {protocol}: missing {methods(missing)}"
    )


def test_a_factory_function_is_not_a_plugin() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"topics": [{"name": "q"}], "sinks": [{"topic": "q", "type": "support.fake_plugins:create_incomplete"}]})
    assert info.value.key == "sinks[0].type"
    assert "is not a plugin" in info.value.reason and "from_config" in info.value.reason


@pytest.mark.parametrize(("section", "factory", "cls", "kind", "protocol", "missing"), CASES)
def test_refused_by_the_hub_with_its_name(
    section: str, factory: str, cls: type, kind: str, protocol: str, missing: str
) -> None:
    hub = Hub.from_config({"topics": [{"name": "q"}]})
    hub.start()
    try:
        add: Any = hub.add_sink if kind == "sink" else hub.add_processor
        with pytest.raises(ConfigError) as info:
            add(cls(), "q")
        assert (
            info.value.reason
            == f"{kind} {cls.__name__!r} (support.fake_plugins.{cls.__name__}) does not implement {protocol}: missing {missing}"
        )
        assert hub.sinks == [] and hub.processors == []
    finally:
        hub.stop()
