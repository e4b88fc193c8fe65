"""``file`` storage: record JSON lines, one file per key, durable across restarts.

Layout (SPEC section 2): ``<dir>/<encoded key>.jsonl``, one record per line,
``{"ts_ms":..,"key":..,"data":{..},"seq":N}``; ``<dir>/_meta.json`` keeps the
topic's epoch and last seq (written atomically; ``clean`` once ``close()``
wrote it last).

Writes go through (SPEC section 6): :meth:`FileStorage.append` appends each
key's lines of the batch to its file with ``os.write`` before it returns, so
whatever a query or a subscriber sees is on the operating system's side. A
write failing part-way (disk full) cuts every file of the batch back to its
last good size and raises :class:`~gauss.errors.StorageError`: a record is
on disk once or not at all. ``fsync`` is ``always`` (before ``append``
returns), ``interval`` (every ``flush_interval``, at most a second, in
gevent's thread pool) or ``never``. A batch over many keys yields to other
greenlets every few milliseconds (issue 11 item 3).

Candle topics upsert: on disk a file is append-only and the newest version
(highest seq) of each ``(key, ts_ms)`` wins on load; every
``compact_interval`` seconds a file with more dead lines than live ones is
rewritten (tmp file, then rename). Compaction also drops what retention removed.

Queries are answered from an in-memory index, bounded by retention
(``max_records_per_key``, ``retention_ms``) and by ``max_keys``: past that
many keys the longest-idle key leaves the index (its file stays; the next
record or keyed query of it reads it back). Key files are read lazily: at
open only ``_meta.json`` (and, after a crash, the last line of every file,
to find the last seq) is read; a background greenlet then loads the newest
``max_keys`` files while the server already runs. Keyed queries load their
key on demand; unkeyed ones (and ``keys``, ``count``, ``bounds``) wait for
the background load.

Opening never fails on a directory the storage wrote: an unreadable line or
a torn last line is moved to ``<file>.corrupt`` (counted, logged) and the
file rewritten without it; an unreadable ``_meta.json`` is moved aside too
and the storage continues on a new epoch.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Iterable, Sequence

import gevent
import gevent.event
import gevent.lock
import msgspec
from gauss_plugins.storage._index import RecordIndex
from gauss_plugins.storage._keys import KEY_FILE_SUFFIX, key_file_name
from gauss_plugins.storage._support import (
    MAX_FSYNC_INTERVAL,
    DeadLetters,
    DurableConfig,
    MetaWriter,
    PeriodicTask,
    fsync_dir,
    fsync_now,
    in_thread,
    move_aside,
    read_meta,
    remove_leftovers,
    resume_point,
    seqs_in,
    write_all,
    write_atomic,
)

from gauss.core import TopicRecord
from gauss.errors import StorageError
from gauss.ratelimit import RateLimitedLog
from gauss.records import DataFormat, KeyInfo, QueryResult, TopicQuery
from gauss.records import encode_record_lines as encode_records

__all__ = ["FileStorage", "FileConfig", "META_FILE", "encode_records", "decode_record", "default_max_open_files"]

log = logging.getLogger(__name__)

META_FILE = "_meta.json"
DEFAULT_MAX_RECORDS_PER_KEY = 100_000
DEFAULT_MAX_KEYS = 10_000
OPEN_FILES_SHARE = 16
"""By default a storage keeps a sixteenth of the process's open-file limit open (within OPEN_FILES_BOUNDS)."""
OPEN_FILES_BOUNDS = (64, 4096)
COMPACT_MIN_DEAD_LINES = 256
"""A file is rewritten only when it has at least this many dead lines (and more dead than live)."""
SLICE_S = 0.005
"""PERF: work over many keys yields to other greenlets after this long (issue 11: no flush may hold the loop ~20 ms)."""
_YIELD_CAP_S = 0.002
_TAIL_READ = 4096
_MTIME_SLACK_NS = 2_000_000_000
"""Files modified up to this long before the meta file was last written are read after a crash too (timestamp granularity, clock slew)."""
_INDEX_CHUNK = 128
_GROUP_CHUNK = 4096
_INLINE_KEYS = 32
"""A batch over more keys than this does its file system calls in the thread pool."""


_decoder = msgspec.json.Decoder()
# A key file holds JSON lines of numbered records, ``{"ts_ms","key","data","seq"}`` each:
# ``encode_records`` is gauss.records.encode_record_lines, the one record encoder.


def decode_record(line: bytes) -> TopicRecord:
    """One stored line back to a record; ValueError when it is not one."""
    try:
        obj = _decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    ts, key, seq = obj.get("ts_ms"), obj.get("key"), obj.get("seq")
    if type(ts) is not int or not isinstance(key, str) or type(seq) is not int or seq < 1:
        raise ValueError("missing or wrong ts_ms, key or seq")
    return TopicRecord(ts, key, obj.get("data"), seq)


class FileConfig(DurableConfig):
    """Options of the ``file`` storage."""

    dir: Path
    """The topic's directory (relative to the configuration file)."""
    flush_interval: Annotated[float, msgspec.Meta(ge=0.001, le=MAX_FSYNC_INTERVAL)] = MAX_FSYNC_INTERVAL
    """Seconds between fsyncs (``fsync = "interval"``) and updates of ``_meta.json``."""
    max_buffered: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Ignored, accepted for older configs: appends write through, nothing is buffered."""
    max_records_per_key: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_RECORDS_PER_KEY
    retention_ms: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """A key keeps the records within this many ms of its newest ``ts_ms``; None: no age limit."""
    compact_interval: Annotated[float, msgspec.Meta(ge=0.001)] = 60.0
    """Seconds between looks for files with more dead lines than live ones to rewrite."""
    max_keys: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_KEYS
    """Keys held in memory; past that the longest-idle key leaves the index (its file stays)."""
    max_open_files: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Append descriptors kept open (least recently used closed first); None: :func:`default_max_open_files`."""


def default_max_open_files() -> int:
    """Append descriptors a storage keeps open by default: the soft ``RLIMIT_NOFILE`` / 16, within 64 to 4096.

    PERF: a topic that writes more keys a batch than it keeps open reopens
    files every batch (1,000 symbols of candles at a fixed 256: open(2) and
    close(2) ~a third of the server). A share of the limit leaves the rest
    to the other storages and the sockets (eight candle storages: half).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return OPEN_FILES_BOUNDS[0]
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return OPEN_FILES_BOUNDS[1]
    return max(OPEN_FILES_BOUNDS[0], min(OPEN_FILES_BOUNDS[1], soft // OPEN_FILES_SHARE))


class _Slicer:
    """Yield to other greenlets once ``SLICE_S`` has passed since the last yield.

    NOTE: ``gevent.sleep(0)`` only runs greenlets already scheduled; timers
    and I/O wait for a loop iteration (measured: a 2 s loop yielding with
    sleep(0) every 5 ms still kept a 1 ms timer waiting 744 ms). A real
    sleep makes the loop turn but costs ~1.3 ms (the poll's granularity);
    ``gevent.idle()`` costs ~4 us but may wait as long as the loop is busy,
    so it is capped at 2 ms.
    """

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since = time.perf_counter()

    def __call__(self) -> None:
        now = time.perf_counter()
        if now - self._since >= SLICE_S:
            with gevent.Timeout(_YIELD_CAP_S, False):
                gevent.idle()
            self._since = time.perf_counter()


class _KeyFile:
    """What the storage knows of one loaded key file: its good size and its lines (live or dead)."""

    __slots__ = ("size", "lines", "torn")

    def __init__(self, size: int, lines: int) -> None:
        self.size = size
        self.lines = lines
        self.torn = False  # a failed write could not be cut back yet: cut before writing again


class FileStorage(MetaWriter):
    """Durable JSON-lines storage of one topic under ``directory``."""

    name = "file"
    durable = True
    Config = FileConfig

    def __init__(
        self,
        directory: Path | str,
        *,
        flush_interval: float = MAX_FSYNC_INTERVAL,
        max_records_per_key: int | None = DEFAULT_MAX_RECORDS_PER_KEY,
        retention_ms: int | None = None,
        compact_interval: float = 60.0,
        fsync: str = "interval",
        max_keys: int | None = DEFAULT_MAX_KEYS,
        max_open_files: int | None = None,
    ) -> None:
        if flush_interval <= 0 or compact_interval <= 0:
            raise ValueError("flush_interval and compact_interval must be positive")
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be always, interval or never, not {fsync!r}")
        if (max_open_files is not None and max_open_files < 1) or (max_keys is not None and max_keys < 1):
            raise ValueError("max_keys and max_open_files must be at least 1")
        self.directory = Path(directory)
        self._dir = str(self.directory)
        self.flush_interval = flush_interval
        self.max_records_per_key = max_records_per_key
        self.retention_ms = retention_ms
        self.compact_interval = compact_interval
        self.fsync = fsync
        self.max_keys = max_keys
        self._open_files_option = max_open_files
        self.max_open_files = self._open_files()
        """Append descriptors kept open; the default is read again at :meth:`open` (gauss-serve raises the limit between)."""
        self.topic = ""
        self.epoch = ""
        self.format = DataFormat.ANY
        self.upsert = False
        self.corrupt_lines = 0
        """Stored lines found unreadable or torn at open (moved to ``<file>.corrupt``)."""
        self.dropped = 0
        """Records not stored: data that cannot be JSON, or batches whose write failed."""
        self.write_failures = 0
        self.dead_letters = DeadLetters(self.directory, fsync=fsync == "always")
        """Batches a write failed for, kept in ``dead-letter/`` (SPEC section 6)."""
        """Appends that failed (every file of the batch cut back, the batch raised)."""
        self.healthy = True
        """False while the last write failed."""
        self._index: RecordIndex | None = None
        self._files: dict[str, _KeyFile] = {}  # loaded key files by name (bounded by max_keys via eviction)
        self._fds: OrderedDict[str, int] = OrderedDict()  # open append descriptors, least recently used first
        self._dirty: set[str] = set()  # written since the last interval fsync
        self._new_entries = False  # files created since the directory was last fsynced
        self._meta_seq = -1
        self._meta_path = self.directory / META_FILE
        self._resumed_seq = 0  # the last seq open() continued from: never record less
        self._last_compact = time.monotonic()
        self._lock = gevent.lock.RLock()
        self._ready = gevent.event.Event()
        self._loader: gevent.Greenlet | None = None
        self._task: PeriodicTask | None = None
        self._errors = RateLimitedLog(log, level=logging.ERROR)

    @classmethod
    def from_config(cls, config: FileConfig) -> FileStorage:
        return cls(config.dir, fsync=config.fsync_policy, **config.options(exclude=("dir", "fsync", "max_buffered")))

    # --- opening -----------------------------------------------------------

    def _open_files(self) -> int:
        return default_max_open_files() if self._open_files_option is None else self._open_files_option

    def open(self, topic: str, data_format: DataFormat) -> tuple[str, int]:
        fmt = DataFormat(data_format)
        self.max_open_files = self._open_files()
        self.topic = topic
        self.format = fmt
        self.upsert = fmt.upsert
        self._index = RecordIndex(
            upsert=self.upsert,
            max_per_key=self.max_records_per_key,
            retention_ms=self.retention_ms,
            max_keys=self.max_keys,
            on_evict=self._forget,
        )
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            remove_leftovers(self.directory, log)
            meta_path = self.directory / META_FILE
            meta_written = meta_path.stat().st_mtime_ns if meta_path.exists() else None
            meta = read_meta(meta_path, log)
            names = self._names()
            if meta.get("clean") is True:
                data_last_seq, doubtful = 0, False  # close() wrote the exact last seq after everything else
            else:
                since = meta_written - _MTIME_SLACK_NS if meta_written is not None and meta.get("last_seq") else None
                data_last_seq, doubtful = self._scan_tails(names, since)
        except OSError as exc:
            raise StorageError(f"file storage {self.directory}: cannot open: {exc}") from exc
        stored_format = meta.get("format")
        if stored_format not in (None, fmt.value):
            log.warning("file storage %s: held %s records, now opened as %s", self.directory, stored_format, fmt.value)
        self.epoch, last_seq = resume_point(
            meta, data_last_seq, data_doubtful=doubtful, has_data=bool(names), logger=log, what=f"file storage {self.directory}"
        )
        self._resumed_seq = last_seq
        try:
            self._write_meta(last_seq, clean=False, sync=True)
        except OSError as exc:
            raise StorageError(f"file storage {self.directory}: cannot record its state in {META_FILE}: {exc}") from exc
        self._loader = gevent.spawn(self._load_all, names)
        interval = min(self.flush_interval, MAX_FSYNC_INTERVAL) if self.fsync == "interval" else self.flush_interval
        self._task = PeriodicTask(interval, self._tick, log, f"file storage {self.directory}: flush")
        return self.epoch, last_seq

    def _names(self) -> list[str]:
        with os.scandir(self.directory) as entries:
            return [e.name for e in entries if e.name.endswith(KEY_FILE_SUFFIX) and e.is_file()]

    def _scan_tails(self, names: list[str], since_ns: int | None) -> tuple[int, bool]:
        """After a crash: the highest seq in the last lines of the files, and whether damage may hide a higher one.

        Each file is append-only in seq order, so its last intact line holds
        its highest seq. With ``since_ns`` (the meta file's time, less a
        slack) only files modified since are read: an older file holds no seq
        above the meta's ``last_seq`` (PERF: 100,000 files took 14 s to read
        on the loaded machine; their mtimes take a stat each).
        """
        highest = 0
        doubtful = False
        slicer = _Slicer()
        for name in names:
            path = os.path.join(self._dir, name)
            if since_ns is not None:
                try:
                    if os.stat(path).st_mtime_ns < since_ns:
                        continue
                except FileNotFoundError:
                    continue
            seq, hidden = self._tail_seq(path)
            highest = max(highest, seq)
            doubtful = doubtful or hidden
            slicer()
        return highest, doubtful

    @staticmethod
    def _tail_seq(path: str) -> tuple[int, bool]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0, False
        try:
            size = os.fstat(fd).st_size
            want = _TAIL_READ
            while True:
                start = max(0, size - want)
                chunk = os.pread(fd, size - start, start)
                lines = chunk.split(b"\n")
                if start > 0:
                    lines = lines[1:]  # the first piece may be the end of a longer line
                if len(lines) > 1 or start == 0:
                    break
                want *= 4
        finally:
            os.close(fd)
        # A last piece without its newline is a write that never returned
        # (SIGKILL mid-append): no one saw it. A complete line that is no
        # record is damage, and doubt unless its seq is still legible.
        legible = seqs_in(lines.pop())
        damaged = False
        for line in reversed(lines):
            if not line.strip():
                continue
            try:
                seq = decode_record(line).seq
            except ValueError:
                found = seqs_in(line)
                legible.extend(found)
                damaged = damaged or not found
                continue
            return max([seq, *legible]), damaged
        return max(legible, default=0), damaged

    def _load_all(self, names: list[str]) -> None:
        """Load the newest ``max_keys`` key files into the index, oldest of them first, yielding as it goes."""
        try:
            if self.max_keys is not None and len(names) > self.max_keys:
                stamped = []
                for name in names:
                    try:
                        stamped.append(((self.directory / name).stat().st_mtime_ns, name))
                    except FileNotFoundError:
                        continue
                stamped.sort()
                names = [name for _, name in stamped[-self.max_keys :]]
            slicer = _Slicer()
            for name in names:
                with self._lock:
                    if name not in self._files:
                        self._load_file(name)
                slicer()
        except Exception as exc:  # noqa: BLE001 - keyed queries still load their key on demand
            log.error("file storage %s: background load failed: %s", self.directory, exc)
        finally:
            self._ready.set()

    def _load_file(self, name: str) -> None:
        """Read one key file into the index (the caller holds the lock); repair a damaged one."""
        path = self.directory / name
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            self._files[name] = _KeyFile(0, 0)
            return
        lines = content.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        good: list[bytes] = []
        records: list[TopicRecord] = []
        damaged: list[bytes] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                records.append(decode_record(line))
            except ValueError as exc:
                damaged.append(line)
                self._errors("file storage %s: unreadable line moved aside: %s", path, exc)
                continue
            good.append(line)
        if torn:
            damaged.append(torn)
        size = len(content)
        if damaged:
            self.corrupt_lines += len(damaged)
            move_aside(path, b"\n".join(damaged) + b"\n", log)
            self._close_fd(name)
            repaired = b"".join(line + b"\n" for line in good)
            write_atomic(path, repaired, fsync=self.fsync != "never")
            size = len(repaired)
        self._files[name] = _KeyFile(size, len(good))
        records.sort(key=_by_seq)
        self._opened.add(records)

    def _forget(self, key: str) -> None:
        """The index let ``key`` go (``max_keys``): its file stays on disk, read again when needed."""
        name = key_file_name(key)
        self._files.pop(name, None)
        self._close_fd(name)

    # --- writing -----------------------------------------------------------

    def append(self, records: Sequence[TopicRecord]) -> None:
        """Write the batch through to the key files (and fsync them with ``always``), then index it.

        Raises :class:`StorageError` with every file cut back to where it was
        and nothing indexed when a write fails.
        """
        index = self._opened
        slicer = _Slicer()
        groups: dict[str, list[TopicRecord]] = {}
        for start in range(0, len(records), _GROUP_CHUNK):
            for record in records[start : start + _GROUP_CHUNK]:
                group = groups.get(record.key)
                if group is None:
                    group = groups[record.key] = []
                group.append(record)
            slicer()
        dropped: set[int] = set()
        with self._lock:
            jobs: list[tuple[str, bytes]] = []
            for key, group in groups.items():
                if self.upsert and len(group) > 1:
                    newest = {r.ts_ms: r for r in group}  # versions replaced within the batch are never written
                    group = sorted(newest.values(), key=_by_seq) if len(newest) < len(group) else group
                data = self._encode(group, dropped)
                if data:
                    jobs.append((key_file_name(key), data))
                slicer()
            try:
                unknown = [name for name, _ in jobs if name not in self._files]
                if unknown:
                    self._learn(unknown, slicer)
                # PERF: file system calls can stall for 100+ ms on a busy disk (measured on the shared
                # 2-core machine); a batch over many keys does them in the thread pool, off the loop.
                if len(jobs) > _INLINE_KEYS or self.fsync == "always":
                    in_thread(self._write_jobs, jobs)
                else:
                    self._write_jobs(jobs)
            except OSError as exc:
                self.write_failures += 1
                self.dropped += len(records) - len(dropped)
                self.healthy = False
                kept = self.dead_letters.keep([r for r in records if r.seq not in dropped], str(exc))
                where = f"kept in {kept}" if kept is not None else "not kept (dead-letter full or failing too)"
                raise StorageError(f"file storage {self.directory}: write failed, batch of {len(records)} not stored ({where}): {exc}") from exc
            self.healthy = True
            if self.fsync == "interval":
                self._dirty.update(name for name, _ in jobs)
            kept = records if not dropped else [r for r in records if r.seq not in dropped]
            for start in range(0, len(kept), _INDEX_CHUNK):  # PERF: indexing costs ~10-100 us a record: in slices
                index.add(kept[start : start + _INDEX_CHUNK])
                slicer()

    def _learn(self, names: list[str], slicer: _Slicer) -> None:
        """Open (creating) key files not loaded yet; read the ones that hold records into the index first."""
        sizes = in_thread(self._open_all, names) if len(names) > _INLINE_KEYS else self._open_all(names)
        for name, size in zip(names, sizes, strict=True):
            if name in self._files:
                continue
            if size == 0:
                self._files[name] = _KeyFile(0, 0)
                self._new_entries = True
            else:
                self._load_file(name)  # repairs a torn tail before anything is appended behind it
            slicer()

    def _open_all(self, names: list[str]) -> list[int]:
        return [os.fstat(self._fd(name)).st_size for name in names]

    def _write_jobs(self, jobs: list[tuple[str, bytes]]) -> None:
        """Append each ``(file name, lines)``; on failure cut every file written back and re-raise.

        Runs in the thread pool for big batches: it touches only the
        descriptors and file sizes, which the storage lock (held by the
        waiting greenlet) keeps every other greenlet away from.
        """
        written: list[tuple[str, _KeyFile, int, int]] = []
        files = self._files
        try:
            for name, data in jobs:
                fd = self._fd(name)
                file = files.get(name)
                if file is None:  # evicted while the batch loaded other keys: start counting afresh
                    file = files[name] = _KeyFile(os.fstat(fd).st_size, 0)
                if file.torn:
                    os.ftruncate(fd, file.size)
                    file.torn = False
                written.append((name, file, file.size, file.lines))
                write_all(fd, data)
                file.size += len(data)
                file.lines += data.count(b"\n")
            if self.fsync == "always" and written:
                if self._new_entries:
                    fsync_dir(self.directory)
                    self._new_entries = False
                fsync_now([os.path.join(self._dir, name) for name, _ in jobs])
        except OSError:
            self._roll_back(written)
            raise

    def _roll_back(self, written: list[tuple[str, _KeyFile, int, int]]) -> None:
        """Cut every file this batch wrote to back to its size before the batch."""
        for name, file, size, lines in reversed(written):
            file.size, file.lines = size, lines
            try:
                os.truncate(os.path.join(self._dir, name), size)
            except OSError as exc:
                file.torn = True
                self._errors("file storage %s: cannot cut %s back (%s); will before its next write", self.directory, name, exc)

    def _fd(self, name: str) -> int:
        fds = self._fds
        fd = fds.get(name)
        if fd is not None:
            fds.move_to_end(name)
            return fd
        # PERF: one open(2) creates or opens; new keys cost no failed lookups (issue 11: 50,000 new keys a batch).
        fd = os.open(os.path.join(self._dir, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fds[name] = fd
        while len(fds) > self.max_open_files:
            _, old = fds.popitem(last=False)
            os.close(old)
        return fd

    def _close_fd(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def _encode(self, records: list[TopicRecord], dropped: set[int]) -> bytes:
        try:
            return encode_records(records)
        except (TypeError, msgspec.EncodeError):
            parts = []
            for record in records:
                try:
                    parts.append(encode_records([record]))
                except (TypeError, msgspec.EncodeError) as exc:
                    self.dropped += 1
                    dropped.add(record.seq)
                    self._errors("file storage %s: record seq %d not stored: %s", self.directory, record.seq, exc)
            return b"".join(parts)

    def flush(self) -> None:
        """fsync the files written since the last flush (``interval``; in the thread pool), then record the last seq."""
        if self._index is None:
            return
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            new_entries, self._new_entries = self._new_entries, False
        if self.fsync != "never" and dirty:
            in_thread(_fsync_names, self._dir, dirty)
            if new_entries:
                fsync_dir(self.directory)
        if self._meta_seq != self._last_seq():
            self._write_meta(self._last_seq(), clean=False)

    def _tick(self) -> None:
        self.flush()
        if time.monotonic() - self._last_compact >= self.compact_interval:
            self.compact()

    def compact(self, *, force: bool = False) -> int:
        """Rewrite the loaded files with more dead lines than live ones (all with ``force``); return how many."""
        index = self._opened
        self._last_compact = time.monotonic()
        rewritten = 0
        slicer = _Slicer()
        with self._lock:
            live: dict[str, str] = {}
            keys = index.key_names()
            for start in range(0, len(keys), _GROUP_CHUNK):
                live.update((key_file_name(key), key) for key in keys[start : start + _GROUP_CHUNK])
                slicer()
            for name, file in list(self._files.items()):
                key = live.get(name)
                alive = 0 if key is None else index.key_count(key)
                dead = file.lines - alive
                if dead <= 0 or not (force or (dead >= COMPACT_MIN_DEAD_LINES and dead > alive)):
                    continue
                path = self.directory / name
                self._close_fd(name)  # the descriptor would keep appending to the replaced file
                if key is None:
                    path.unlink(missing_ok=True)
                    del self._files[name]
                else:
                    data = self._encode(sorted(index.records_of(key), key=_by_seq), set())
                    in_thread(write_atomic, path, data, fsync=self.fsync != "never")
                    file.size, file.lines, file.torn = len(data), data.count(b"\n"), False
                self._dirty.discard(name)
                rewritten += 1
                slicer()
        return rewritten

    def close(self) -> None:
        if self._task is not None:
            self._task.stop()
            self._task = None
        if self._loader is not None:
            self._loader.kill()
            self._loader = None
            self._ready.set()
        if self._index is None:
            return
        self.compact()
        self.flush()
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._write_meta(self._last_seq(), clean=True, sync=True)

    def health(self) -> dict[str, float]:
        """Figures exported to ``/metrics`` as ``gauss_storage_<figure>``."""
        index = self._index
        return {
            "healthy": 1.0 if self.healthy else 0.0,
            "dropped_records": float(self.dropped),
            "write_failures": float(self.write_failures),
            "unreadable_records": float(self.corrupt_lines),
            "evicted_keys": float(index.evicted_keys if index is not None else 0),
            "dead_letter_records": float(self.dead_letters.records),
        }

    # --- reading -----------------------------------------------------------

    def _all_loaded(self) -> RecordIndex:
        index = self._opened
        self._ready.wait()
        return index

    def _key_loaded(self, key: str) -> RecordIndex:
        index = self._opened
        name = key_file_name(key)
        if name not in self._files and (self.directory / name).exists():
            with self._lock:
                if name not in self._files:
                    self._load_file(name)
        return index

    def query(self, query: TopicQuery) -> QueryResult:
        index = self._all_loaded() if query.key is None else self._key_loaded(query.key)
        records, truncated = index.query(query.key, query.from_ms, query.to_ms, query.since_seq, query.limit)
        return QueryResult(records, truncated)

    def latest(self, key: str | None = None) -> list[TopicRecord]:
        index = self._all_loaded() if key is None else self._key_loaded(key)
        return index.latest(key)

    def keys(self) -> list[KeyInfo]:
        return self._all_loaded().keys()

    def count(self) -> int:
        return len(self._all_loaded())

    def bounds(self) -> tuple[int, int]:
        return self._all_loaded().bounds()

    def records(self) -> Iterable[TopicRecord]:
        """Every record held, ascending by seq (for tools and tests)."""
        return self._all_loaded().records()


def _fsync_names(directory: str, names: Iterable[str]) -> None:
    fsync_now([os.path.join(directory, name) for name in names])


def _by_seq(record: TopicRecord) -> int:
    return record.seq
