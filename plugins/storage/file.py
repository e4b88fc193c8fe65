"""``file`` storage: record JSON lines, one file per key, durable across restarts.

Layout (SPEC section 2): ``<dir>/<encoded key>.jsonl``, one record per line,
``{"ts_ms":..,"key":..,"data":{..},"seq":N}``; ``<dir>/_meta.json`` keeps the
topic's epoch and last seq (written atomically), so after a restart ``seq``
continues and the epoch stays.

Writes are buffered: :meth:`FileStorage.append` only indexes the batch in
memory and queues it; a flush (every ``flush_interval`` seconds, when
``max_buffered`` records wait, and at close) appends each key's queued lines
with one write. Candle topics upsert: on disk the file is append-only and the
newest version (highest seq) of each ``(key, ts_ms)`` wins on load; versions
replaced before a flush are never written, and every ``compact_interval``
seconds a file with more dead lines than live ones is rewritten (tmp file,
then rename). Compaction also drops what retention removed.

Queries are answered from an in-memory index of the records held, bounded by
retention: ``max_records_per_key`` (oldest ``ts_ms`` first) and optionally
``retention_ms`` (per key, records older than the newest minus this).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import msgspec
from gauss_plugins.storage._index import RecordIndex
from gauss_plugins.storage._keys import KEY_FILE_SUFFIX, key_file_name
from gauss_plugins.storage._support import PeriodicTask, new_epoch, write_atomic

from gauss.core import TopicRecord
from gauss.errors import StorageError
from gauss.ratelimit import RateLimitedLog
from gauss.records import DataFormat, KeyInfo, QueryResult, TopicQuery
from gauss.registry import Options

__all__ = ["FileStorage", "create", "META_FILE", "encode_records", "decode_record"]

log = logging.getLogger(__name__)

META_FILE = "_meta.json"
DEFAULT_MAX_BUFFERED = 100_000
DEFAULT_MAX_RECORDS_PER_KEY = 100_000
COMPACT_MIN_DEAD_LINES = 256
"""A file is rewritten only when it has at least this many dead lines (and more dead than live)."""


def _enc_hook(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot store a {type(value).__name__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.json.Decoder()


def encode_records(records: Sequence[TopicRecord]) -> bytes:
    """JSON lines of numbered records, ``{"ts_ms","key","data","seq"}`` each."""
    return _encoder.encode_lines([{"ts_ms": r.ts_ms, "key": r.key, "data": r.data, "seq": r.seq} for r in records])


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


class FileStorage:
    """Durable JSON-lines storage of one topic under ``directory``."""

    name = "file"
    durable = True

    def __init__(
        self,
        directory: Path | str,
        *,
        flush_interval: float = 1.0,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        max_records_per_key: int | None = DEFAULT_MAX_RECORDS_PER_KEY,
        retention_ms: int | None = None,
        compact_interval: float = 60.0,
        fsync: bool = False,
    ) -> None:
        if flush_interval <= 0 or compact_interval <= 0:
            raise ValueError("flush_interval and compact_interval must be positive")
        if max_buffered < 1:
            raise ValueError("max_buffered must be at least 1")
        self.directory = Path(directory)
        self.flush_interval = flush_interval
        self.max_buffered = max_buffered
        self.max_records_per_key = max_records_per_key
        self.retention_ms = retention_ms
        self.compact_interval = compact_interval
        self.fsync = fsync
        self.topic = ""
        self.epoch = ""
        self.format = DataFormat.ANY
        self.upsert = False
        self.corrupt_lines = 0
        """Stored lines found unreadable at open (skipped)."""
        self.dropped = 0
        """Records that could not be written (unserialisable data, or a write failing for too long)."""
        self.healthy = True
        """False while the last flush failed to write some key."""
        self._index: RecordIndex | None = None
        self._pending: dict[str, dict[int, TopicRecord] | list[TopicRecord]] = {}
        self._pending_count = 0
        self._lines_on_disk: dict[str, int] = {}  # file name -> lines written (live or dead)
        self._meta_seq = -1
        self._last_compact = time.monotonic()
        self._task: PeriodicTask | None = None
        self._errors = RateLimitedLog(log, level=logging.ERROR)

    # --- opening -----------------------------------------------------------

    def open(self, topic: str, data_format: DataFormat) -> tuple[str, int]:
        fmt = DataFormat(data_format)
        self.topic = topic
        self.format = fmt
        self.upsert = fmt.upsert
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            meta = self._read_meta()
            self._index = RecordIndex(
                upsert=self.upsert, max_per_key=self.max_records_per_key, retention_ms=self.retention_ms
            )
            loaded = self._load()
        except OSError as exc:
            raise StorageError(f"file storage {self.directory}: cannot open: {exc}") from exc
        loaded.sort(key=lambda r: r.seq)
        self._index.add(loaded)
        stored_format = meta.get("format")
        if stored_format not in (None, fmt.value):
            log.warning("file storage %s: held %s records, now opened as %s", self.directory, stored_format, fmt.value)
        epoch = meta.get("epoch")
        self.epoch = epoch if isinstance(epoch, str) and epoch else new_epoch()
        meta_seq = meta.get("last_seq")
        last_seq = max(meta_seq if type(meta_seq) is int else 0, self._index.last_seq)
        self._write_meta(last_seq)
        self._task = PeriodicTask(self.flush_interval, self._tick, log, f"file storage {self.directory}: flush")
        return self.epoch, last_seq

    def _read_meta(self) -> dict[str, Any]:
        path = self.directory / META_FILE
        try:
            meta = _decoder.decode(path.read_bytes())
        except FileNotFoundError:
            return {}
        except msgspec.DecodeError as exc:
            raise StorageError(f"file storage {path}: unreadable ({exc}); fix or remove it") from None
        return meta if isinstance(meta, dict) else {}

    def _load(self) -> list[TopicRecord]:
        records: list[TopicRecord] = []
        for path in sorted(self.directory.glob("*" + KEY_FILE_SUFFIX)):
            content = path.read_bytes()
            if content and not content.endswith(b"\n"):
                # A write cut short (a crash): drop the partial line so later appends start clean.
                cut = content.rfind(b"\n") + 1
                log.warning("file storage %s: dropping a partial last line of %d bytes", path, len(content) - cut)
                os.truncate(path, cut)
                content = content[:cut]
                self.corrupt_lines += 1
            lines = content.splitlines()
            self._lines_on_disk[path.name] = len(lines)
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    records.append(decode_record(line))
                except ValueError as exc:
                    self.corrupt_lines += 1
                    self._errors("file storage %s:%d: skipped unreadable line: %s", path, number, exc)
        return records

    # --- writing -----------------------------------------------------------

    @property
    def _opened(self) -> RecordIndex:
        if self._index is None:
            raise RuntimeError("file storage used before open()")
        return self._index

    def append(self, records: Sequence[TopicRecord]) -> None:
        self._opened.add(records)
        pending = self._pending
        if self.upsert:
            for record in records:
                versions = pending.get(record.key)
                if versions is None:
                    versions = pending[record.key] = {}
                versions[record.ts_ms] = record  # type: ignore[index,call-overload]
        else:
            for record in records:
                queued = pending.get(record.key)
                if queued is None:
                    queued = pending[record.key] = []
                queued.append(record)  # type: ignore[union-attr]
        self._pending_count += len(records)
        if self._pending_count >= self.max_buffered:
            self.flush()

    def flush(self) -> None:
        """Append every queued record to its key's file, then record the last seq."""
        if self._index is None:
            return
        if self._pending:
            pending, self._pending = self._pending, {}
            self._pending_count = 0
            failed: list[str] = []
            for key, queued in pending.items():
                records = sorted(queued.values(), key=_by_seq) if isinstance(queued, dict) else queued
                try:
                    self._write_lines(key_file_name(key), self._encode(records))
                except OSError as exc:
                    failed.append(key)
                    self._requeue(key, queued)
                    self._errors("file storage %s: cannot write key %r: %s", self.directory, key, exc)
            self.healthy = not failed
            if failed:
                raise StorageError(f"file storage {self.directory}: {len(failed)} keys not written; will retry")
        if self._meta_seq != self._index.last_seq:
            self._write_meta(self._index.last_seq)

    def _requeue(self, key: str, queued: dict[int, TopicRecord] | list[TopicRecord]) -> None:
        count = len(queued)
        if self._pending_count + count > 2 * self.max_buffered:
            # NOTE: the disk has failed for a while; keeping everything would exhaust memory.
            self.dropped += count
            self._errors("file storage %s: dropped %d unwritten records of %r", self.directory, count, key)
            return
        self._pending[key] = queued
        self._pending_count += count

    def _encode(self, records: list[TopicRecord]) -> bytes:
        try:
            return encode_records(records)
        except (TypeError, msgspec.EncodeError):
            parts = []
            for record in records:
                try:
                    parts.append(encode_records([record]))
                except (TypeError, msgspec.EncodeError) as exc:
                    self.dropped += 1
                    self._errors("file storage %s: record seq %d not stored: %s", self.directory, record.seq, exc)
            return b"".join(parts)

    def _write_lines(self, name: str, data: bytes) -> None:
        if not data:
            return
        with open(self.directory / name, "ab") as handle:
            handle.write(data)
            if self.fsync:
                handle.flush()
                os.fsync(handle.fileno())
        self._lines_on_disk[name] = self._lines_on_disk.get(name, 0) + data.count(b"\n")

    def _write_meta(self, last_seq: int) -> None:
        meta = {"epoch": self.epoch, "last_seq": last_seq, "topic": self.topic, "format": self.format.value}
        write_atomic(self.directory / META_FILE, msgspec.json.encode(meta), fsync=self.fsync)
        self._meta_seq = last_seq

    def _tick(self) -> None:
        self.flush()
        if time.monotonic() - self._last_compact >= self.compact_interval:
            self.compact()

    def compact(self, *, force: bool = False) -> int:
        """Rewrite the files with more dead lines than live ones (all with ``force``); return how many."""
        self.flush()
        index = self._opened
        self._last_compact = time.monotonic()
        live: dict[str, str] = {key_file_name(info.key): info.key for info in index.keys()}
        rewritten = 0
        for name, lines in list(self._lines_on_disk.items()):
            key = live.get(name)
            alive = 0 if key is None else index.key_count(key)
            dead = lines - alive
            if dead <= 0 or not (force or (dead >= COMPACT_MIN_DEAD_LINES and dead > alive)):
                continue
            path = self.directory / name
            if key is None:
                path.unlink(missing_ok=True)
                del self._lines_on_disk[name]
            else:
                records = sorted(index.records_of(key), key=_by_seq)
                write_atomic(path, self._encode(records), fsync=self.fsync)
                self._lines_on_disk[name] = len(records)
            rewritten += 1
        return rewritten

    def close(self) -> None:
        if self._task is not None:
            self._task.stop()
            self._task = None
        if self._index is not None:
            self.compact()

    def health(self) -> dict[str, float]:
        """Figures exported to ``/metrics`` as ``gauss_storage_<figure>``."""
        return {
            "healthy": 1.0 if self.healthy else 0.0,
            "buffered_records": float(self._pending_count),
            "dropped_records": float(self.dropped),
            "unreadable_records": float(self.corrupt_lines),
        }

    # --- reading -----------------------------------------------------------

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

    def records(self) -> Iterable[TopicRecord]:
        """Every record held, ascending by seq (for tools and tests)."""
        return self._opened.records()


def _by_seq(record: TopicRecord) -> int:
    return record.seq


def create(table: dict[str, Any]) -> FileStorage:
    opts = Options(table)
    directory = opts.path("dir")
    flush_interval = opts.float("flush_interval", 1.0, min=0.001)
    max_buffered = opts.int("max_buffered", DEFAULT_MAX_BUFFERED, min=1)
    max_records_per_key = opts.int("max_records_per_key", DEFAULT_MAX_RECORDS_PER_KEY, min=1)
    retention_ms = opts.int("retention_ms", None, min=1)
    compact_interval = opts.float("compact_interval", 60.0, min=0.001)
    fsync = opts.bool("fsync", False)
    opts.done()
    return FileStorage(
        directory,
        flush_interval=flush_interval,
        max_buffered=max_buffered,
        max_records_per_key=max_records_per_key,
        retention_ms=retention_ms,
        compact_interval=compact_interval,
        fsync=fsync,
    )
