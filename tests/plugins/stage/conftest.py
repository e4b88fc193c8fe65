"""Fixtures of the stage tests: a publish context that records what processors publish."""

from __future__ import annotations

from typing import Any, Sequence

import pytest

from gauss.core import TopicRecord


class RecordingContext:
    """A :class:`~gauss.protocols.PublishContext` that keeps every publish call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[TopicRecord]]] = []

    def publish(self, topic: str, records: Sequence[TopicRecord]) -> None:
        assert records, "processors must not publish empty batches"
        self.calls.append((topic, list(records)))

    def take(self) -> list[tuple[str, list[TopicRecord]]]:
        calls, self.calls = self.calls, []
        return calls

    def records(self, topic: str) -> list[TopicRecord]:
        return [r for t, batch in self.calls if t == topic for r in batch]


@pytest.fixture
def context() -> Any:
    return RecordingContext()
