"""Pure-Python twins of the compiled binary quote codecs (``_codecs.pxi``, part of ``_core.pyx``)."""

from __future__ import annotations

__all__: list[str] = []
