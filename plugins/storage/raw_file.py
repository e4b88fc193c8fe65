"""``raw-file`` storage: an append-only binary log of length-prefixed frames.

Each record is one frame: a u32 big-endian length, then the record's JSON
(``{"ts_ms","key","data","seq"}``). The log of a topic lives in its own
directory (``path``) as numbered segment files ``00000001.glog``, ...; a new
segment starts when the current one would pass ``max_file_bytes`` (0: never),
and with ``max_files`` set the oldest segments beyond that many are deleted.
``_meta.json`` keeps the epoch (and the last seq), so both survive restarts.

Queries, ``latest`` and ``keys`` are answered from an in-memory tail of the
newest ``tail_records`` records (loaded from the log at open; a candle topic
keeps one version per candle there); ``count`` and ``bounds`` describe that
tail. The whole log is read back with :func:`iter_raw_log`, also from the
command line: ``python -m gauss_plugins.storage.raw_file PATH`` prints it as
JSON lines.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Sequence

import msgspec
from gauss_plugins.storage._index import RecordIndex
from gauss_plugins.storage._support import PeriodicTask, new_epoch, write_atomic
from gauss_plugins.storage.file import decode_record

from gauss.core import LengthPrefixedDecoder, TopicRecord, encode_length_prefixed
from gauss.errors import FrameTooLarge, StorageError
from gauss.ratelimit import RateLimitedLog
from gauss.records import DataFormat, KeyInfo, QueryResult, TopicQuery
from gauss.registry import Options

__all__ = ["RawFileStorage", "create", "iter_raw_log", "segments", "SEGMENT_SUFFIX", "main"]

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".glog"
META_FILE = "_meta.json"
MAX_FRAME_BYTES = 1 << 28
"""A length prefix above this is corruption, not a record."""
_READ_CHUNK = 1 << 20

_encoder = msgspec.json.Encoder()


def segments(directory: Path | str) -> list[Path]:
    """The segment files of a log directory, oldest first."""
    found = [p for p in Path(directory).glob("*" + SEGMENT_SUFFIX) if p.stem.isdigit()]
    return sorted(found, key=lambda p: int(p.stem))


class _SegmentFrames:
    """Iterate the frames of one segment, reading 1 MiB at a time.

    After the iteration, ``complete`` is the byte length of the whole frames
    and ``size`` the bytes read: less than ``size`` means a torn or corrupt end.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.complete = 0
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        decoder = LengthPrefixedDecoder(MAX_FRAME_BYTES)
        with open(self.path, "rb") as handle:
            while chunk := handle.read(_READ_CHUNK):
                self.size += len(chunk)
                try:
                    frames = decoder.feed(chunk)
                except FrameTooLarge:
                    log.error("raw log %s: corrupt length prefix at byte %d; the rest is unreadable", self.path, self.complete)
                    self.size = os.path.getsize(self.path)
                    return
                for frame in frames:
                    self.complete += 4 + len(frame)
                    yield frame


def iter_raw_log(path: Path | str) -> Iterator[TopicRecord]:
    """Replay a raw log (a segment file, or a directory of them) as numbered records.

    A frame that is not a record is logged and skipped; a torn last frame
    (a write cut short) ends the replay.
    """
    path = Path(path)
    files = segments(path) if path.is_dir() else [path]
    for file in files:
        frames = _SegmentFrames(file)
        for frame in frames:
            try:
                yield decode_record(frame)
            except ValueError as exc:
                log.error("raw log %s: skipped a frame that is not a record: %s", file, exc)
        if frames.complete < frames.size:
            log.warning("raw log %s: ignored %d bytes of a torn last frame", file, frames.size - frames.complete)


class RawFileStorage:
    """Durable append-only frame log of one topic in directory ``path``."""

    name = "raw-file"
    durable = True

    def __init__(
        self,
        path: Path | str,
        *,
        flush_interval: float = 1.0,
        max_buffered: int = 100_000,
        tail_records: int = 100_000,
        max_file_bytes: int = 0,
        max_files: int = 0,
        fsync: bool = False,
    ) -> None:
        if flush_interval <= 0 or max_buffered < 1 or tail_records < 1 or max_file_bytes < 0 or max_files < 0:
            raise ValueError("bad raw-file storage limits")
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.max_buffered = max_buffered
        self.tail_records = tail_records
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.fsync = fsync
        self.topic = ""
        self.epoch = ""
        self.format = DataFormat.ANY
        self.corrupt_frames = 0
        """Frames found unreadable at open (skipped or cut off)."""
        self.dropped = 0
        """Records that could not be written (unserialisable data, or a write failing for too long)."""
        self.healthy = True
        """False while the last flush failed."""
        self._index: RecordIndex | None = None
        self._pending: list[TopicRecord] = []
        self._segment: Path | None = None
        self._segment_size = 0
        self._meta_seq = -1
        self._task: PeriodicTask | None = None
        self._errors = RateLimitedLog(log, level=logging.ERROR)

    def open(self, topic: str, data_format: DataFormat) -> tuple[str, int]:
        self.topic = topic
        self.format = DataFormat(data_format)
        self._index = RecordIndex(upsert=self.format.upsert, capacity=self.tail_records)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            meta = self._read_meta()
            tail = self._load_tail()
        except OSError as exc:
            raise StorageError(f"raw-file storage {self.path}: cannot open: {exc}") from exc
        self._index.add(tail)
        epoch = meta.get("epoch")
        self.epoch = epoch if isinstance(epoch, str) and epoch else new_epoch()
        meta_seq = meta.get("last_seq")
        last_seq = max(meta_seq if type(meta_seq) is int else 0, self._index.last_seq)
        self._write_meta(last_seq)
        self._task = PeriodicTask(self.flush_interval, self.flush, log, f"raw-file storage {self.path}: flush")
        return self.epoch, last_seq

    def _read_meta(self) -> dict[str, Any]:
        path = self.path / META_FILE
        try:
            meta = msgspec.json.decode(path.read_bytes())
        except FileNotFoundError:
            return {}
        except msgspec.DecodeError as exc:
            raise StorageError(f"raw-file storage {path}: unreadable ({exc}); fix or remove it") from None
        return meta if isinstance(meta, dict) else {}

    def _load_tail(self) -> list[TopicRecord]:
        """The newest ``tail_records`` records, reading segments newest first; cut a torn tail."""
        files = segments(self.path)
        collected: list[list[TopicRecord]] = []
        total = 0
        for position, file in enumerate(reversed(files)):
            reader = _SegmentFrames(file)
            frames = deque(reader, maxlen=self.tail_records - total)
            if reader.complete < reader.size:
                self.corrupt_frames += 1
                if position == 0:
                    log.warning("raw log %s: cutting %d bytes of a torn last frame", file, reader.size - reader.complete)
                    os.truncate(file, reader.complete)
            records = []
            for frame in frames:
                try:
                    records.append(decode_record(frame))
                except ValueError as exc:
                    self.corrupt_frames += 1
                    self._errors("raw log %s: skipped a frame that is not a record: %s", file, exc)
            collected.append(records)
            total += len(frames)
            if position == 0:
                self._segment, self._segment_size = file, reader.complete
            if total >= self.tail_records:
                break
        return [r for records in reversed(collected) for r in records]

    def _write_meta(self, last_seq: int) -> None:
        meta = {"epoch": self.epoch, "last_seq": last_seq, "topic": self.topic, "format": self.format.value}
        write_atomic(self.path / META_FILE, msgspec.json.encode(meta), fsync=self.fsync)
        self._meta_seq = last_seq

    @property
    def _opened(self) -> RecordIndex:
        if self._index is None:
            raise RuntimeError("raw-file storage used before open()")
        return self._index

    def append(self, records: Sequence[TopicRecord]) -> None:
        self._opened.add(records)
        self._pending.extend(records)
        if len(self._pending) >= self.max_buffered:
            self.flush()

    def _encode(self, records: list[TopicRecord]) -> bytes:
        payloads = []
        for r in records:
            try:
                payloads.append(_encoder.encode({"ts_ms": r.ts_ms, "key": r.key, "data": r.data, "seq": r.seq}))
            except (TypeError, msgspec.EncodeError) as exc:
                self.dropped += 1
                self._errors("raw-file storage %s: record seq %d not stored: %s", self.path, r.seq, exc)
        return encode_length_prefixed(payloads)

    def flush(self) -> None:
        """Append the queued records to the current segment (one write), rotating by size."""
        if self._index is None:
            return
        if self._pending:
            pending, self._pending = self._pending, []
            data = self._encode(pending)
            try:
                self._write(data)
                self.healthy = True
            except OSError as exc:
                self.healthy = False
                if len(pending) + len(self._pending) <= 2 * self.max_buffered:
                    self._pending[:0] = pending
                else:
                    self.dropped += len(pending)
                raise StorageError(f"raw-file storage {self.path}: write failed: {exc}") from exc
        if self._meta_seq != self._index.last_seq:
            self._write_meta(self._index.last_seq)

    def _write(self, data: bytes) -> None:
        if not data:
            return
        segment = self._segment
        if segment is None or (self.max_file_bytes and self._segment_size and self._segment_size + len(data) > self.max_file_bytes):
            number = int(segment.stem) + 1 if segment is not None else 1
            segment = self.path / f"{number:08d}{SEGMENT_SUFFIX}"
            self._segment, self._segment_size = segment, 0
            self._prune()
        with open(segment, "ab") as handle:
            handle.write(data)
            if self.fsync:
                handle.flush()
                os.fsync(handle.fileno())
        self._segment_size += len(data)

    def _prune(self) -> None:
        if not self.max_files:
            return
        files = segments(self.path)
        if self._segment is not None and self._segment not in files:
            files.append(self._segment)
        for old in files[: max(0, len(files) - self.max_files)]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        if self._task is not None:
            self._task.stop()
            self._task = None
        self.flush()

    def health(self) -> dict[str, float]:
        """Figures exported to ``/metrics`` as ``gauss_storage_<figure>``."""
        return {
            "healthy": 1.0 if self.healthy else 0.0,
            "buffered_records": float(len(self._pending)),
            "dropped_records": float(self.dropped),
            "unreadable_records": float(self.corrupt_frames),
        }

    def query(self, query: TopicQuery) -> QueryResult:
        records, truncated = self._opened.query(query.key, query.from_ms, query.to_ms, query.since_seq, query.limit)
        return QueryResult(records, truncated)

    def latest(self, key: str | None = None) -> list[TopicRecord]:
        return self._opened.latest(key)

    def keys(self) -> list[KeyInfo]:
        return self._opened.keys()

    def count(self) -> int:
        return len(self._opened)

    def bounds(self) -> tuple[int, int]:
        return self._opened.bounds()


def create(table: dict[str, Any]) -> RawFileStorage:
    opts = Options(table)
    path = opts.path("path")
    storage = RawFileStorage(
        path,
        flush_interval=opts.float("flush_interval", 1.0, min=0.001),
        max_buffered=opts.int("max_buffered", 100_000, min=1),
        tail_records=opts.int("tail_records", 100_000, min=1),
        max_file_bytes=opts.int("max_file_bytes", 0, min=0),
        max_files=opts.int("max_files", 0, min=0),
        fsync=opts.bool("fsync", False),
    )
    opts.done()
    return storage


def main(argv: Sequence[str] | None = None) -> int:
    """Print a raw log (file or directory) as JSON lines, one record each."""
    parser = argparse.ArgumentParser(prog="python -m gauss_plugins.storage.raw_file", description=main.__doc__)
    parser.add_argument("path", type=Path, help="a raw-file storage directory or one of its segment files")
    parser.add_argument("--key", help="only records of this key")
    args = parser.parse_args(argv)
    if not args.path.exists():
        parser.error(f"{args.path}: no such file or directory")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    out = sys.stdout.buffer
    try:
        for record in iter_raw_log(args.path):
            if args.key is None or record.key == args.key:
                out.write(_encoder.encode(record.as_dict()) + b"\n")
        out.flush()
    except BrokenPipeError:
        sys.stderr.close()  # a closed pipe (``| head``) is not an error
    return 0


if __name__ == "__main__":
    sys.exit(main())
