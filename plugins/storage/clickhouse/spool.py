"""The spool: every batch on local disk before it is visible, until ClickHouse has it.

SPEC section 6 ("visible means written"): ``append`` hands a batch to the
operating system here before it returns, so a record any client saw survives
a SIGKILL of Gauss (and, with ``fsync = "always"``, a power loss) even while
ClickHouse is slow or away. The worker reads frames from the front, inserts
them, and acknowledges them; segments entirely delivered are deleted.

On disk, per topic: ``<seq>.spool`` segment files of frames
``magic | body length | CRC-32 of body | first seq | last seq | records | body``
(the body is the batch's RowBinary insert body, so frames concatenate into
one ``INSERT``), ``state.json`` (epoch, what was acknowledged, whether the
last close was clean) and ``dead-letter/`` (batches ClickHouse refused for
good, as insertable RowBinary files beside a JSON note saying why).
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote as _url_quote

import msgspec
from gauss_plugins.storage._support import fsync_dir, move_aside, write_all, write_atomic

from gauss.errors import StorageError

__all__ = [
    "Frame",
    "DiskSpool",
    "MemorySpool",
    "DeadLetter",
    "SpoolFull",
    "file_name",
]

log = logging.getLogger(__name__)

MAGIC = b"GCS1"
_HEAD = struct.Struct("<4sIIQQI")
"""magic, body length, CRC-32 of the body, first seq, last seq, record count."""
SEGMENT_BYTES = 16 << 20
"""A segment is closed and a new one begun past this size (so delivered data leaves the disk soon)."""
STATE_FILE = "state.json"
LEGACY_SUFFIX = ".rowbinary"
"""One file per batch, ``<first>-<last>-<count>.rowbinary``: the spool of earlier versions, migrated at load."""


class SpoolFull(StorageError):
    """The spool has no room for a batch (``max_spool_bytes``)."""


@dataclass(frozen=True)
class Frame:
    """One appended batch: its seqs, its record count and its RowBinary insert body."""

    first_seq: int
    last_seq: int
    records: int
    body: bytes


def file_name(text: str) -> str:
    """A file name for any string (SPEC's percent-encoding rule of the file storage)."""
    encoded = _url_quote(text, safe="-_.")
    return "%2E" + encoded[1:] if encoded.startswith(".") else encoded


def _frame_bytes(frame: Frame) -> bytes:
    head = _HEAD.pack(MAGIC, len(frame.body), zlib.crc32(frame.body), frame.first_seq, frame.last_seq, frame.records)
    return head + frame.body


def _parse(data: bytes, pos: int) -> tuple[Frame, int] | None:
    """The intact frame at ``pos`` and the offset after it, or None (torn, damaged, or not a frame)."""
    if len(data) - pos < _HEAD.size:
        return None
    magic, size, crc, first, last, count = _HEAD.unpack_from(data, pos)
    end = pos + _HEAD.size + size
    if magic != MAGIC or end > len(data) or first > last or count < 1:
        return None
    body = data[pos + _HEAD.size : end]
    if zlib.crc32(body) != crc:
        return None
    return Frame(first, last, count, body), end


def _unfinished_frame(tail: bytes) -> bool:
    """Whether damaged tail bytes are the start of one frame, cut short (an ``os.write`` that never returned)."""
    if len(tail) < _HEAD.size:
        return MAGIC.startswith(tail[: len(MAGIC)])
    magic, size = _HEAD.unpack_from(tail)[:2]
    return magic == MAGIC and _HEAD.size + size > len(tail)


@dataclass
class _Segment:
    path: Path
    size: int
    frames: int


class DiskSpool:
    """Frames in append-only segment files under ``directory``, bounded by ``max_bytes``.

    Not thread-safe: the storage serialises every call with one lock.
    """

    durable = True

    def __init__(self, directory: Path, max_bytes: int, fsync: str = "interval") -> None:
        """``fsync``: one of ``FSYNC_POLICIES`` (the storage checked it)."""
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._segments: deque[_Segment] = deque()
        self._fd: int | None = None  # the last segment, open for appending
        self._cursor = 0  # frames of the first segment already acknowledged
        self._cursor_offset = 0  # and the byte offset after them
        self._pending: deque[tuple[int, int]] = deque()  # (records, bytes) per frame not yet acknowledged
        self.pending_records = 0
        self.pending_bytes = 0
        self.disk_bytes = 0
        self.last_seq = 0
        """The highest seq this spool holds or held since it was loaded."""
        self.corrupt_bytes = 0
        """Damaged bytes found at load and moved aside to ``<segment>.corrupt``."""
        self.hidden_damage = False
        """Damage found at load that may hide a seq someone saw (anything but an unfinished last write)."""
        self.dirty = False
        """Appended and not yet fsynced."""

    # -- load -----------------------------------------------------------------

    def load(self, acked_seq: int = 0) -> None:
        """Read what a previous run left: every intact frame, frames up to ``acked_seq`` counting as delivered."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        segments = sorted(self.directory.glob("*.spool"), key=lambda p: (_leading_int(p), p.stat().st_mtime_ns))
        skipping = True
        for number, path in enumerate(segments, 1):
            skipping = self._load_segment(path, acked_seq, skipping, newest=number == len(segments))
        for path in sorted(self.directory.glob(f"*{LEGACY_SUFFIX}"), key=_leading_int):
            self._migrate(path)

    def _load_segment(self, path: Path, acked_seq: int, skipping: bool, *, newest: bool) -> bool:
        """Take one segment in; True while every frame so far had been delivered before the restart."""
        data = path.read_bytes()
        frames: list[tuple[Frame, int, int]] = []  # frame, start, end
        damaged: list[bytes] = []
        at_end = False  # the last damaged run reaches the end of the segment
        pos = 0
        while pos < len(data):
            parsed = _parse(data, pos)
            if parsed is not None:
                frame, end = parsed
                frames.append((frame, pos, end))
                pos = end
                continue
            # Damage: keep it aside, then resynchronise on the next intact frame (if any).
            nxt = data.find(MAGIC, pos + 1)
            while nxt != -1 and _parse(data, nxt) is None:
                nxt = data.find(MAGIC, nxt + 1)
            stop = len(data) if nxt == -1 else nxt
            damaged.append(data[pos:stop])
            at_end = stop == len(data)
            pos = stop
        if damaged:
            # A frame cut short at the end of the newest segment is a write SIGKILL stopped: never seen.
            torn = newest and at_end and _unfinished_frame(damaged[-1])
            self.hidden_damage = self.hidden_damage or len(damaged) > int(torn)
            self.corrupt_bytes += sum(len(part) for part in damaged)
            move_aside(path, b"".join(damaged), log)
            kept = b"".join(data[start:end] for _, start, end in frames)
            write_atomic(path, kept, fsync=self.fsync != "never")
            frames, pos = [], 0
            while pos < len(kept):
                frame, end = _parse(kept, pos)  # type: ignore[misc]  # every frame of kept is intact
                frames.append((frame, pos, end))
                pos = end
        for frame, _, _ in frames:
            self.last_seq = max(self.last_seq, frame.last_seq)
        skipped = 0
        while skipping and skipped < len(frames) and frames[skipped][0].last_seq <= acked_seq:
            skipped += 1  # delivered before the restart (delivery goes in order, so a prefix)
        if skipped == len(frames):
            path.unlink(missing_ok=True)
            return skipping
        size = frames[-1][2]
        self._segments.append(_Segment(path, size, len(frames)))
        self.disk_bytes += size
        if skipped:  # only the first segment kept can start with delivered frames
            self._cursor = skipped
            self._cursor_offset = frames[skipped - 1][2]
        for frame, start, end in frames[skipped:]:
            self._pending.append((frame.records, end - start))
            self.pending_records += frame.records
            self.pending_bytes += end - start
        return False

    def _migrate(self, path: Path) -> None:
        try:
            first, last, count = (int(part) for part in path.stem.split("-"))
            body = path.read_bytes()
        except (ValueError, OSError) as exc:
            log.warning("clickhouse spool: leaving unexpected file %s (%s)", path, exc)
            return
        self.append(Frame(first, last, count, body), force=True)
        self.sync()
        path.unlink()
        log.info("clickhouse spool %s: migrated %s (%d records) to the segment log", self.directory, path.name, count)

    # -- append ---------------------------------------------------------------

    def append(self, frame: Frame, *, force: bool = False) -> None:
        """Write ``frame`` to the OS (and disk, with ``fsync = "always"``) or raise, leaving nothing torn."""
        raw = _frame_bytes(frame)
        if not force and self.disk_bytes + len(raw) > self.max_bytes:
            raise SpoolFull(
                f"clickhouse spool {self.directory} full ({self.disk_bytes} of {self.max_bytes} bytes, "
                f"{self.pending_records} records waiting)"
            )
        if self._fd is None or self._segments[-1].size >= SEGMENT_BYTES:
            self._open_segment(frame.first_seq)
        assert self._fd is not None
        segment = self._segments[-1]
        try:
            write_all(self._fd, raw)
            if self.fsync == "always":
                os.fsync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, segment.size)  # roll back to the last good frame
            except OSError as undo:
                log.error("clickhouse spool %s: cannot roll back a failed write: %s", segment.path, undo)
            # The next batch starts a new segment: whatever a failed roll-back left lies past this
            # segment's last counted frame, where reads never go (and a reload moves it aside).
            self._close_fd()
            if not segment.frames:  # it held only the failed batch
                self._segments.pop()
                segment.path.unlink(missing_ok=True)
            raise StorageError(f"clickhouse spool {segment.path}: cannot write: {exc}") from exc
        segment.size += len(raw)
        segment.frames += 1
        self.disk_bytes += len(raw)
        self._pending.append((frame.records, len(raw)))
        self.pending_records += frame.records
        self.pending_bytes += len(raw)
        self.last_seq = max(self.last_seq, frame.last_seq)
        self.dirty = self.fsync != "always"

    def _open_segment(self, first_seq: int) -> None:
        self._close_fd()
        path = self.directory / f"{first_seq:020d}.spool"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise StorageError(f"clickhouse spool {path}: cannot create: {exc}") from exc
        size = os.fstat(fd).st_size
        if size:  # a segment of this name exists (a seq reused after a new epoch): never append behind it
            os.close(fd)
            path = self.directory / f"{first_seq:020d}-{time.time_ns()}.spool"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self.fsync == "always":
            fsync_dir(self.directory)
        self._fd = fd
        self._segments.append(_Segment(path, 0, 0))

    # -- the worker's side ----------------------------------------------------

    def read(self, max_records: int) -> list[Frame]:
        """Frames from the front (not yet acknowledged): at least one, then up to ``max_records`` in all."""
        out: list[Frame] = []
        records = 0
        index, offset = self._cursor, self._cursor_offset
        for segment in self._segments:
            with open(segment.path, "rb") as handle:
                handle.seek(offset)
                while index < segment.frames:
                    head = handle.read(_HEAD.size)
                    frame = None
                    if len(head) == _HEAD.size:
                        size = _HEAD.unpack_from(head)[1]
                        parsed = _parse(head + handle.read(size), 0)
                        frame = parsed[0] if parsed is not None else None
                    if frame is None:
                        raise StorageError(f"clickhouse spool {segment.path}: frame {index} damaged since it was written")
                    if out and records + frame.records > max_records:
                        return out
                    out.append(frame)
                    records += frame.records
                    index += 1
            index, offset = 0, 0
        return out

    def ack(self, count: int) -> None:
        """The first ``count`` pending frames are done with (delivered or dead-lettered)."""
        for _ in range(count):
            records, size = self._pending.popleft()
            self.pending_records -= records
            self.pending_bytes -= size
            self._cursor += 1
            self._cursor_offset += size
            if self._cursor >= self._segments[0].frames:
                self._delete_first()  # every frame of it done with (the last segment: nothing pending at all)

    def _delete_first(self) -> None:
        segment = self._segments.popleft()
        if not self._segments:
            self.dirty = False  # delivered and about to go: no fsync for it
            self._close_fd()
        segment.path.unlink(missing_ok=True)
        self.disk_bytes -= segment.size
        self._cursor = 0
        self._cursor_offset = 0

    def take_dirty(self) -> Path | None:
        """The segment appended to since the last sync, now counted as synced (the caller fsyncs it), or None."""
        if not self.dirty or self._fd is None:
            return None
        self.dirty = False
        return self._segments[-1].path

    def sync(self) -> None:
        """fsync what was appended (``fsync = "interval"``: at most a second after the write)."""
        if self.dirty and self._fd is not None:
            os.fsync(self._fd)
        self.dirty = False

    # -- state ----------------------------------------------------------------

    def read_state(self) -> dict[str, Any] | None:
        """What the last run wrote in ``state.json``; None if missing or unreadable."""
        path = self.directory / STATE_FILE
        try:
            state = msgspec.json.decode(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("clickhouse spool %s: unreadable, ignored: %s", path, exc)
            return None
        return state if isinstance(state, dict) else None

    def write_state(self, state: dict[str, Any]) -> None:
        write_atomic(self.directory / STATE_FILE, msgspec.json.encode(state), fsync=self.fsync == "always")

    def close(self) -> None:
        self.sync()
        self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            if self.dirty:
                os.fsync(fd)
                self.dirty = False
            os.close(fd)


def _leading_int(path: Path) -> int:
    """The seq a spool file's name starts with (0 if none)."""
    head = path.name.split("-", 1)[0].split(".", 1)[0]
    return int(head) if head.isdigit() else 0


class MemorySpool:
    """The spool without a ``spool_dir``: frames in memory only (lost with the process), same interface."""

    durable = False
    corrupt_bytes = 0
    hidden_damage = False
    dirty = False

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._frames: deque[Frame] = deque()
        self.pending_records = 0
        self.pending_bytes = 0
        self.last_seq = 0

    @property
    def disk_bytes(self) -> int:
        return 0

    def load(self, acked_seq: int = 0) -> None:
        """Nothing survives a restart without a spool directory."""

    def append(self, frame: Frame) -> None:
        if self.pending_bytes + len(frame.body) > self.max_bytes:
            raise SpoolFull(f"clickhouse buffer full ({self.pending_bytes} bytes, {self.pending_records} records waiting)")
        self._frames.append(frame)
        self.pending_records += frame.records
        self.pending_bytes += len(frame.body)
        self.last_seq = max(self.last_seq, frame.last_seq)

    def read(self, max_records: int) -> list[Frame]:
        out: list[Frame] = []
        records = 0
        for frame in self._frames:
            if out and records + frame.records > max_records:
                break
            out.append(frame)
            records += frame.records
        return out

    def ack(self, count: int) -> None:
        for _ in range(count):
            frame = self._frames.popleft()
            self.pending_records -= frame.records
            self.pending_bytes -= len(frame.body)

    def sync(self) -> None:
        """Nothing to sync."""

    def read_state(self) -> dict[str, Any] | None:
        return None

    def write_state(self, state: dict[str, Any]) -> None:
        """No state survives without a spool directory."""

    def close(self) -> None:
        """Nothing to close."""


class DeadLetter:
    """Batches ClickHouse refused for good: ``<first>-<last>-<count>.rowbinary`` plus a ``.json`` note each.

    A ``.rowbinary`` file is the batch's insert body, so once the cause is
    mended it goes back in with the ``INSERT`` its note names. Bounded by
    ``max_bytes``; past it a refused batch is counted as dropped, not kept.
    """

    def __init__(self, directory: Path | None, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.batches = 0
        self.records = 0
        self.bytes = 0
        self.last_seq = 0

    def load(self) -> None:
        """Count what earlier runs dead-lettered (their seqs stay handed out)."""
        if self.directory is None or not self.directory.is_dir():
            return
        for path in self.directory.glob(f"*{LEGACY_SUFFIX}"):
            try:
                _, last, count = (int(part) for part in path.stem.split("-"))
            except ValueError:
                continue
            self.last_seq = max(self.last_seq, last)
            self.bytes += path.stat().st_size
            self.batches += 1
            self.records += count

    def put(self, frames: Sequence[Frame], note: dict[str, Any]) -> Path | None:
        """Keep ``frames`` (one refused batch) with ``note``; the file written, or None when there is no room."""
        first, last = frames[0].first_seq, frames[-1].last_seq
        count = sum(f.records for f in frames)
        self.last_seq = max(self.last_seq, last)
        body = b"".join(f.body for f in frames)
        if self.directory is None or self.bytes + len(body) > self.max_bytes:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{first:020d}-{last:020d}-{count}{LEGACY_SUFFIX}"
        write_atomic(path.with_suffix(".json"), msgspec.json.encode({**note, "records": count, "first_seq": first, "last_seq": last}))
        write_atomic(path, body)
        self.bytes += len(body)
        self.batches += 1
        self.records += count
        return path
