"""The ClickHouse storage: a topic's records in a ClickHouse table, over the HTTP interface.

Why it looks the way it does:

- ``append`` writes the batch to the local spool (:mod:`.spool`) and returns:
  handed to the OS before any client sees it (SPEC section 6), fsynced
  per ``fsync``; it never waits on ClickHouse. A background worker inserts
  from the spool (``batch_size`` records or every ``flush_interval``
  seconds, one HTTP request per batch) and deletes what ClickHouse took.
- A failure is either retryable (ClickHouse away, busy, ``TOO_MANY_PARTS``:
  :mod:`.client` lists them), retried with capped, jittered back-off, or
  permanent for the batch (a type or parse error, an unknown column): the
  batch is split to find the frames ClickHouse refuses, those go to the
  dead-letter directory beside the spool (counted, logged), and the topic
  goes on with the next batch. Nothing is resent forever.
- On open the last seq comes from the data: ``max(seq)`` in ClickHouse, in
  the spool and in the dead letters, and the high-water mark the spool's
  state file keeps. Where the spool cannot prove it holds every batch that
  was visible (no state file, a machine restart after an unclean stop
  without ``fsync = "always"``, no spool at all), the topic starts a new
  epoch above every seq it may have handed out (SPEC "Seq is a promise").
- Tables are ``ReplacingMergeTree``: quotes keyed by ``(topic, key, ts_ms, seq)``,
  so a retried insert that had in fact landed never duplicates a quote;
  candles keyed by ``(topic, key, ts_ms)`` with ``seq`` as the version, so a
  later candle replaces the earlier. Reads use ``FINAL``.
- Rows travel as ``RowBinary`` both ways. NOTE: ClickHouse 18.16 parses
  floats in text formats (TSV, JSON) inexactly (5251 of 60000 random doubles
  came back different in our test); RowBinary is exact, and it sidesteps the
  quoting of 64-bit integers in JSON formats.
- SQL is written for 18.16 and current releases alike: no query parameters
  (values are escaped literals), no ``Nullable``/``LowCardinality`` columns.

The ``requests`` client is plain blocking I/O: under ``gauss-serve`` (which
patches with gevent at start-up) it is cooperative; the worker is a
``threading.Thread``, which is a greenlet when patched and a real thread when
not, so ingest never waits on it either way.
"""

from __future__ import annotations

import logging
import os
import random
import struct
import threading
import time
from collections import deque
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Self, Sequence

import msgspec
from gauss_plugins.storage._support import (
    FSYNC_POLICIES,
    MAX_FSYNC_INTERVAL,
    DurableConfig,
    boot_id,
    fsync_paths,
    new_epoch,
    resume_point,
)

from gauss.core import TopicRecord
from gauss.errors import ConfigError, StorageError, StorageUnavailable
from gauss.ratelimit import RateLimitedLog
from gauss.records import DataFormat, KeyInfo, QueryResult, TopicQuery

from .client import ClickHouseClient, ClickHouseError, ClickHouseUnavailable, sql_name, sql_string
from .rowbinary import _ANY, layout_for, read_string
from .spool import DeadLetter, DiskSpool, Frame, MemorySpool, SpoolFull, file_name

__all__ = ["ClickHouseStorage", "ClickHouseConfig"]

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8123"
DEFAULT_DATABASE = "gauss"
DEFAULT_TABLES = {DataFormat.QUOTE: "quotes", DataFormat.CANDLE: "candles", DataFormat.ANY: "records"}
DEFAULT_META_TABLE = "gauss_topics"
DEFAULT_SPOOL_DIR = "data/clickhouse-spool"

# ClickHouse error codes the worker repairs itself (creating the table again) before judging a failure.
_UNKNOWN_TABLE = 60
_UNKNOWN_DATABASE = 81

_Name = Annotated[str, msgspec.Meta(min_length=1)]
_Seconds = Annotated[float, msgspec.Meta(ge=0.001)]


class ClickHouseConfig(DurableConfig):
    """Options of the ``clickhouse`` storage (docs/clickhouse.md tells each)."""

    url: str = DEFAULT_URL
    """ClickHouse's HTTP interface, ``http://`` or ``https://``."""
    database: _Name = DEFAULT_DATABASE
    table: _Name | None = None
    """None: ``quotes``, ``candles`` or ``records`` by the topic's format."""
    meta_table: _Name = DEFAULT_META_TABLE
    """The epochs of the topics (one row per new epoch)."""
    user: _Name = "default"
    password: str = ""
    password_env: _Name | None = None
    """Read the password from this environment variable instead (when the storage is built)."""
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    """Records per insert, at most."""
    flush_interval: _Seconds = 1.0
    """Seconds: a partial batch goes out at least this often."""
    connect_timeout: _Seconds = 5.0
    timeout: _Seconds = 30.0
    """Seconds to wait for an answer."""
    startup_timeout: Annotated[float, msgspec.Meta(ge=0.0)] = 30.0
    """Seconds to wait for ClickHouse when the topic opens."""
    flush_timeout: Annotated[float, msgspec.Meta(ge=0.0)] = 10.0
    """Seconds ``flush`` waits for the spool to be delivered (what is left stays in the spool)."""
    retry_min: _Seconds = 0.1
    """Seconds of back-off after a failed insert (doubling, with jitter, up to ``retry_max``)."""
    retry_max: _Seconds = 10.0
    max_buffer_records: Annotated[int, msgspec.Meta(ge=1)] = 1_000_000
    """Records waiting for ClickHouse that queries still see from memory."""
    spool_dir: str | Literal[False] = DEFAULT_SPOOL_DIR
    """Where every batch is written before it is visible (relative to the configuration file); ``false`` or ``""``: none (not durable)."""
    max_spool_bytes: Annotated[int, msgspec.Meta(ge=1)] = 1 << 30
    """Bound of the spool, per topic; a batch past it is refused."""
    max_dead_letter_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1 << 30
    """Bound of the dead-letter files, per topic."""

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError("url", f"must be an http:// or https:// URL, got {self.url!r}")
        if self.password_env is not None and self.password:
            raise ConfigError("password_env", "give either 'password' or 'password_env', not both")
        if self.retry_max < self.retry_min:
            raise ConfigError("retry_max", f"must be at least retry_min ({self.retry_min})")

    @property
    def spool_path(self) -> Path | None:
        """``spool_dir`` as a path; None without a spool."""
        return Path(self.spool_dir) if self.spool_dir else None

    def resolve_paths(self, base_dir: Path) -> Self:
        """Resolves ``spool_dir`` too: a ``str`` field, since a ``Path`` one could not read ``false``."""
        config = super().resolve_paths(base_dir)
        spool = config.spool_path
        if spool is None or spool.is_absolute():
            return config
        return msgspec.structs.replace(config, spool_dir=str(base_dir / spool))


class ClickHouseStorage:
    """A durable :class:`~gauss.protocols.TopicStorage` in ClickHouse, one instance per topic.

    Health, for ``/metrics`` and logs: :attr:`healthy`, :attr:`buffered`
    (records accepted and not yet delivered), :attr:`spooled_bytes`,
    :attr:`inserted`, :attr:`insert_errors`, :attr:`dropped` (refused by a
    full spool), :attr:`dead_letter_records` / ``_batches`` (refused by
    ClickHouse for good); :meth:`health` returns them as one dict.
    """

    name = "clickhouse"
    durable = True
    Config = ClickHouseConfig

    def __init__(
        self,
        *,
        url: str = DEFAULT_URL,
        database: str = DEFAULT_DATABASE,
        table: str | None = None,
        meta_table: str = DEFAULT_META_TABLE,
        user: str = "default",
        password: str = "",
        batch_size: int = 10_000,
        flush_interval: float = 1.0,
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
        startup_timeout: float = 30.0,
        flush_timeout: float = 10.0,
        retry_min: float = 0.1,
        retry_max: float = 10.0,
        max_buffer_records: int = 1_000_000,
        spool_dir: Path | None = None,
        max_spool_bytes: int = 1 << 30,
        max_dead_letter_bytes: int = 1 << 30,
        fsync: str = "interval",
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        self.url = url
        self.database = database
        self.table_option = table
        self.meta_table = meta_table
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.startup_timeout = startup_timeout
        self.flush_timeout = flush_timeout
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.max_buffer_records = max_buffer_records
        self.spool_dir = spool_dir
        self.max_spool_bytes = max_spool_bytes
        self.max_dead_letter_bytes = max_dead_letter_bytes
        self.fsync = fsync
        self.durable = spool_dir is not None
        client_args = {"user": user, "password": password, "connect_timeout": connect_timeout, "timeout": timeout}
        self._writer = ClickHouseClient(url, **client_args)  # type: ignore[arg-type]
        self._reader = ClickHouseClient(url, **client_args)  # type: ignore[arg-type]

        self.topic = ""
        self.format = DataFormat.ANY
        self.layout = _ANY
        self.table = ""
        self._qualified = ""
        self._columns = ""
        self._spool: DiskSpool | MemorySpool = MemorySpool(max_spool_bytes)
        self._dead = DeadLetter(None, max_dead_letter_bytes)
        self.epoch = ""
        self._last_seq = 0

        self._lock = threading.Lock()
        """Guards the spool and the read cache (append, the worker, the syncer, flush and close)."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._progress = threading.Condition(self._lock)
        self._cache: deque[tuple[int, list[TopicRecord]]] = deque()
        """Pending batches ``(last seq, records)`` that queries merge with ClickHouse's answer."""
        self._cache_records = 0
        self._uncached_upto = 0
        """Pending batches up to this seq are on disk only (the cache was full): cache again once delivered."""
        self._acked_upto = 0
        """The last seq of the newest batch delivered or dead-lettered (by this process)."""
        self._worker: threading.Thread | None = None
        self._syncer: threading.Thread | None = None
        self._closing = False
        self._closed = False
        self._flush_wanted = False

        self.healthy = False
        self.inserted = 0
        self.insert_errors = 0
        self.dropped = 0
        self.last_error = ""
        self._unreachable = False
        """The last insert could not even connect: reads fail at once instead of waiting to time out."""
        self._warn = RateLimitedLog(log, level=logging.ERROR)
        self._refused = RateLimitedLog(log, level=logging.ERROR)

    @classmethod
    def from_config(cls, config: ClickHouseConfig) -> ClickHouseStorage:
        password = config.password
        if config.password_env is not None:
            password = os.environ.get(config.password_env, "")
        return cls(
            password=password,
            spool_dir=config.spool_path,
            fsync=config.fsync_policy,
            **config.options(exclude=("password", "password_env", "spool_dir", "fsync")),
        )

    # -- health ---------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Records accepted and not yet delivered to ClickHouse (in the spool)."""
        return self._spool.pending_records

    @property
    def spooled_bytes(self) -> int:
        return self._spool.pending_bytes

    @property
    def dead_letter_records(self) -> int:
        return self._dead.records

    @property
    def dead_letter_batches(self) -> int:
        return self._dead.batches

    def health(self) -> dict[str, float]:
        """The health figures, by name (exported to ``/metrics``)."""
        return {
            "healthy": 1.0 if self.healthy else 0.0,
            "buffered_records": float(self.buffered),
            "spooled_bytes": float(self.spooled_bytes),
            "inserted_records": float(self.inserted),
            "insert_errors": float(self.insert_errors),
            "dropped_records": float(self.dropped),
            "dead_letter_records": float(self._dead.records),
            "dead_letter_batches": float(self._dead.batches),
            "spool_corrupt_bytes": float(self._spool.corrupt_bytes),
        }

    # -- lifecycle ------------------------------------------------------------

    def open(self, topic: str, data_format: DataFormat) -> tuple[str, int]:
        """Create the database and tables if missing; return ``(epoch, last_seq)`` (see the module notes).

        Waits up to ``startup_timeout`` seconds for ClickHouse, then raises
        :class:`~gauss.errors.StorageError` naming the URL.
        """
        self.topic = topic
        self.format = DataFormat(data_format)
        self.layout = layout_for(self.format)
        self.table = self.table_option or DEFAULT_TABLES[self.format]
        self._qualified = f"{sql_name(self.database)}.{sql_name(self.table)}"
        self._columns = ", ".join(sql_name(name) for name, _ in self.layout.columns)
        state: dict[str, Any] | None = None
        if self.spool_dir is not None:
            directory = self.spool_dir / file_name(self.table) / file_name(topic)
            self._spool = DiskSpool(directory, self.max_spool_bytes, self.fsync)
            self._dead = DeadLetter(directory / "dead-letter", self.max_dead_letter_bytes)
            try:
                state = self._spool.read_state()
                acked = state.get("acked_seq", 0) if state else 0
                self._spool.load(acked if isinstance(acked, int) else 0)
                self._dead.load()
            except OSError as exc:
                raise StorageError(f"clickhouse storage for topic {topic!r}: cannot open spool: {exc}") from exc

        deadline = time.monotonic() + self.startup_timeout
        delay = self.retry_min
        while True:
            try:
                self._ensure_schema(self._reader)
                self.epoch, self._last_seq = self._recover(state)
                break
            except ClickHouseError as exc:
                if exc.code or time.monotonic() + delay > deadline:
                    raise StorageError(f"clickhouse storage for topic {topic!r}: cannot open: {exc}") from None
                log.warning("clickhouse storage %s: waiting for %s: %s", topic, self.url, exc)
                time.sleep(delay)
                delay = min(delay * 2, self.retry_max)
        self._write_state(clean=False)
        self._cache_spool()
        self.healthy = True
        if self._spool.pending_records:
            self._wake.set()  # what a previous run left goes out now, not a flush_interval later
        self._worker = threading.Thread(target=self._run, name=f"clickhouse-{topic}", daemon=True)
        self._worker.start()
        if self.fsync == "interval" and self._spool.durable:
            self._syncer = threading.Thread(target=self._sync_loop, name=f"clickhouse-sync-{topic}", daemon=True)
            self._syncer.start()
        return self.epoch, self._last_seq

    def _ensure_schema(self, client: ClickHouseClient) -> None:
        client.execute(f"CREATE DATABASE IF NOT EXISTS {sql_name(self.database)}")
        columns = ", ".join(f"{sql_name(name)} {kind}" for name, kind in self.layout.columns)
        if self.format.upsert:
            engine = "ReplacingMergeTree(seq)"
            order = "(topic, key, ts_ms)"
        else:
            engine = "ReplacingMergeTree()"
            order = "(topic, key, ts_ms, seq)"
        client.execute(
            f"CREATE TABLE IF NOT EXISTS {self._qualified} ({columns}) ENGINE = {engine} "
            f"PARTITION BY toYYYYMM(toDateTime(intDiv(ts_ms, 1000), 'UTC')) ORDER BY {order}"
        )
        found = client.execute(
            f"SELECT name, type, default_kind FROM system.columns WHERE database = {sql_string(self.database)} "
            f"AND table = {sql_string(self.table)} FORMAT TabSeparated"
        ).decode()
        # Columns an operator added with a DEFAULT, MATERIALIZED or ALIAS expression are theirs; inserts name ours.
        have = [(name, kind) for name, kind, default in (line.split("\t") for line in found.splitlines() if line) if not default]
        if have != self.layout.columns:
            want = ", ".join(f"{n} {t}" for n, t in self.layout.columns)
            got = ", ".join(f"{n} {t}" for n, t in have)
            raise StorageError(
                f"clickhouse table {self.database}.{self.table} does not fit {self.format.value} records "
                f"(has: {got}; needs: {want}); pick another 'table'"
            )
        meta = f"{sql_name(self.database)}.{sql_name(self.meta_table)}"
        client.execute(
            f"CREATE TABLE IF NOT EXISTS {meta} (topic String, table String, epoch String, created_ms UInt64) "
            "ENGINE = MergeTree() ORDER BY (topic, created_ms)"
        )

    def _recover(self, state: dict[str, Any] | None) -> tuple[str, int]:
        """The epoch and last seq to go on with, from the data itself (SPEC "Seq is a promise")."""
        where = f"topic = {sql_string(self.topic)}"
        answer = self._reader.execute(f"SELECT max(seq) FROM {self._qualified} WHERE {where} FORMAT TabSeparated")
        stored = int(answer.strip() or 0)
        kept = state.get("last_seq", 0) if state else 0
        last_seq = max(stored, self._spool.last_seq, self._dead.last_seq, kept if isinstance(kept, int) else 0)
        meta = f"{sql_name(self.database)}.{sql_name(self.meta_table)}"
        answer = self._reader.execute(
            f"SELECT argMax(epoch, created_ms), count() FROM {meta} WHERE {where} "
            f"AND table = {sql_string(self.table)} FORMAT TabSeparated"
        )
        epoch, rows = answer.decode().rstrip("\n").split("\t")
        what = f"clickhouse storage {self.topic}"
        if last_seq == 0 or int(rows) == 0:
            fresh = True  # NOTE: nothing held means the sequence restarts at 1, so SPEC 1 wants a new epoch
        elif not self._spool.durable:
            log.warning("%s: no spool_dir, so batches waiting in memory at the last stop are unaccounted for; "
                        "new epoch after seq %d", what, last_seq)  # fmt: skip
            fresh = True
        elif state is not None and state.get("epoch") != epoch:
            log.warning("%s: the spool belongs to epoch %r, ClickHouse names %r; new epoch after seq %d",
                        what, state.get("epoch"), epoch, last_seq)  # fmt: skip
            fresh = True
        else:
            resumed, last_seq = resume_point(
                state or {}, last_seq, data_doubtful=self._spool.hidden_damage, has_data=True, logger=log, what=what
            )
            fresh = resumed != epoch
        if fresh:
            epoch = new_epoch()
            row = f"{self.topic}\t{self.table}\t{epoch}\t{int(time.time() * 1000)}\n"
            self._reader.execute(
                f"INSERT INTO {meta} (topic, table, epoch, created_ms) FORMAT TabSeparated",
                row.replace("\\", "\\\\").encode(),
            )
        return epoch, last_seq

    def _write_state(self, *, clean: bool) -> None:
        """Record, beside the spool, what a later open needs to trust it (called with the lock or alone)."""
        try:
            self._spool.write_state(
                {
                    "epoch": self.epoch,
                    "last_seq": self._last_seq,
                    "acked_seq": self._acked_seq(),
                    "clean": clean,
                    "fsync": self.fsync,
                    "boot_id": boot_id(),
                }
            )
        except OSError as exc:
            self._warn("clickhouse storage %s: cannot write spool state: %s", self.topic, exc)

    def _acked_seq(self) -> int:
        """Every seq up to this was delivered or dead-lettered."""
        frames = self._spool.read(1) if self._spool.pending_records else []
        return frames[0].first_seq - 1 if frames else self._last_seq

    def _cache_spool(self) -> None:
        """After a restart: what still waits in the spool, into the read cache (as far as it fits)."""
        if not self._spool.pending_records:
            return
        with self._lock:
            frames = self._spool.read(self.max_buffer_records)
            for frame in frames:
                self._cache.append((frame.last_seq, self.layout.decode(frame.body, with_topic=True)))
                self._cache_records += frame.records
            if sum(f.records for f in frames) < self._spool.pending_records:
                self._uncached_upto = self._spool.last_seq

    def append(self, records: Sequence[TopicRecord]) -> None:
        """Write a numbered batch to the spool (handed to the OS) and return; never waits on ClickHouse.

        Raises :class:`~gauss.errors.StorageError` when the spool is full
        or the write fails (nothing of the batch is kept then).
        """
        if not records:
            return
        frame = Frame(records[0].seq, records[-1].seq, len(records), self.layout.encode(self.topic, records))
        with self._lock:
            if self._closed:
                raise StorageError(f"clickhouse storage for topic {self.topic!r} is closed")
            try:
                self._spool.append(frame)
            except SpoolFull as exc:
                self.dropped += len(records)
                self._warn("clickhouse storage %s: dropped %d records (%d in all): %s", self.topic, len(records), self.dropped, exc)
                raise
            except StorageError as exc:
                self.dropped += len(records)
                self._warn("clickhouse storage %s: dropped %d records: %s", self.topic, len(records), exc)
                raise
            self._last_seq = max(self._last_seq, frame.last_seq)
            if self._cache_records + len(records) <= self.max_buffer_records and self._uncached_upto <= self._acked_upto:
                self._cache.append((frame.last_seq, list(records)))
                self._cache_records += len(records)
            else:
                self._uncached_upto = frame.last_seq
            wake = self._spool.pending_records >= self.batch_size
        if wake:
            self._wake.set()

    def flush(self) -> None:
        """Deliver everything spooled, waiting up to ``flush_timeout`` (what is left stays in the spool)."""
        if self._worker is None:
            return
        deadline = time.monotonic() + self.flush_timeout
        with self._lock:
            self._flush_wanted = True
            self._wake.set()
            while self._spool.pending_records and self.healthy:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._progress.wait(min(left, 0.2))
                self._wake.set()
            self._flush_wanted = False
            self._sync_locked()

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        with self._lock:
            self._closing = True
            self._closed = True
        self._stop.set()
        self._wake.set()
        for thread in (self._worker, self._syncer):
            if thread is not None:
                thread.join(timeout=self.flush_timeout + 5)
        with self._lock:
            if self.buffered and not self._spool.durable:
                log.error(
                    "clickhouse storage %s: closed with %d records not delivered and no spool_dir: they are lost",
                    self.topic,
                    self.buffered,
                )
            self._spool.close()
            self._write_state(clean=True)
        self._writer.close()
        self._reader.close()

    # -- the worker -----------------------------------------------------------

    def _sync_loop(self) -> None:
        spool = self._spool
        assert isinstance(spool, DiskSpool)
        while not self._stop.wait(MAX_FSYNC_INTERVAL):
            with self._lock:
                path = spool.take_dirty()
            if path is None:
                continue
            try:
                fsync_paths([path])  # PERF: in gevent's thread pool, outside the lock: ingest goes on meanwhile
            except OSError as exc:
                with self._lock:
                    spool.dirty = True
                self._warn("clickhouse storage %s: cannot fsync the spool: %s", self.topic, exc)

    def _sync_locked(self) -> None:
        try:
            self._spool.sync()
        except OSError as exc:
            self._warn("clickhouse storage %s: cannot fsync the spool: %s", self.topic, exc)

    def _run(self) -> None:
        delay = self.retry_min
        while True:
            if self.healthy:
                self._wake.wait(self.flush_interval)
            else:
                # Back off whatever arrives meanwhile: a busy feed must not hammer a sick server.
                self._stop.wait(delay)
            self._wake.clear()
            if self._closing:
                return
            while not self._closing:
                try:
                    with self._lock:
                        frames = self._spool.read(self.batch_size)
                except (OSError, StorageError) as exc:
                    self._warn("clickhouse storage %s: cannot read the spool: %s", self.topic, exc)
                    self.healthy = False
                    break
                if not frames:
                    break
                handled, ok = self._deliver(frames)
                if handled:
                    self._ack(frames[:handled])
                if not ok:
                    self.healthy = False
                    delay = min(max(delay * 2, self.retry_min), self.retry_max) * (0.8 + 0.4 * random.random())
                    break
                if not self.healthy:
                    log.info("clickhouse storage %s: ClickHouse is back; %d records waiting", self.topic, self.buffered)
                self.healthy = True
                delay = self.retry_min
                if self._spool.pending_records < self.batch_size and not self._flush_wanted:
                    break  # a partial batch waits for the next flush_interval

    def _deliver(self, frames: list[Frame]) -> tuple[int, bool]:
        """Insert ``frames``; ``(how many from the front are done with, False if a retry is due)``.

        A permanent refusal splits the batch in halves until the refused
        frames stand alone; each of those is dead-lettered.
        """
        try:
            self._insert(b"".join(f.body for f in frames))
        except ClickHouseUnavailable as exc:
            # The state first, then the count: whoever sees the error counted sees why (reads fail at once).
            self.last_error = str(exc)
            self._unreachable = exc.status == 0 and exc.code == 0
            self.insert_errors += 1
            if self.healthy:
                log.error("clickhouse storage %s: insert failed, will retry: %s", self.topic, exc)
            else:
                self._warn("clickhouse storage %s: still failing: %s", self.topic, exc)
            return 0, False
        except ClickHouseError as exc:
            self.insert_errors += 1
            self.last_error = str(exc)
            if len(frames) == 1:
                self._dead_letter(frames, exc)
                return 1, True
            half = len(frames) // 2
            done, ok = self._deliver(frames[:half])
            if not ok:
                return done, False
            more, ok = self._deliver(frames[half:])
            return done + more, ok
        self.inserted += sum(f.records for f in frames)
        self._unreachable = False
        return len(frames), True

    def _insert(self, body: bytes) -> None:
        sql = f"INSERT INTO {self._qualified} ({self._columns}) FORMAT RowBinary"
        try:
            self._writer.execute(sql, body)
        except ClickHouseError as exc:
            if exc.code not in (_UNKNOWN_TABLE, _UNKNOWN_DATABASE):
                raise
            log.warning("clickhouse storage %s: table gone (%s); creating it again", self.topic, exc)
            try:
                self._ensure_schema(self._writer)
            except ClickHouseError:
                raise
            except StorageError as mismatch:  # someone made the table anew in another shape
                raise ClickHouseError(str(mismatch)) from None
            self._writer.execute(sql, body)

    def _dead_letter(self, frames: list[Frame], exc: ClickHouseError) -> None:
        records = sum(f.records for f in frames)
        note = {
            "topic": self.topic,
            "error": str(exc),
            "code": exc.code,
            "insert": f"INSERT INTO {self.database}.{self.table} ({self._columns}) FORMAT RowBinary",
            "time_ms": int(time.time() * 1000),
        }
        try:
            where = self._dead.put(frames, note)
        except OSError as failure:
            where = None
            self._warn("clickhouse storage %s: cannot write the dead-letter file: %s", self.topic, failure)
        if where is None:
            self.dropped += records
        self._refused(
            "clickhouse storage %s: ClickHouse refused %d records (seq %d-%d) for good, %s: %s",
            self.topic,
            records,
            frames[0].first_seq,
            frames[-1].last_seq,
            f"kept in {where}" if where is not None else "dropped (no room for a dead-letter file)",
            exc,
        )

    def _ack(self, frames: list[Frame]) -> None:
        last = frames[-1].last_seq
        with self._lock:
            self._acked_upto = max(self._acked_upto, last)
            self._spool.ack(len(frames))
            while self._cache and self._cache[0][0] <= last:
                self._cache_records -= len(self._cache.popleft()[1])
            self._write_state(clean=False)
            self._progress.notify_all()

    # -- reads ----------------------------------------------------------------

    def _pending(self) -> list[TopicRecord]:
        with self._lock:
            out: list[TopicRecord] = []
            for _, batch in self._cache:
                out.extend(batch)
        return out

    def _read(self, sql: str) -> bytes:
        """Run a read; a table missing (it comes back with the next insert) counts as unavailable.

        While the worker cannot connect at all, reads fail at once: a
        listing, or a topic asking ``bounds`` after a refused batch, must not
        wait ``connect_timeout`` per call on a host that does not answer.
        """
        if self._unreachable and not self.healthy:
            raise StorageUnavailable(f"clickhouse unreachable (retrying in the background): {self.last_error}")
        try:
            return self._reader.execute(sql)
        except ClickHouseError as exc:
            if exc.code in (_UNKNOWN_TABLE, _UNKNOWN_DATABASE):
                raise StorageUnavailable(f"clickhouse table {self.database}.{self.table} missing: {exc}") from None
            raise

    def _select(self, sql: str) -> list[TopicRecord]:
        return self.layout.decode(self._read(sql + " FORMAT RowBinary"))

    def _where(self, key: str | None = None) -> str:
        where = f"topic = {sql_string(self.topic)}"
        if key is not None:
            where += f" AND key = {sql_string(key)}"
        return where

    def _merge(self, stored: Iterable[TopicRecord], pending: Iterable[TopicRecord]) -> list[TopicRecord]:
        """Stored and pending records as one set (a later candle replaces; a landed retry counts once)."""
        if self.format.upsert:
            by_candle: dict[tuple[str, int], TopicRecord] = {}
            for record in (*stored, *pending):
                slot = (record.key, record.ts_ms)
                held = by_candle.get(slot)
                if held is None or record.seq > held.seq:
                    by_candle[slot] = record
            return list(by_candle.values())
        by_seq = {record.seq: record for record in stored}
        for record in pending:
            by_seq.setdefault(record.seq, record)
        return list(by_seq.values())

    def query(self, query: TopicQuery) -> QueryResult:
        pending = [r for r in self._pending() if query.matches(r)]
        where = self._where(query.key)
        if query.from_ms is not None:
            where += f" AND ts_ms >= {int(query.from_ms)}"
        if query.to_ms is not None:
            where += f" AND ts_ms < {int(query.to_ms)}"
        if query.since_seq is not None:
            where += f" AND seq > {int(query.since_seq)}"
        stored = self._select(
            f"SELECT {self.layout.select_list} FROM {self._qualified} FINAL WHERE {where} "
            f"ORDER BY ts_ms DESC, seq DESC LIMIT {query.limit + 1 + len(pending)}"
        )
        records = self._merge(stored, pending)
        records.sort(key=lambda r: (r.ts_ms, r.seq))
        truncated = len(records) > query.limit
        return QueryResult(records[-query.limit :] if truncated else records, truncated)

    def latest(self, key: str | None = None) -> list[TopicRecord]:
        stored = self._select(
            f"SELECT {self.layout.select_list} FROM {self._qualified} FINAL WHERE {self._where(key)} "
            "ORDER BY key, ts_ms DESC, seq DESC LIMIT 1 BY key"
        )
        newest: dict[str, TopicRecord] = {}
        for record in self._merge(stored, [r for r in self._pending() if key is None or r.key == key]):
            held = newest.get(record.key)
            if held is None or (record.ts_ms, record.seq) > (held.ts_ms, held.seq):
                newest[record.key] = record
        return sorted(newest.values(), key=lambda r: (r.ts_ms, r.seq))

    def _new_pending(self, pending: list[TopicRecord]) -> list[TopicRecord]:
        """The pending records that are not yet in ClickHouse in any version."""
        if not pending:
            return []
        if not self.format.upsert:
            # Batches land whole and in seq order (spool first, then memory),
            # so what ClickHouse holds of the pending ones is a prefix by seq.
            answer = self._read(
                f"SELECT max(seq) FROM {self._qualified} WHERE {self._where()} FORMAT TabSeparated"
            )
            stored_max = int(answer.strip() or 0)
            return [r for r in pending if r.seq > stored_max]
        latest: dict[tuple[str, int], TopicRecord] = {}
        for record in pending:
            latest[(record.key, record.ts_ms)] = record
        keys = sorted({k for k, _ in latest})
        low = min(ts for _, ts in latest)
        present: set[tuple[str, int]] = set()
        for start in range(0, len(keys), 1000):
            chunk = ", ".join(sql_string(k) for k in keys[start : start + 1000])
            answer = self._read(
                f"SELECT key, ts_ms FROM {self._qualified} WHERE {self._where()} AND key IN ({chunk}) "
                f"AND ts_ms >= {low} GROUP BY key, ts_ms FORMAT RowBinary"
            )
            pos = 0
            while pos < len(answer):
                key, pos = read_string(answer, pos)
                (ts,) = struct.unpack_from("<q", answer, pos)
                pos += 8
                present.add((key, ts))
        return [r for slot, r in latest.items() if slot not in present]

    def keys(self) -> list[KeyInfo]:
        pending = self._pending()
        raw = self._read(
            f"SELECT key, count(), max(ts_ms) FROM {self._qualified} FINAL WHERE {self._where()} "
            "GROUP BY key FORMAT RowBinary"
        )
        info: dict[str, list[int]] = {}
        pos = 0
        while pos < len(raw):
            key, pos = read_string(raw, pos)
            count, last = struct.unpack_from("<Qq", raw, pos)
            pos += 16
            info[key] = [count, last]
        for record in self._new_pending(pending):
            entry = info.setdefault(record.key, [0, record.ts_ms])
            entry[0] += 1
        for record in pending:
            held = info.get(record.key)
            if held is not None and record.ts_ms > held[1]:
                held[1] = record.ts_ms
        return [KeyInfo(k, v[0], v[1]) for k, v in sorted(info.items())]

    def count(self) -> int:
        pending = self._pending()
        answer = self._read(
            f"SELECT count() FROM {self._qualified} FINAL WHERE {self._where()} FORMAT TabSeparated"
        )
        return int(answer.strip() or 0) + len(self._new_pending(pending))

    def bounds(self) -> tuple[int, int]:
        pending = self._pending()
        answer = self._read(
            f"SELECT count(), min(seq), max(seq) FROM {self._qualified} FINAL WHERE {self._where()} "
            "FORMAT TabSeparated"
        )
        rows, low, high = (int(v) for v in answer.decode().split("\t"))
        if self.format.upsert and pending and rows:
            # The oldest stored candle may have been replaced by a pending version.
            replaced = {(r.key, r.ts_ms) for r in pending}
            for record in self._select(
                f"SELECT {self.layout.select_list} FROM {self._qualified} FINAL WHERE {self._where()} "
                f"ORDER BY seq LIMIT {len(replaced) + 1}"
            ):
                if (record.key, record.ts_ms) not in replaced:
                    low = record.seq
                    break
            else:
                rows = 0
        seqs = [r.seq for r in pending]
        if rows == 0:
            return (min(seqs), max(seqs)) if seqs else (0, 0)
        if not seqs:
            return low, high
        return min(low, min(seqs)), max(high, max(seqs))
