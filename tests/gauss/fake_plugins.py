"""Sink plugins for the sink tests (named ``fake_sinks:...`` in configs)."""

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
