"""``symbol-filter`` processor: pass the records of chosen symbols on to another topic.

Exactly one of ``allow`` (only these symbols) or ``deny`` (all but these)
names the symbols, matched against the record key. Matching records are
published to ``output`` as new records (a record belongs to one topic and
gets its ``seq`` there), carrying the same ``ts_ms``, ``key`` and ``data``.
"""

from __future__ import annotations

from typing import Annotated, Iterable, Iterator, Sequence

import msgspec

from gauss.core import TopicRecord
from gauss.errors import ConfigError
from gauss.protocols import PublishContext
from gauss.registry import PluginConfig

__all__ = ["SymbolFilter", "SymbolFilterConfig"]


_Name = Annotated[str, msgspec.Meta(min_length=1)]


class SymbolFilterConfig(PluginConfig, frozen=True, kw_only=True):
    """The options of the ``symbol-filter`` processor: ``output`` and exactly one of ``allow`` or ``deny``."""

    output: _Name
    """The topic matching records are published to."""
    allow: tuple[_Name, ...] | None = None
    """Only these symbols pass."""
    deny: tuple[_Name, ...] | None = None
    """All symbols but these pass."""

    def __post_init__(self) -> None:
        if self.allow is not None and self.deny is not None:
            raise ConfigError("deny", "give either 'allow' or 'deny', not both")
        if self.allow is None and self.deny is None:
            raise ConfigError("allow", "missing: give 'allow' (symbols to keep) or 'deny' (symbols to drop)")

    def published_topics(self) -> Iterator[tuple[str, str]]:
        """The one topic records pass on to (:class:`~gauss.protocols.PublishingConfig`)."""
        yield "output", self.output


class SymbolFilter:
    """Forward the records whose key is allowed (or not denied) to ``output``."""

    name = "symbol-filter"
    flush_interval: float | None = None
    Config = SymbolFilterConfig

    def __init__(self, output: str, *, allow: Iterable[str] | None = None, deny: Iterable[str] | None = None) -> None:
        if (allow is None) == (deny is None):
            raise ValueError("give exactly one of allow or deny")
        self.output = output
        self.symbols = frozenset(allow if allow is not None else deny)  # type: ignore[arg-type]
        self.allow = allow is not None
        self.passed = 0
        """Records forwarded so far."""

    @classmethod
    def from_config(cls, config: SymbolFilterConfig) -> SymbolFilter:
        return cls(config.output, allow=config.allow, deny=config.deny)

    def start(self, context: PublishContext) -> None:
        """Nothing to prepare."""

    def process(self, topic: str, records: Sequence[TopicRecord], context: PublishContext) -> None:
        symbols = self.symbols
        if self.allow:
            out = [TopicRecord(r.ts_ms, r.key, r.data) for r in records if r.key in symbols]
        else:
            out = [TopicRecord(r.ts_ms, r.key, r.data) for r in records if r.key not in symbols]
        if out:
            self.passed += len(out)
            context.publish(self.output, out)

    def flush(self, context: PublishContext) -> None:
        """Nothing is held back."""

    def stop(self, context: PublishContext) -> None:
        """Nothing is held back."""
