"""End-to-end fixtures: the engine tests' helpers (``engine_plugins``) are importable here too."""

from __future__ import annotations

import sys
from pathlib import Path

ENGINE = str(Path(__file__).resolve().parents[1] / "engine")
if ENGINE not in sys.path:
    sys.path.insert(0, ENGINE)
