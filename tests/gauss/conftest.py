"""Tests of the ``gauss`` package's own modules; the engine tests' helpers (``engine_plugins``) and ``fake_plugins`` are importable."""

from __future__ import annotations

import sys
from pathlib import Path

for folder in (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent / "engine"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
