"""JSON pieces of the API: record arrays encoded in ~64 KiB chunks that yield to the loop.

A 100,000-record answer is never one giant string or one giant list of
dicts: it is encoded a chunk at a time (a quote batch's range written from its
columns, other records as dicts), and the event loop runs between chunks so
ingest keeps flowing while it is written.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import gevent

from gauss.core import TopicRecord
from gauss.records import encode_json, encode_records_piece

__all__ = ["CHUNK_BYTES", "dumps", "record_chunks", "records_message_parts"]

CHUNK_BYTES = 65_536
"""Target size of one streamed piece."""

_FIRST_CHUNK_RECORDS = 256

dumps = encode_json
"""Encode a JSON-compatible object to bytes (:func:`gauss.records.encode_json`)."""


def record_chunks(
    records: Sequence[TopicRecord], *, yield_between: bool = True, on_measure: Callable[[int], Any] | None = None
) -> Iterator[bytes]:
    """The records' JSON forms, comma-separated, in pieces of about :data:`CHUNK_BYTES`.

    Joined with nothing between them and wrapped in ``[`` ``]`` they are the
    JSON array of ``records``. The chunk size adapts to the records' size;
    ``on_measure(bytes_per_record)`` is called once, after the first chunk.
    """
    total = len(records)
    start = 0
    step = _FIRST_CHUNK_RECORDS
    while start < total:
        stop = min(total, start + step)
        piece = encode_records_piece(records, start, stop)
        yield piece
        # PERF: size the next chunk from the bytes per record just measured.
        per_record = max(1, len(piece) // (stop - start))
        start = stop
        step = max(16, CHUNK_BYTES // per_record)
        if on_measure is not None:
            on_measure(per_record)
            on_measure = None
        if yield_between and start < total:
            gevent.sleep(0)


def records_message_parts(
    head: dict[str, Any],
    records: Sequence[TopicRecord],
    tail: dict[str, Any],
    *,
    on_measure: Callable[[int], Any] | None = None,
) -> Iterator[bytes]:
    """``{**head, "records": [...], **tail}`` as JSON, streamed in chunks (``on_measure``: see :func:`record_chunks`)."""
    opening = dumps(head)
    yield opening[:-1] + (b',"records":[' if len(opening) > 2 else b'"records":[')
    yield from record_chunks(records, on_measure=on_measure)
    closing = dumps(tail)
    yield b"]" + (b"," + closing[1:] if len(closing) > 2 else b"}")
