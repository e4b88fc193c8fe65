"""Small helpers the durable storages share.

Epochs, atomic writes, whole writes with roll-back, the ``fsync`` option
(:class:`DurableConfig`), the ``_meta.json`` file and the decision, at open,
of which epoch and seq to continue from (SPEC section 1 "Seq is a promise",
section 6 "Durability").
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Mapping, Sequence

import gevent
import msgspec

from gauss.core import TopicRecord
from gauss.ratelimit import RateLimitedLog
from gauss.records import encode_record_lines
from gauss.registry import PluginConfig

if TYPE_CHECKING:
    from gauss_plugins.storage._index import RecordIndex

__all__ = [
    "new_epoch",
    "write_atomic",
    "write_all",
    "fsync_paths",
    "fsync_now",
    "in_thread",
    "fsync_dir",
    "PeriodicTask",
    "FSYNC_POLICIES",
    "FsyncPolicy",
    "DurableConfig",
    "boot_id",
    "read_meta",
    "meta_record",
    "resume_point",
    "MetaWriter",
    "seqs_in",
    "move_aside",
    "remove_leftovers",
    "CORRUPT_SUFFIX",
    "MAX_FSYNC_INTERVAL",
    "DeadLetters",
    "DEAD_LETTER_DIR",
    "DEAD_LETTER_BYTES",
]

FsyncPolicy = Literal["always", "interval", "never"]
FSYNC_POLICIES: tuple[FsyncPolicy, ...] = ("always", "interval", "never")
MAX_FSYNC_INTERVAL = 1.0
"""SPEC section 6: with ``fsync = "interval"`` data reaches the disk at most this many seconds after it was written."""
CORRUPT_SUFFIX = ".corrupt"
"""Damaged bytes found at open are appended to ``<file>.corrupt`` beside the file, never deleted."""

_SEQ_FIELD = re.compile(rb'"seq":(\d{1,19})[,}]')  # whole digits only: a cut or damaged number proves nothing


def new_epoch() -> str:
    """A short random epoch (SPEC section 1): 12 hex digits."""
    return secrets.token_hex(6)


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a new or renamed file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new file, never half of one.

    The temporary file has a name of its own per call: a write still running
    in the thread pool for a greenlet killed meanwhile cannot collide with the next.
    """
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: leave the old file, and no half-written tmp
        raise
    if fsync:
        fsync_dir(path.parent)


DEAD_LETTER_DIR = "dead-letter"
DEAD_LETTER_BYTES = 64 << 20
"""What one storage's dead-letter directory may hold; past it a batch that failed is only counted."""


class DeadLetters:
    """Batches a storage could not write (disk full, say), kept in ``dead-letter/`` beside its data (SPEC section 6).

    One ``<unix ms>-<n>-<records>.jsonl`` a batch: its records' SPEC JSON
    without ``seq`` (the topic hands those seqs out again), and a ``.json``
    note saying why. Bounded by :data:`DEAD_LETTER_BYTES`; the same disk may
    refuse this write too, and then the batch is only counted, as before.
    """

    def __init__(self, directory: Path, *, fsync: bool = False) -> None:
        self.directory = directory / DEAD_LETTER_DIR
        self.fsync = fsync
        self.records = 0
        """Records kept here by this process."""
        self._bytes: int | None = None
        self._batches = 0

    def keep(self, records: Sequence[TopicRecord], reason: str) -> Path | None:
        """Keep a failed batch; the file written, or None when there is no room or the write fails too."""
        body = encode_record_lines([TopicRecord(r.ts_ms, r.key, r.data) for r in records])
        try:
            if self._bytes is None:
                held = self.directory.glob("*.jsonl") if self.directory.is_dir() else ()
                self._bytes = sum(path.stat().st_size for path in held)
            if not records or self._bytes + len(body) > DEAD_LETTER_BYTES:
                return None
            self.directory.mkdir(exist_ok=True)
            self._batches += 1
            path = self.directory / f"{time.time_ns() // 1_000_000}-{self._batches}-{len(records)}.jsonl"
            note = {"reason": reason, "records": len(records), "first_ts_ms": records[0].ts_ms, "last_ts_ms": records[-1].ts_ms}
            write_atomic(path.with_suffix(".json"), msgspec.json.encode(note), fsync=self.fsync)
            write_atomic(path, body, fsync=self.fsync)
        except OSError:
            return None
        self._bytes += len(body)
        self.records += len(records)
        return path


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a short write is retried from where it stopped)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


_SYNCFS_OVER = 32
"""PERF: past this many files, one syncfs(2) of their file system beats an fsync each (each fsync is a journal commit: ~4 ms on the shared disk; 50,000 files took 4 s)."""


def _syncfs(directory: str) -> bool:
    libc = _libc()
    if libc is None:
        return False
    fd = os.open(directory, os.O_RDONLY)
    try:
        return libc.syncfs(fd) == 0
    finally:
        os.close(fd)


_LIBC: list[Any] = []


def _libc() -> Any:
    if not _LIBC:
        try:
            import ctypes

            lib = ctypes.CDLL(None, use_errno=True)  # the C library is loaded already; no find_library subprocess
            _LIBC.append(lib if hasattr(lib, "syncfs") else None)
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def fsync_now(paths: list[Path | str]) -> None:
    """fsync files by path in the calling thread (one syncfs(2) past a few hundred files)."""
    if len(paths) > _SYNCFS_OVER and _syncfs(os.path.dirname(paths[0]) or "."):
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # removed by compaction or retention since: nothing left to sync
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_paths(paths: Iterable[Path | str]) -> None:
    """fsync files by path in gevent's thread pool: the event loop keeps running meanwhile.

    fsync flushes a file's pages whichever descriptor wrote them, so opening
    the path afresh is enough (and safe against descriptors closed meanwhile).
    """
    todo = list(paths)
    if todo:
        gevent.get_hub().threadpool.apply(fsync_now, (todo,))


def in_thread(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run blocking file work (fsync, an atomic replace) in gevent's thread pool; the loop keeps running."""
    return gevent.get_hub().threadpool.apply(func, args, kwargs)


class DurableConfig(PluginConfig, frozen=True, kw_only=True):
    """The option every durable storage takes: its ``fsync`` policy."""

    fsync: FsyncPolicy | bool = "interval"
    """``always`` (before ``append`` returns), ``interval`` (within a second) or ``never``; ``true``/``false`` (the older form): always/never."""

    @property
    def fsync_policy(self) -> FsyncPolicy:
        """``fsync`` as one of :data:`FSYNC_POLICIES` (the boolean form translated)."""
        if self.fsync is True:
            return "always"
        if self.fsync is False:
            return "never"
        return self.fsync


_BOOT_ID: list[str | None] = []


def boot_id() -> str | None:
    """This machine's boot id (Linux), or None: a crash across a reboot may have lost unsynced data."""
    if not _BOOT_ID:
        try:
            _BOOT_ID.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None)
        except OSError:
            _BOOT_ID.append(None)
    return _BOOT_ID[0]


def move_aside(path: Path, damaged: bytes, logger: logging.Logger) -> Path:
    """Append ``damaged`` bytes to ``<path>.corrupt`` (created when missing) and return that path."""
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    with open(target, "ab") as handle:
        handle.write(damaged)
        handle.flush()
        os.fsync(handle.fileno())
    logger.error("%s: moved %d damaged bytes aside to %s", path, len(damaged), target.name)
    return target


def remove_leftovers(directory: Path, logger: logging.Logger) -> int:
    """Delete the temporary files of atomic replaces a crash interrupted (``*.tmp``); return how many."""
    removed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(".tmp") and entry.is_file():
                os.unlink(entry.path)
                removed += 1
    if removed:
        logger.info("%s: removed %d temporary files left by an interrupted write", directory, removed)
    return removed


def seqs_in(damaged: bytes) -> list[int]:
    """The ``"seq":N`` values still legible in damaged record bytes."""
    return [int(m.group(1)) for m in _SEQ_FIELD.finditer(damaged)]


def read_meta(path: Path, logger: logging.Logger) -> dict[str, Any]:
    """The meta file as a dict; ``{}`` when missing; an unreadable one is moved aside and counts as missing."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        meta = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        meta = None
        logger.error("%s: unreadable (%s)", path, exc)
    if not isinstance(meta, dict):
        move_aside(path, raw, logger)
        path.unlink()
        return {}
    return meta


def meta_record(*, epoch: str, last_seq: int, topic: str, data_format: str, fsync: str, clean: bool) -> bytes:
    """The bytes of a ``_meta.json``.

    ``clean`` is true only when written by ``close()`` after everything else:
    a meta that is not clean at open means the process died while running.
    """
    meta = {
        "epoch": epoch,
        "last_seq": last_seq,
        "topic": topic,
        "format": data_format,
        "clean": clean,
        "fsync": fsync,
        "boot_id": boot_id(),
    }
    return msgspec.json.encode(meta)


def resume_point(meta: Mapping[str, Any], data_last_seq: int, *, data_doubtful: bool, has_data: bool, logger: logging.Logger, what: str) -> tuple[str, int]:
    """The epoch and last seq a durable storage continues from at open.

    ``data_last_seq`` is the highest seq found in the data itself;
    ``data_doubtful`` says the data's tail was damaged so that a higher seq
    may have existed. The epoch is kept only when the storage can prove it
    continues above every seq it handed out:

    - a clean meta (written by ``close()``) records the exact last seq;
    - after a crash on the same boot, everything handed out was written to
      the operating system before anyone saw it, so the data tells;
    - after a reboot (power loss), that holds only if every write was
      fsynced (``fsync = "always"``).

    A record cut short at the very end is a write that never returned (a
    SIGKILL mid-``os.write``): no one saw it, so it is not damage that hides
    a seq. (A file truncated by hand on a running machine would look the
    same; that is outside what a storage can tell.)

    Otherwise (meta missing, damage that hides seqs, a reboot with unsynced
    data) a new epoch starts: resuming clients then get ``reset``.
    """
    epoch = meta.get("epoch")
    meta_seq = meta.get("last_seq")
    last_seq = max(meta_seq if type(meta_seq) is int and meta_seq > 0 else 0, data_last_seq)
    if not isinstance(epoch, str) or not epoch:
        if has_data:
            logger.warning("%s: no epoch on record (meta file missing); starting a new epoch after seq %d", what, last_seq)
        return new_epoch(), last_seq
    if meta.get("clean") is True:
        return epoch, last_seq
    if data_doubtful:
        logger.warning("%s: damaged tail after a crash hides the last seq; starting a new epoch after seq %d", what, last_seq)
        return new_epoch(), last_seq
    if meta.get("fsync") != "always" and (meta.get("boot_id") is None or meta.get("boot_id") != boot_id()):
        logger.warning("%s: the machine restarted since the crash and data was not always fsynced; new epoch after seq %d", what, last_seq)
        return new_epoch(), last_seq
    return epoch, last_seq


class MetaWriter:
    """The ``_meta.json`` of a durable storage: written at open, while records arrive, and at close.

    Mixed into the storages; they set ``name``, ``_meta_path``, ``_lock``,
    ``epoch``, ``topic``, ``format``, ``fsync``, ``_resumed_seq`` and
    ``_meta_seq``, and ``_index`` in ``open()``.
    """

    name: str
    _index: RecordIndex | None
    _meta_path: Path
    _lock: Any
    _resumed_seq: int
    _meta_seq: int
    epoch: str
    topic: str
    format: Any
    fsync: str

    @property
    def _opened(self) -> RecordIndex:
        """The index ``open()`` made; a storage used before it is a bug of its caller."""
        if self._index is None:
            raise RuntimeError(f"{self.name} storage used before open()")
        return self._index

    def _last_seq(self) -> int:
        """Never less than the seq open() continued from (a close without appends must not record less)."""
        return max(self._resumed_seq, self._opened.last_seq)

    def _write_meta(self, last_seq: int, *, clean: bool, sync: bool = False) -> None:
        """Replace ``_meta.json``; fsynced (with ``sync``) only at open (the epoch) and close (``clean``).

        PERF: the running updates only narrow the files read after a crash
        (their mtime); the data proves the last seq, so they need no fsync
        (two fsyncs a flush took ~0.4 s on the busy shared disk).
        """
        data = meta_record(
            epoch=self.epoch, last_seq=last_seq, topic=self.topic, data_format=self.format.value, fsync=self.fsync, clean=clean
        )
        with self._lock:  # one writer of the meta file's tmp at a time
            in_thread(write_atomic, self._meta_path, data, fsync=sync and self.fsync != "never")
            self._meta_seq = last_seq


class PeriodicTask:
    """Run ``action`` every ``interval`` seconds in a greenlet until :meth:`stop`.

    The storages use it to fsync and record their state on time even when no
    new records arrive. An exception is logged (rate-limited) and the loop goes on.
    """

    def __init__(self, interval: float, action: Callable[[], None], logger: logging.Logger, what: str) -> None:
        self._interval = interval
        self._action = action
        self._errors = RateLimitedLog(logger, level=logging.ERROR)
        self._what = what
        self._greenlet: gevent.Greenlet | None = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            gevent.sleep(self._interval)
            try:
                self._action()
            except Exception as exc:  # noqa: BLE001 - keep flushing; the next round may succeed
                self._errors("%s failed: %s", self._what, exc)

    def stop(self) -> None:
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=False)
