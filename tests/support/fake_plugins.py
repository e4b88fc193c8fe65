"""Plugins that lack a member of their protocol (named ``support.fake_plugins:...`` in configs)."""

from __future__ import annotations

from typing import Any


class IncompleteSink:
    """Looks like a sink of the old contract (``write``), but cannot be attached to a topic."""

    name = "incomplete"
    description = "incomplete sink"

    def start(self) -> None: ...

    def write(self, records: Any) -> None: ...

    def stop(self, timeout: float = 2.0) -> None: ...


def create_incomplete(table: dict[str, Any]) -> IncompleteSink:
    return IncompleteSink()


class IncompleteProcessor:
    """A processor without ``flush`` (and so without the flush at stop)."""

    name = "incomplete"
    flush_interval = None

    def start(self, context: Any) -> None: ...

    def process(self, topic: str, records: Any, context: Any) -> None: ...

    def stop(self, context: Any) -> None: ...


def create_incomplete_processor(table: dict[str, Any]) -> IncompleteProcessor:
    return IncompleteProcessor()
