"""``symbol-filter`` processor: pass the records of chosen symbols on to another topic.

Exactly one of ``allow`` (only these symbols) or ``deny`` (all but these)
names the symbols, matched against the record key. Matching records are
published to ``output`` as new records (a record belongs to one topic and
gets its ``seq`` there), carrying the same ``ts_ms``, ``key`` and ``data``.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from gauss.core import TopicRecord
from gauss.errors import ConfigError
from gauss.protocols import PublishContext
from gauss.registry import Options

__all__ = ["SymbolFilter", "create"]


class SymbolFilter:
    """Forward the records whose key is allowed (or not denied) to ``output``."""

    name = "symbol-filter"
    flush_interval: float | None = None

    def __init__(self, output: str, *, allow: Iterable[str] | None = None, deny: Iterable[str] | None = None) -> None:
        if (allow is None) == (deny is None):
            raise ValueError("give exactly one of allow or deny")
        self.output = output
        self.symbols = frozenset(allow if allow is not None else deny)  # type: ignore[arg-type]
        self.allow = allow is not None
        self.passed = 0
        """Records forwarded so far."""

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


def create(table: dict[str, Any]) -> SymbolFilter:
    opts = Options(table)
    output = opts.str("output")
    allow = opts.str_list("allow", None)
    deny = opts.str_list("deny", None)
    opts.done()
    if allow is not None and deny is not None:
        raise ConfigError("deny", "give either 'allow' or 'deny', not both")
    if allow is None and deny is None:
        raise ConfigError("allow", "missing: give 'allow' (symbols to keep) or 'deny' (symbols to drop)")
    return SymbolFilter(output, allow=allow, deny=deny)
