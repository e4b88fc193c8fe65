"""The kernels in use: compiled (``_core``) unless ``GAUSS_PURE=1`` or absent.

This is the one place the choice is made; everything else imports kernels
from here. ``CORE`` is ``"cython"`` or ``"python"``; what a caller must do
differently for one or the other is declared here too (``OHLC_TAKES_ARRAYS``),
so no module outside this one branches on ``CORE``.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

__all__ = [
    "CORE",
    "OHLC_TAKES_ARRAYS",
    "TopicRecord",
    "QuoteBatch",
    "JsonQuoteParser",
    "CsvQuoteParser",
    "encode_csv_quotes",
    "AvroQuoteParser",
    "encode_avro_quotes",
    "ProtobufQuoteParser",
    "encode_protobuf_quotes",
    "LineDecoder",
    "LengthPrefixedDecoder",
    "encode_lines",
    "encode_length_prefixed",
    "encode_checked_frames",
    "write_records_json",
    "write_record_lines",
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

OHLC_TAKES_ARRAYS: bool = CORE == "cython"
"""``OhlcAggregator.update`` works on int64/float64 numpy arrays as they are (the compiled
kernel's typed memoryviews); the pure twin is faster on plain lists (numpy scalars would
leak into its candles and cost more per quote)."""
