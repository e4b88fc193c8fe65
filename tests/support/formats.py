"""Helpers the codec tests share (``from support.formats import canon``)."""

from __future__ import annotations

import struct
from typing import Any

from gauss.core import QuoteBatch, TopicRecord
from gauss.records import Rejected

__all__ = ["canon"]


def canon(value: Any) -> Any:
    """``value`` with types kept and floats as their bits (NaNs compare, 1 differs from 1.0, -0.0 from 0.0)."""
    if type(value) is float:
        return ("float", struct.pack("<d", value))
    if isinstance(value, dict):
        return [(k, canon(v)) for k, v in value.items()]
    if isinstance(value, TopicRecord):
        return (value.ts_ms, value.key, value.seq, canon(value.data))
    if isinstance(value, Rejected):
        return (value.raw, value.reason)
    if isinstance(value, (list, tuple, QuoteBatch)):  # a batch of quotes compares as its records
        return [canon(v) for v in value]
    return (type(value).__name__, value)
