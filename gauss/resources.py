"""Locate files shipped beside the code: the default config and the schemas.

An installed package carries them in ``gauss/_data`` (copied by setup.py);
a source checkout has them at the repository root.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["resource_path"]

_PACKAGE_DATA = Path(__file__).resolve().parent / "_data"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def resource_path(name: str) -> Path:
    """Path of a shipped file, e.g. ``config.toml`` or ``schemas/quote.avsc``."""
    for base in (_PACKAGE_DATA, _REPO_ROOT):
        candidate = base / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"gauss: shipped file {name!r} not found in {_PACKAGE_DATA} or {_REPO_ROOT}")
