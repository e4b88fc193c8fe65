"""Plugins that lack a member of their protocol (named ``support.fake_plugins:...`` in configs)."""

from __future__ import annotations

from typing import Any

from gauss.registry import PluginConfig


class NoOptions(PluginConfig):
    """A plugin without options of its own."""


class IncompleteSink:
    """Looks like a sink of the old contract (``write``), but cannot be attached to a topic."""

    name = "incomplete"
    description = "incomplete sink"
    Config = NoOptions

    @classmethod
    def from_config(cls, config: NoOptions) -> IncompleteSink:
        return cls()

    def start(self) -> None: ...

    def write(self, records: Any) -> None: ...

    def stop(self, timeout: float = 2.0) -> None: ...


class IncompleteProcessor:
    """A processor without ``flush`` (and so without the flush at stop)."""

    name = "incomplete"
    flush_interval = None
    Config = NoOptions

    @classmethod
    def from_config(cls, config: NoOptions) -> IncompleteProcessor:
        return cls()

    def start(self, context: Any) -> None: ...

    def process(self, topic: str, records: Any, context: Any) -> None: ...

    def stop(self, context: Any) -> None: ...


def create_incomplete(table: dict[str, Any]) -> IncompleteSink:
    """A factory of the old contract (a function of the table): refused, it is not a plugin class."""
    return IncompleteSink()
