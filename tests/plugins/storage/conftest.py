"""Fixtures shared by the storage tests: a naive reference model of a topic's records."""

from __future__ import annotations

from typing import Any

import pytest

from gauss.core import TopicRecord
from gauss.records import KeyInfo, TopicQuery


class NaiveTopic:
    """The obvious, slow semantics of SPEC sections 1 and 4 (the test oracle)."""

    def __init__(self, upsert: bool, capacity: int | None = None) -> None:
        self.upsert = upsert
        self.capacity = capacity
        self.records: list[TopicRecord] = []  # ascending seq

    @staticmethod
    def order(record: TopicRecord) -> tuple[int, int]:
        """Ascending ``ts_ms``, ties by ``seq``."""
        return (record.ts_ms, record.seq)

    def append(self, records: list[TopicRecord]) -> None:
        for record in records:
            if self.upsert:
                self.records = [r for r in self.records if (r.key, r.ts_ms) != (record.key, record.ts_ms)]
            self.records.append(record)
        if self.capacity is not None and len(self.records) > self.capacity:
            self.records = self.records[len(self.records) - self.capacity :]

    def query(self, query: TopicQuery) -> tuple[list[TopicRecord], bool]:
        found = sorted((r for r in self.records if query.matches(r)), key=self.order)
        truncated = len(found) > query.limit
        return found[len(found) - query.limit :] if truncated else found, truncated

    def latest(self, key: str | None = None) -> list[TopicRecord]:
        best: dict[str, TopicRecord] = {}
        for r in self.records:
            if key is not None and r.key != key:
                continue
            if r.key not in best or (r.ts_ms, r.seq) > (best[r.key].ts_ms, best[r.key].seq):
                best[r.key] = r
        return sorted(best.values(), key=self.order)

    def keys(self) -> list[KeyInfo]:
        keys = sorted({r.key for r in self.records})
        return [
            KeyInfo(k, sum(1 for r in self.records if r.key == k), max(r.ts_ms for r in self.records if r.key == k))
            for k in keys
        ]

    def bounds(self) -> tuple[int, int]:
        if not self.records:
            return (0, 0)
        return (min(r.seq for r in self.records), max(r.seq for r in self.records))


@pytest.fixture(scope="session")
def naive_topic() -> Any:
    """The :class:`NaiveTopic` class (build one per case)."""
    return NaiveTopic


