"""End-to-end fixtures: ``serve_helpers`` and the engine tests' ``engine_plugins`` are importable here."""

from __future__ import annotations

import sys
from pathlib import Path

for _helpers in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "engine"):
    if str(_helpers) not in sys.path:
        sys.path.insert(0, str(_helpers))
