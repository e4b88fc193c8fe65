"""``raw-file`` storage: an append-only binary log of checksummed frames.

Each record is one frame: a u32 big-endian payload length, a u32 big-endian
CRC-32 (``zlib.crc32``) of the payload, then the payload, the record's JSON
``{"ts_ms","key","data","seq"}``. (Before issue 10 frames had no checksum;
such logs are not read: their segments are moved aside as damaged.) The log
of a topic lives in its own directory (``path``) as numbered segment files
``00000001.glog``, ...; a new segment starts when the current one would pass
``max_file_bytes`` (0: never). Retention: with ``max_files`` the oldest
segments beyond that many are deleted, with ``max_age_s`` those last written
longer ago than that (never the segment being written).

Writes go through (SPEC section 6): :meth:`RawFileStorage.append` hands the
batch to the operating system with ``os.write`` before it returns, so a
record anyone can see is in the file. A write that fails part-way (disk
full) is cut back to the last good offset, and the batch raises
:class:`~gauss.errors.StorageError` with nothing of it left behind: a record
is in the log once or not at all. ``fsync``: ``always`` (before ``append``
returns), ``interval`` (every ``flush_interval``, at most a second) or
``never`` (the operating system decides).

Opening keeps every intact frame: a frame whose checksum fails, a torn last
frame or bytes that are no frame are skipped, the reader finds the next
intact frame after them, and at open the damaged bytes of the segments read
are moved to ``<segment>.corrupt`` (counted in ``corrupt_frames``, logged).
The last seq comes from the data itself (SPEC section 1, see
:func:`~gauss_plugins.storage._support.resume_point`).

Queries, ``latest`` and ``keys`` are answered from an in-memory tail of the
newest ``tail_records`` records (a candle topic keeps one version per candle
there); ``count`` and ``bounds`` describe that tail. The whole log is read
back in seq order with :func:`iter_raw_log` / :meth:`RawFileStorage.replay`
(``since_seq`` skips whole segments without decoding them), also from the
command line: ``python -m gauss_plugins.storage.raw_file PATH`` prints it as
JSON lines.
"""

from __future__ import annotations

import argparse
import logging
import os
import struct
import sys
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Annotated, Iterator, Sequence

import gevent.lock
import msgspec
from gauss_plugins.storage._index import RecordIndex
from gauss_plugins.storage._support import (
    CORRUPT_SUFFIX,
    MAX_FSYNC_INTERVAL,
    DeadLetters,
    DurableConfig,
    MetaWriter,
    PeriodicTask,
    fsync_dir,
    fsync_paths,
    move_aside,
    read_meta,
    remove_leftovers,
    resume_point,
    seqs_in,
    write_all,
)
from gauss_plugins.storage.file import decode_record

from gauss.core import QuoteBatch, TopicRecord, encode_checked_frames
from gauss.errors import StorageError
from gauss.ratelimit import RateLimitedLog
from gauss.records import DataFormat, KeyInfo, QueryResult, TopicQuery, encode_record, encode_record_lines

__all__ = ["RawFileStorage", "RawFileConfig", "iter_raw_log", "segments", "encode_frames", "SEGMENT_SUFFIX", "main"]

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".glog"
META_FILE = "_meta.json"
MAX_FRAME_BYTES = 1 << 28
"""A length above this is corruption, not a record."""
_READ_CHUNK = 1 << 20
_HEADER = struct.Struct(">II")
_HEADER_SIZE = _HEADER.size
_PAYLOAD_START = b'{"ts_ms":'
"""Every payload starts so (msgspec keeps the field order): the reader resynchronises on it after damage."""

def segments(directory: Path | str) -> list[Path]:
    """The segment files of a log directory, oldest first."""
    found = [p for p in Path(directory).glob("*" + SEGMENT_SUFFIX) if p.stem.isdigit()]
    return sorted(found, key=lambda p: int(p.stem))


def encode_frames(payloads: Sequence[bytes]) -> bytes:
    """Frames of the log format for ``payloads`` (JSON, no newline inside): length, CRC-32, payload each."""
    if not payloads:
        return b""
    return encode_checked_frames(b"\n".join(payloads) + b"\n")[0]


def _frames(path: Path, damaged: list[tuple[int, int]]) -> Iterator[tuple[int, bytes]]:
    """``(offset, payload)`` of every intact frame of a segment, in file order.

    Bytes that are not an intact frame are skipped; each such run is
    appended to ``damaged`` as ``(start, end)`` byte offsets. After damage
    the reader looks for the next offset where an intact frame starts
    (a payload start and a matching checksum), so one bad byte costs one frame.
    """
    crc = zlib.crc32
    unpack = _HEADER.unpack_from
    with open(path, "rb") as handle:
        buf = b""
        base = 0  # file offset of buf[0]
        pos = 0
        eof = False
        bad_from = -1
        need = _HEADER_SIZE
        while True:
            if len(buf) - pos < need and not eof:
                chunk = handle.read(max(_READ_CHUNK, need))
                if chunk:
                    buf = buf[pos:] + chunk
                    base += pos
                    pos = 0
                else:
                    eof = True
                continue
            if pos >= len(buf):
                break
            need = _HEADER_SIZE
            if len(buf) - pos >= _HEADER_SIZE:
                size, checksum = unpack(buf, pos)
                end = pos + _HEADER_SIZE + size
                if size <= MAX_FRAME_BYTES:
                    if end > len(buf) and not eof:
                        need = _HEADER_SIZE + size
                        continue
                    if end <= len(buf):
                        payload = buf[pos + _HEADER_SIZE : end]
                        if crc(payload) == checksum:
                            if bad_from >= 0:
                                damaged.append((bad_from, base + pos))
                                bad_from = -1
                            yield base + pos, payload
                            pos = end
                            continue
            # Not an intact frame here: skip to the next place one may start.
            if bad_from < 0:
                bad_from = base + pos
            found = buf.find(_PAYLOAD_START, pos + _HEADER_SIZE + 1)
            if found >= 0:
                pos = found - _HEADER_SIZE
            elif eof:
                damaged.append((bad_from, base + len(buf)))
                return
            else:
                pos = max(pos + 1, len(buf) - _HEADER_SIZE - len(_PAYLOAD_START))
                need = len(buf) - pos + 1  # read on before searching again
        if bad_from >= 0:
            damaged.append((bad_from, base + len(buf)))


def _first_seq(path: Path) -> int | None:
    """The seq of the first record of a segment (None when it holds none)."""
    damaged: list[tuple[int, int]] = []
    for _, payload in _frames(path, damaged):
        try:
            return decode_record(payload).seq
        except ValueError:
            continue
    return None


def iter_raw_log(path: Path | str, *, since_seq: int = 0) -> Iterator[TopicRecord]:
    """Replay a raw log (a segment file, or a directory of them) in seq order.

    Only records with ``seq > since_seq``; segments wholly at or below it are
    skipped unread (their successor's first seq says so). Damaged bytes are
    skipped and logged; every intact frame after them is still yielded.
    """
    path = Path(path)
    files = segments(path) if path.is_dir() else [path]
    if since_seq > 0:
        start = 0
        for number in range(1, len(files)):
            first = _first_seq(files[number])
            if first is None or first > since_seq + 1:
                break
            start = number
        files = files[start:]
    for file in files:
        damaged: list[tuple[int, int]] = []
        for _, payload in _frames(file, damaged):
            try:
                record = decode_record(payload)
            except ValueError as exc:
                log.error("raw log %s: skipped a frame that is not a record: %s", file, exc)
                continue
            if record.seq > since_seq:
                yield record
        for start_at, end_at in damaged:
            log.warning("raw log %s: skipped %d damaged bytes at offset %d", file, end_at - start_at, start_at)


def _unfinished_write(tail: bytes) -> bool:
    """Whether damaged tail bytes are one frame cut short: a write that never returned.

    A SIGKILL can stop ``os.write`` part-way through a batch; no one saw that
    batch (records become visible after the write returns), so its seqs were
    never handed out. Damage of any other shape (a complete frame whose
    checksum fails) may hide a seq someone saw.
    """
    if len(tail) < _HEADER_SIZE:
        return True
    size, _ = _HEADER.unpack_from(tail)
    payload = tail[_HEADER_SIZE:]
    return size <= MAX_FRAME_BYTES and _HEADER_SIZE + size > len(tail) and _PAYLOAD_START.startswith(payload[: len(_PAYLOAD_START)])


def _cut(path: Path, damaged: list[tuple[int, int]], size: int, *, fsync: bool) -> int:
    """Remove the ``damaged`` byte ranges from a segment; return its new size."""
    if len(damaged) == 1 and damaged[0][1] == size:
        os.truncate(path, damaged[0][0])
        return damaged[0][0]
    keep: list[tuple[int, int]] = []
    pos = 0
    for start, end in damaged:
        if start > pos:
            keep.append((pos, start))
        pos = end
    if pos < size:
        keep.append((pos, size))
    tmp = path.with_name(path.name + ".tmp")
    kept = 0
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        for start, end in keep:
            src.seek(start)
            dst.write(src.read(end - start))
            kept += end - start
        if fsync:
            dst.flush()
            os.fsync(dst.fileno())
    os.replace(tmp, path)
    return kept


class RawFileConfig(DurableConfig):
    """Options of the ``raw-file`` storage."""

    path: Path
    """The log's directory (relative to the configuration file)."""
    flush_interval: Annotated[float, msgspec.Meta(ge=0.001, le=MAX_FSYNC_INTERVAL)] = MAX_FSYNC_INTERVAL
    """Seconds between fsyncs (``fsync = "interval"``) and updates of ``_meta.json``."""
    tail_records: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    """The newest records kept in memory to answer queries."""
    max_file_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    """A new segment starts when the current one would pass this size; 0: never."""
    max_files: Annotated[int, msgspec.Meta(ge=0)] = 0
    """The oldest segments beyond this many are deleted; 0: none are."""
    max_age_s: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    """Segments last written longer ago than this are deleted; 0: none are."""
    max_buffered: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Ignored, accepted for older configs: appends write through, nothing is buffered."""


class RawFileStorage(MetaWriter):
    """Durable append-only frame log of one topic in directory ``path``."""

    name = "raw-file"
    durable = True
    Config = RawFileConfig

    def __init__(
        self,
        path: Path | str,
        *,
        flush_interval: float = MAX_FSYNC_INTERVAL,
        tail_records: int = 100_000,
        max_file_bytes: int = 0,
        max_files: int = 0,
        max_age_s: float = 0.0,
        fsync: str = "interval",
    ) -> None:
        if flush_interval <= 0 or tail_records < 1 or max_file_bytes < 0 or max_files < 0 or max_age_s < 0:
            raise ValueError("bad raw-file storage limits")
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be always, interval or never, not {fsync!r}")
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.tail_records = tail_records
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.max_age_s = max_age_s
        self.fsync = fsync
        self.topic = ""
        self.epoch = ""
        self.format = DataFormat.ANY
        self.corrupt_frames = 0
        """Damaged runs of bytes found at open (moved aside), plus intact frames that are not records."""
        self.dropped = 0
        """Records not stored: data that cannot be JSON, or batches whose write failed."""
        self.write_failures = 0
        self.dead_letters = DeadLetters(self.path, fsync=fsync == "always")
        """Batches a write failed for, kept in ``dead-letter/`` (SPEC section 6)."""
        """Appends that failed (the batch was cut back off the log and raised)."""
        self.healthy = True
        """False while the last write failed."""
        self._index: RecordIndex | None = None
        self._segment: Path | None = None
        self._segment_size = 0
        self._fd: int | None = None
        self._torn = False  # a failed write could not be cut back yet: cut before writing again
        self._unsynced: set[Path] = set()
        self._meta_seq = -1
        self._meta_path = self.path / META_FILE
        self._resumed_seq = 0  # the last seq open() continued from: never record less
        self._lock = gevent.lock.RLock()
        self._task: PeriodicTask | None = None
        self._errors = RateLimitedLog(log, level=logging.ERROR)

    @classmethod
    def from_config(cls, config: RawFileConfig) -> RawFileStorage:
        return cls(config.path, fsync=config.fsync_policy, **config.options(exclude=("path", "fsync", "max_buffered")))

    # --- opening -----------------------------------------------------------

    def open(self, topic: str, data_format: DataFormat) -> tuple[str, int]:
        self.topic = topic
        self.format = DataFormat(data_format)
        self._index = RecordIndex(upsert=self.format.upsert, capacity=self.tail_records)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            remove_leftovers(self.path, log)
            meta = read_meta(self.path / META_FILE, log)
            tail, data_last_seq, doubtful = self._load_tail()
        except OSError as exc:
            raise StorageError(f"raw-file storage {self.path}: cannot open: {exc}") from exc
        self._index.add(tail)
        self.epoch, last_seq = resume_point(
            meta, data_last_seq, data_doubtful=doubtful, has_data=bool(segments(self.path)), logger=log, what=f"raw log {self.path}"
        )
        self._resumed_seq = last_seq
        try:
            self._write_meta(last_seq, clean=False, sync=True)
        except OSError as exc:
            raise StorageError(f"raw-file storage {self.path}: cannot record its state in {META_FILE}: {exc}") from exc
        interval = min(self.flush_interval, MAX_FSYNC_INTERVAL) if self.fsync == "interval" else self.flush_interval
        self._task = PeriodicTask(interval, self.flush, log, f"raw-file storage {self.path}: flush")
        return self.epoch, last_seq

    def _load_tail(self) -> tuple[list[TopicRecord], int, bool]:
        """The newest ``tail_records`` records, the highest seq in the data, and whether damage may hide a higher one.

        Reads segments newest first; damaged bytes of the segments read are
        moved aside and cut out.
        """
        files = segments(self.path)
        collected: list[list[TopicRecord]] = []
        total = 0
        data_last_seq = 0
        doubtful = False
        newer_records = False  # a newer segment holds records (so any damage here is below their seqs)
        for position, file in enumerate(reversed(files)):
            damaged: list[tuple[int, int]] = []
            frames: deque[bytes] = deque(maxlen=self.tail_records - total)
            newest_seq = 0
            for _, payload in _frames(file, damaged):
                frames.append(payload)
            size = file.stat().st_size
            records = []
            for payload in frames:
                try:
                    records.append(decode_record(payload))
                except ValueError as exc:
                    self.corrupt_frames += 1
                    self._errors("raw log %s: skipped a frame that is not a record: %s", file, exc)
            if records:
                newest_seq = max(r.seq for r in records)
            if damaged:
                self.corrupt_frames += len(damaged)
                with open(file, "rb") as handle:
                    pieces = []
                    for start, end in damaged:
                        handle.seek(start)
                        pieces.append(handle.read(end - start))
                tail_damage = damaged[-1][1] == size
                if tail_damage and not newer_records:
                    legible = seqs_in(pieces[-1])
                    if legible:
                        data_last_seq = max(data_last_seq, *legible)
                    elif not _unfinished_write(pieces[-1]):
                        doubtful = True
                move_aside(file, b"".join(pieces), log)
                size = _cut(file, damaged, size, fsync=self.fsync != "never")
            if not newer_records and newest_seq:
                data_last_seq = max(data_last_seq, newest_seq)
            newer_records = newer_records or bool(records)
            collected.append(records)
            total += len(frames)
            if position == 0:
                self._segment, self._segment_size = file, size
            if total >= self.tail_records:
                break
        return [r for records in reversed(collected) for r in records], data_last_seq, doubtful

    # --- writing -----------------------------------------------------------

    def append(self, records: Sequence[TopicRecord]) -> None:
        """Write the batch through to the log (and fsync it with ``always``), then make it queryable.

        Raises :class:`StorageError` with nothing of the batch left in the log
        or the index when the write fails.
        """
        index = self._opened
        data, kept = self._encode(records)
        if data:
            with self._lock:
                try:
                    self._write(data, len(kept))
                except StorageError as exc:
                    where = self.dead_letters.keep(kept, str(exc.__cause__ or exc))
                    if where is not None:
                        exc.add_note(f"the batch is kept in {where}")
                    raise
        index.add(kept)

    def _encode(self, records: Sequence[TopicRecord]) -> tuple[bytes, Sequence[TopicRecord]]:
        """The frames of a batch, and the records they hold (a record whose data cannot be JSON is dropped)."""
        try:
            if isinstance(records, QuoteBatch):
                return records.record_frames(), records  # PERF: the frames written straight from the columns
            # PERF: one msgspec call for the batch, split at the newlines (JSON has none inside): ~2x per record
            lines = encode_record_lines(records)
        except (TypeError, msgspec.EncodeError):
            return self._encode_each(records)
        return encode_checked_frames(lines)[0], records

    def _encode_each(self, records: Sequence[TopicRecord]) -> tuple[bytes, Sequence[TopicRecord]]:
        payloads: list[bytes] = []
        kept: list[TopicRecord] | None = None
        for number, r in enumerate(records):
            try:
                payload = encode_record(r)
            except (TypeError, msgspec.EncodeError) as exc:
                if kept is None:
                    kept = list(records[:number])
                self.dropped += 1
                self._errors("raw-file storage %s: record seq %d not stored: %s", self.path, r.seq, exc)
                continue
            payloads.append(payload)
            if kept is not None:
                kept.append(r)
        return encode_frames(payloads), records if kept is None else kept

    def _write(self, data: bytes, count: int) -> None:
        if self._fd is None:
            self._open_segment()
        if self.max_file_bytes and self._segment_size and self._segment_size + len(data) > self.max_file_bytes:
            self._open_segment(rotate=True)
        fd = self._fd
        assert fd is not None and self._segment is not None
        good = self._segment_size
        try:
            if self._torn:
                os.ftruncate(fd, good)
                self._torn = False
            write_all(fd, data)
            if self.fsync == "always":
                fsync_paths([self._segment])
        except OSError as exc:
            self.write_failures += 1
            self.dropped += count
            self.healthy = False
            try:
                os.ftruncate(fd, good)
            except OSError as cut_exc:
                self._torn = True
                self._errors("raw-file storage %s: cannot cut a failed write back (%s); will before the next", self.path, cut_exc)
            raise StorageError(f"raw-file storage {self.path}: write failed, batch of {count} not stored: {exc}") from exc
        self._segment_size += len(data)
        self.healthy = True
        if self.fsync == "interval":
            self._unsynced.add(self._segment)

    def _open_segment(self, *, rotate: bool = False) -> None:
        """Open the segment to append to: the newest one at first, the next one with ``rotate``."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._segment is None or rotate:
            number = int(self._segment.stem) + 1 if self._segment is not None else 1
            self._segment = self.path / f"{number:08d}{SEGMENT_SUFFIX}"
            self._segment_size = 0
        created = not self._segment.exists()
        self._fd = os.open(self._segment, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if created and self.fsync == "always":
            fsync_dir(self.path)
        self._prune()

    def _prune(self) -> None:
        """Retention: delete the oldest segments beyond ``max_files`` or older than ``max_age_s``."""
        if not self.max_files and not self.max_age_s:
            return
        files = [f for f in segments(self.path) if f != self._segment]
        doomed = files[: max(0, len(files) + 1 - self.max_files)] if self.max_files else []
        if self.max_age_s:
            horizon = time.time() - self.max_age_s
            for file in files[len(doomed) :]:
                try:
                    if file.stat().st_mtime >= horizon:
                        break
                except FileNotFoundError:
                    continue
                doomed.append(file)
        for old in doomed:
            old.unlink(missing_ok=True)
            old.with_name(old.name + CORRUPT_SUFFIX).unlink(missing_ok=True)
            self._unsynced.discard(old)

    def flush(self) -> None:
        """fsync what was written since the last flush (``interval``), apply age retention, record the last seq."""
        if self._index is None:
            return
        with self._lock:
            unsynced, self._unsynced = self._unsynced, set()
            if self.max_age_s:
                self._prune()
        fsync_paths(unsynced)
        if self._meta_seq != self._last_seq():
            self._write_meta(self._last_seq(), clean=False)

    def close(self) -> None:
        if self._task is not None:
            self._task.stop()
            self._task = None
        if self._index is None:
            return
        with self._lock:
            if self._fd is not None:
                if self.fsync != "never":
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
            if self.fsync != "never":
                fsync_paths(self._unsynced)
            self._unsynced.clear()
            self._write_meta(self._last_seq(), clean=True, sync=True)

    def health(self) -> dict[str, float]:
        """Figures exported to ``/metrics`` as ``gauss_storage_<figure>``."""
        return {
            "healthy": 1.0 if self.healthy else 0.0,
            "dropped_records": float(self.dropped),
            "write_failures": float(self.write_failures),
            "unreadable_records": float(self.corrupt_frames),
            "dead_letter_records": float(self.dead_letters.records),
        }

    # --- reading -----------------------------------------------------------

    def replay(self, since_seq: int = 0) -> Iterator[TopicRecord]:
        """Every record of the log with ``seq > since_seq``, ascending by seq (see :func:`iter_raw_log`)."""
        return iter_raw_log(self.path, since_seq=since_seq)

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


def main(argv: Sequence[str] | None = None) -> int:
    """Print a raw log (file or directory) as JSON lines, one record each."""
    parser = argparse.ArgumentParser(prog="python -m gauss_plugins.storage.raw_file", description=main.__doc__)
    parser.add_argument("path", type=Path, help="a raw-file storage directory or one of its segment files")
    parser.add_argument("--key", help="only records of this key")
    parser.add_argument("--since-seq", type=int, default=0, help="only records with a higher seq")
    args = parser.parse_args(argv)
    if not args.path.exists():
        parser.error(f"{args.path}: no such file or directory")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    out = sys.stdout.buffer
    try:
        for record in iter_raw_log(args.path, since_seq=args.since_seq):
            if args.key is None or record.key == args.key:
                out.write(encode_record(record) + b"\n")
        out.flush()
    except BrokenPipeError:
        sys.stderr.close()  # a closed pipe (``| head``) is not an error
    return 0


if __name__ == "__main__":
    sys.exit(main())
