"""Known, reported defects that a fuzz target recognises instead of failing on (counted, never hidden).

A target that meets an input breaking an invariant because of a defect
listed here calls :func:`hit` and returns; the runner prints each issue's
count with the target's executions. Each entry says exactly which input
class it covers, so anything else still fails. Remove an entry once its
defect is fixed: the target then checks the invariant again.
"""

from __future__ import annotations

import json
import os

__all__ = ["ISSUES", "hit", "counts"]

ISSUES: dict[str, str] = {}
# Fixed: "json-fused-utf8" (json decode_quotes accepted invalid UTF-8 in unknown fields; non-ASCII
# payloads now take the generic path, tests/plugins/format/test_json_quotes.py).

_counts: dict[str, int] = {}


def hit(issue: str) -> None:
    """Count one input that meets ``issue``; the runner reads the counts from ``$GAUSS_FUZZ_KNOWN``."""
    assert issue in ISSUES, issue
    n = _counts[issue] = _counts.get(issue, 0) + 1
    path = os.environ.get("GAUSS_FUZZ_KNOWN")
    if path and n & (n - 1) == 0:  # 1, 2, 4, 8, ...: cheap, and the order of magnitude is what matters
        with open(path, "w", encoding="utf-8") as out:
            json.dump(_counts, out)


def counts() -> dict[str, int]:
    return dict(_counts)
