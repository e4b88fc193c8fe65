"""The symbol-filter processor."""

from __future__ import annotations

from typing import Any

import pytest
from gauss_plugins.stage.symbol_filter import SymbolFilter, SymbolFilterConfig

from gauss import registry
from gauss.core import TopicRecord
from gauss.errors import ConfigError


def batch() -> list[TopicRecord]:
    return [TopicRecord(1000 + i, key, {"symbol": key, "bid": 1.0 + i}, seq=i + 1) for i, key in enumerate(["EURUSD", "BTC/USD", "EURUSD", "XAU"])]


def test_allow_list_forwards_only_those_symbols_as_new_records(context: Any) -> None:
    processor = registry.create("processor", {"type": "symbol-filter", "output": "quotes.eur", "allow": ["EURUSD", "XAU"]})
    records = batch()
    processor.process("quotes.raw", records, context)
    (topic, out), = context.take()
    assert topic == "quotes.eur"
    assert [(r.ts_ms, r.key, r.data, r.seq) for r in out] == [
        (1000, "EURUSD", records[0].data, 0),
        (1002, "EURUSD", records[2].data, 0),
        (1003, "XAU", records[3].data, 0),
    ]
    assert not any(a is b for a in out for b in records), "published records are new objects"
    assert records[0].seq == 1, "the input records are left as they were"
    assert processor.passed == 3


def test_deny_list_forwards_everything_else(context: Any) -> None:
    processor = SymbolFilter.from_config(SymbolFilterConfig(output="quotes.fx", deny=("BTC/USD",)))
    processor.process("quotes.raw", batch(), context)
    assert [r.key for r in context.records("quotes.fx")] == ["EURUSD", "EURUSD", "XAU"]


def test_nothing_matching_publishes_nothing(context: Any) -> None:
    processor = SymbolFilter("out", allow=["NOPE"])
    processor.process("in", batch(), context)
    processor.flush(context)
    processor.stop(context)
    assert context.calls == []
    assert processor.flush_interval is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"allow": ["A"]}, "output: missing"),
        ({"output": "o"}, "allow: missing"),
        ({"output": "o", "allow": ["A"], "deny": ["B"]}, "deny: give either 'allow' or 'deny', not both"),
        ({"output": "o", "allow": "A"}, r"allow: Expected array \| null, got str"),
        ({"output": "o", "deny": [""]}, r"deny\[0\]: Expected str of length >= 1"),
        ({"output": "", "allow": ["A"]}, "output: Expected str of length >= 1"),
        ({"output": "o", "allow": ["A"], "alow": ["B"]}, "alow: unknown option"),
    ],
)
def test_bad_options_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.create("processor", {"type": "symbol-filter", **table})
