"""The ClickHouse storage: a topic's records in a ClickHouse table, over the HTTP interface.

Why it looks the way it does:

- ``append`` only enqueues. A background worker inserts batches (``batch_size``
  records or every ``flush_interval`` seconds, one HTTP request per batch), so
  a slow or absent ClickHouse never slows ingest.
- While ClickHouse is down the worker retries with capped exponential
  back-off and moves what waits in memory to a spool directory on disk; a
  restart re-sends the spool. Past ``max_buffer_records`` in memory with a
  full spool (``max_spool_bytes``), new records are dropped and counted in
  ``dropped`` and logged, never silently.
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
from typing import Any, Iterable, Sequence

from gauss_plugins.storage._support import new_epoch

from gauss.core import TopicRecord
from gauss.errors import ConfigError, StorageError
from gauss.ratelimit import RateLimitedLog
from gauss.records import DataFormat, KeyInfo, QueryResult, TopicQuery
from gauss.registry import Options

from .client import ClickHouseClient, ClickHouseError, sql_name, sql_string
from .rowbinary import _ANY, layout_for, read_string
from .spool import Spool, file_name

__all__ = ["ClickHouseStorage", "create"]

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8123"
DEFAULT_DATABASE = "gauss"
DEFAULT_TABLES = {DataFormat.QUOTE: "quotes", DataFormat.CANDLE: "candles", DataFormat.ANY: "records"}
DEFAULT_META_TABLE = "gauss_topics"
DEFAULT_SPOOL_DIR = "data/clickhouse-spool"

# ClickHouse error codes the worker repairs itself instead of retrying blindly.
_UNKNOWN_TABLE = 60
_UNKNOWN_DATABASE = 81


class ClickHouseStorage:
    """A durable :class:`~gauss.protocols.TopicStorage` in ClickHouse, one instance per topic.

    Health, for ``/metrics`` and logs: :attr:`healthy`, :attr:`buffered`
    (records accepted and not yet confirmed by ClickHouse, in memory and on
    disk), :attr:`spooled_bytes`, :attr:`inserted`, :attr:`insert_errors`,
    :attr:`dropped`; :meth:`health` returns them as one dict.
    """

    name = "clickhouse"
    durable = True

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
    ) -> None:
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
        client_args = {"user": user, "password": password, "connect_timeout": connect_timeout, "timeout": timeout}
        self._writer = ClickHouseClient(url, **client_args)  # type: ignore[arg-type]
        self._reader = ClickHouseClient(url, **client_args)  # type: ignore[arg-type]

        self.topic = ""
        self.format = DataFormat.ANY
        self.layout = _ANY
        self.table = ""
        self._qualified = ""
        self._spool: Spool | None = None

        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._progress = threading.Condition(self._lock)
        self._spool_lock = threading.Lock()
        """Serialises spool changes (the worker, ``flush`` and ``close`` all spill)."""
        self._memory: deque[list[TopicRecord]] = deque()
        self._memory_records = 0
        self._inflight: list[TopicRecord] = []
        self._worker: threading.Thread | None = None
        self._closing = False
        self._closed = False
        self._flush_wanted = False

        self.healthy = False
        self.inserted = 0
        self.insert_errors = 0
        self.dropped = 0
        self.last_error = ""
        self._warn = RateLimitedLog(log, level=logging.ERROR)

    # -- health ---------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Records accepted and not yet confirmed by ClickHouse (memory and disk)."""
        spooled = self._spool.records if self._spool is not None else 0
        return self._memory_records + len(self._inflight) + spooled

    @property
    def spooled_bytes(self) -> int:
        return self._spool.bytes if self._spool is not None else 0

    def health(self) -> dict[str, float]:
        """The health figures, by name (exported to ``/metrics``)."""
        return {
            "healthy": 1.0 if self.healthy else 0.0,
            "buffered_records": float(self.buffered),
            "spooled_bytes": float(self.spooled_bytes),
            "inserted_records": float(self.inserted),
            "insert_errors": float(self.insert_errors),
            "dropped_records": float(self.dropped),
        }

    # -- lifecycle ------------------------------------------------------------

    def open(self, topic: str, data_format: DataFormat) -> tuple[str, int]:
        """Create the database and tables if missing; return the kept ``(epoch, last_seq)``.

        Waits up to ``startup_timeout`` seconds for ClickHouse, then raises
        :class:`~gauss.errors.StorageError` naming the URL.
        """
        self.topic = topic
        self.format = DataFormat(data_format)
        self.layout = layout_for(self.format)
        self.table = self.table_option or DEFAULT_TABLES[self.format]
        self._qualified = f"{sql_name(self.database)}.{sql_name(self.table)}"
        if self.spool_dir is not None:
            self._spool = Spool(self.spool_dir / file_name(self.table) / file_name(topic), self.max_spool_bytes)
            self._spool.load()

        deadline = time.monotonic() + self.startup_timeout
        delay = self.retry_min
        while True:
            try:
                self._ensure_schema(self._reader)
                epoch, last_seq = self._open_meta()
                break
            except ClickHouseError as exc:
                if exc.code or time.monotonic() + delay > deadline:
                    raise StorageError(f"clickhouse storage for topic {topic!r}: cannot open: {exc}") from None
                log.warning("clickhouse storage %s: waiting for %s: %s", topic, self.url, exc)
                time.sleep(delay)
                delay = min(delay * 2, self.retry_max)
        self.healthy = True
        self._worker = threading.Thread(target=self._run, name=f"clickhouse-{topic}", daemon=True)
        self._worker.start()
        return epoch, last_seq

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
            f"SELECT name, type FROM system.columns WHERE database = {sql_string(self.database)} "
            f"AND table = {sql_string(self.table)} FORMAT TabSeparated"
        ).decode()
        have = [tuple(line.split("\t")) for line in found.splitlines() if line]
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

    def _open_meta(self) -> tuple[str, int]:
        where = f"topic = {sql_string(self.topic)}"
        answer = self._reader.execute(f"SELECT max(seq) FROM {self._qualified} WHERE {where} FORMAT TabSeparated")
        last_seq = max(int(answer.strip() or 0), self._spool.last_seq if self._spool else 0)
        meta = f"{sql_name(self.database)}.{sql_name(self.meta_table)}"
        answer = self._reader.execute(
            f"SELECT argMax(epoch, created_ms), count() FROM {meta} WHERE {where} "
            f"AND table = {sql_string(self.table)} FORMAT TabSeparated"
        )
        epoch, rows = answer.decode().rstrip("\n").split("\t")
        if last_seq == 0 or int(rows) == 0:
            # NOTE: nothing held means the sequence restarts at 1, so SPEC 1 wants a new epoch.
            epoch = new_epoch()
            row = f"{self.topic}\t{self.table}\t{epoch}\t{int(time.time() * 1000)}\n"
            self._reader.execute(
                f"INSERT INTO {meta} (topic, table, epoch, created_ms) FORMAT TabSeparated",
                row.replace("\\", "\\\\").encode(),
            )
        return epoch, last_seq

    def append(self, records: Sequence[TopicRecord]) -> None:
        """Queue a numbered batch for insertion; never waits on ClickHouse."""
        if not records:
            return
        with self._lock:
            if self._closed:
                raise StorageError(f"clickhouse storage for topic {self.topic!r} is closed")
            if self._memory_records + len(records) > self.max_buffer_records:
                self.dropped += len(records)
                over = True
            else:
                self._memory.append(list(records))
                self._memory_records += len(records)
                over = False
            wake = self._memory_records >= self.batch_size
        if over:
            self._warn(
                "clickhouse storage %s: buffer full (%d records in memory, %d bytes spooled): dropped %d records "
                "(%d in all)",
                self.topic,
                self._memory_records,
                self.spooled_bytes,
                len(records),
                self.dropped,
            )
        elif wake:
            self._wake.set()

    def flush(self) -> None:
        """Insert everything queued; what ClickHouse does not take within ``flush_timeout`` goes to the spool."""
        if self._worker is None:
            return
        deadline = time.monotonic() + self.flush_timeout
        with self._lock:
            self._flush_wanted = True
            self._wake.set()
            while (self._memory_records or self._inflight) and self.healthy:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._progress.wait(min(left, 0.2))
                self._wake.set()
            self._flush_wanted = False
        if self._memory_records or self._inflight:
            self._spill(everything=True)

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        with self._lock:
            self._closing = True
            self._closed = True
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=self.flush_timeout + 5)
        self._spill(everything=True)
        if self.buffered and self._spool is None:
            log.error(
                "clickhouse storage %s: closed with %d records not delivered and no spool_dir: they are lost",
                self.topic,
                self.buffered,
            )
        self._writer.close()
        self._reader.close()

    # -- the worker -----------------------------------------------------------

    def _take(self) -> list[TopicRecord]:
        """Move up to ``batch_size`` records from memory to in-flight (under the lock)."""
        batch: list[TopicRecord] = []
        while self._memory and len(batch) < self.batch_size:
            head = self._memory[0]
            room = self.batch_size - len(batch)
            if len(head) <= room:
                batch.extend(self._memory.popleft())
            else:
                batch.extend(head[:room])
                self._memory[0] = head[room:]
        self._memory_records -= len(batch)
        self._inflight = batch
        return batch

    def _run(self) -> None:
        delay = self.retry_min
        next_flush = time.monotonic() + self.flush_interval
        while True:
            if not self.healthy:
                # Back off whatever arrives meanwhile: a busy feed must not hammer a sick server.
                self._stop.wait(delay)
            else:
                self._wake.wait(max(0.0, next_flush - time.monotonic()))
            self._wake.clear()
            if self._closing:
                return
            now = time.monotonic()
            due = now >= next_flush or self._flush_wanted or self._memory_records >= self.batch_size
            if not due and self.healthy:
                continue
            ok = self._deliver_once()
            if ok:
                delay = self.retry_min
                with self._lock:
                    more = self._memory_records >= self.batch_size or (
                        self._flush_wanted and self._memory_records > 0
                    )
                    more = more or (self._spool is not None and bool(self._spool.files))
                if more:
                    self._wake.set()
                else:
                    next_flush = time.monotonic() + self.flush_interval
            else:
                self._spill(everything=False)
                delay = min(max(delay * 2, self.retry_min), self.retry_max) * (0.8 + 0.4 * random.random())

    def _deliver_once(self) -> bool:
        """Send the oldest spool file, else one batch from memory; True on success or nothing to do."""
        spool = self._spool
        if spool is not None:
            with self._spool_lock:
                spooled = spool.oldest()
            if spooled is not None:
                item, body = spooled
                if not self._insert(body, item.records):
                    return False
                with self._spool_lock:
                    spool.remove(item)
                with self._lock:
                    self._progress.notify_all()
                return True
        with self._lock:
            batch = self._take()
        if not batch:
            return True
        body = self.layout.encode(self.topic, batch)
        ok = self._insert(body, len(batch))
        with self._lock:
            if not ok:
                self._memory.appendleft(batch)
                self._memory_records += len(batch)
            self._inflight = []
            self._progress.notify_all()
        return ok

    def _insert(self, body: bytes, count: int) -> bool:
        columns = ", ".join(sql_name(name) for name, _ in self.layout.columns)
        try:
            try:
                self._writer.execute(f"INSERT INTO {self._qualified} ({columns}) FORMAT RowBinary", body)
            except ClickHouseError as exc:
                if exc.code not in (_UNKNOWN_TABLE, _UNKNOWN_DATABASE):
                    raise
                log.warning("clickhouse storage %s: table gone (%s); creating it again", self.topic, exc)
                self._ensure_schema(self._writer)
                self._writer.execute(f"INSERT INTO {self._qualified} ({columns}) FORMAT RowBinary", body)
        except (ClickHouseError, StorageError) as exc:
            self.insert_errors += 1
            self.last_error = str(exc)
            if self.healthy:
                log.error("clickhouse storage %s: insert of %d records failed, will retry: %s", self.topic, count, exc)
            else:
                self._warn("clickhouse storage %s: still failing: %s", self.topic, exc)
            self.healthy = False
            return False
        if not self.healthy:
            log.info("clickhouse storage %s: ClickHouse is back; %d records waiting", self.topic, self.buffered)
        self.healthy = True
        self.inserted += count
        return True

    def _spill(self, *, everything: bool) -> None:
        """Move waiting batches from memory to the disk spool (as far as it has room)."""
        if self._spool is None:
            return
        with self._spool_lock:
            self._spill_locked(everything)

    def _spill_locked(self, everything: bool) -> None:
        assert self._spool is not None
        while True:
            with self._lock:
                if not self._memory:
                    return
                batch = self._memory[0]
            body = self.layout.encode(self.topic, batch)
            if not self._spool.room(len(body)):
                if everything:
                    self._warn(
                        "clickhouse storage %s: spool %s full (%d bytes); %d records stay in memory only",
                        self.topic,
                        self._spool.directory,
                        self._spool.bytes,
                        self._memory_records,
                    )
                return
            try:
                self._spool.put(batch, body)
            except OSError as exc:
                self._warn("clickhouse storage %s: cannot write spool: %s", self.topic, exc)
                return
            with self._lock:
                if self._memory and self._memory[0] is batch:
                    self._memory.popleft()
                    self._memory_records -= len(batch)
                self._progress.notify_all()

    # -- reads ----------------------------------------------------------------

    def _pending(self) -> list[TopicRecord]:
        with self._lock:
            out = list(self._inflight)
            for batch in self._memory:
                out.extend(batch)
        return out

    def _select(self, sql: str) -> list[TopicRecord]:
        return self.layout.decode(self._reader.execute(sql + " FORMAT RowBinary"))

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
            answer = self._reader.execute(
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
            answer = self._reader.execute(
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
        raw = self._reader.execute(
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
        answer = self._reader.execute(
            f"SELECT count() FROM {self._qualified} FINAL WHERE {self._where()} FORMAT TabSeparated"
        )
        return int(answer.strip() or 0) + len(self._new_pending(pending))

    def bounds(self) -> tuple[int, int]:
        pending = self._pending()
        answer = self._reader.execute(
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


def create(table: dict[str, Any]) -> ClickHouseStorage:
    """Build the storage from its TOML table (see docs/clickhouse.md for every option)."""
    opts = Options(table)
    url = opts.str("url", DEFAULT_URL)
    if not url.startswith(("http://", "https://")):
        raise ConfigError("url", f"must be an http:// or https:// URL, got {url!r}")
    password = opts.str("password", "", empty=True)
    password_env = opts.str("password_env", None)
    if password_env is not None:
        if password:
            raise ConfigError("password_env", "give either 'password' or 'password_env', not both")
        password = os.environ.get(password_env, "")
    spool = opts.raw("spool_dir", DEFAULT_SPOOL_DIR)
    if spool is False or spool == "":
        spool_dir = None
    else:
        spool_dir = opts.path("spool_dir", DEFAULT_SPOOL_DIR)
    storage = ClickHouseStorage(
        url=url,
        database=opts.str("database", DEFAULT_DATABASE),
        table=opts.str("table", None),
        meta_table=opts.str("meta_table", DEFAULT_META_TABLE),
        user=opts.str("user", "default"),
        password=password,
        batch_size=opts.int("batch_size", 10_000, min=1, max=1_000_000),
        flush_interval=opts.float("flush_interval", 1.0, min=0.001),
        connect_timeout=opts.float("connect_timeout", 5.0, min=0.001),
        timeout=opts.float("timeout", 30.0, min=0.001),
        startup_timeout=opts.float("startup_timeout", 30.0, min=0.0),
        flush_timeout=opts.float("flush_timeout", 10.0, min=0.0),
        retry_min=opts.float("retry_min", 0.1, min=0.001),
        retry_max=opts.float("retry_max", 10.0, min=0.001),
        max_buffer_records=opts.int("max_buffer_records", 1_000_000, min=1),
        spool_dir=spool_dir,
        max_spool_bytes=opts.int("max_spool_bytes", 1 << 30, min=0),
    )
    opts.done()
    if storage.retry_max < storage.retry_min:
        raise ConfigError("retry_max", f"must be at least retry_min ({storage.retry_min})")
    return storage

