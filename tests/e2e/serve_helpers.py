"""Moved to ``tests/support/serve.py`` (``from support.serve import ...``; ``free_port`` from ``support``).

Only names re-exported for tests written against the old place while the
helpers moved; the file goes when the tests are moved to mirror the package.
"""

from __future__ import annotations

from support import free_port
from support.serve import Server, expected_candles, quotes, serve_command

__all__ = ["Server", "expected_candles", "free_port", "quotes", "serve_command"]
