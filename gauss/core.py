"""The kernels in use: compiled (``_core``) unless ``GAUSS_PURE=1`` or absent.

This is the one place the choice is made; everything else imports kernels
from here. ``CORE`` is ``"cython"`` or ``"python"``.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

__all__ = [
    "CORE",
    "TopicRecord",
    "LineDecoder",
    "LengthPrefixedDecoder",
    "encode_lines",
    "encode_length_prefixed",
    "RecordRing",
    "QuoteRing",
    "OhlcAggregator",
    "QUOTE_FIELDS",
    "DEFAULT_MAX_FRAME_BYTES",
]

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    # Type checkers see the twins; gauss/_core.pyi declares the same API for the build.
    from gauss._pycore import *  # noqa: F403

    CORE: str
elif os.environ.get("GAUSS_PURE", "") not in ("", "0"):
    from gauss._pycore import *  # noqa: F403

    CORE = "python"
else:
    try:
        from gauss._core import *  # noqa: F403

        CORE = "cython"
    except ImportError as exc:  # pragma: no cover - depends on the build
        log.warning("gauss: compiled kernels unavailable (%s); using the pure-Python twins", exc)
        from gauss._pycore import *  # noqa: F403

        CORE = "python"
