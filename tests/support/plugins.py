"""Small test-local plugins for the engine tests (named ``support.plugins:...`` in configs).

``ListStorage`` is a complete, simple TopicStorage (a list, with candle
upsert), so engine tests do not depend on the storage engineer's plugins;
``durable=True`` keeps its records in a class-level dict across "restarts".
``Collect`` is a processor that republishes what it reads to another topic.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Iterator, Mapping, Sequence, TypeVar

import msgspec

from gauss import registry
from gauss.core import TopicRecord
from gauss.records import DataFormat, KeyInfo, QueryResult, TopicQuery
from gauss.registry import PluginConfig

_DURABLE: dict[str, tuple[str, list[TopicRecord]]] = {}

T = TypeVar("T")


def built(kind: str, table: Mapping[str, Any], cls: type[T]) -> T:
    """A plugin made through the registry from its table, checked to be a ``cls``."""
    plugin = registry.create(kind, table)
    assert isinstance(plugin, cls), plugin
    return plugin


class ListStorageConfig(PluginConfig):
    durable: bool = False
    fail: bool = False
    dir: str | None = None
    """Accepted so templates can be tested with {suffix} substitution."""


class ListStorage:
    name = "list"
    Config = ListStorageConfig

    @classmethod
    def from_config(cls, config: ListStorageConfig) -> ListStorage:
        return cls(config.durable, config.fail)


    def __init__(self, durable: bool = False, fail: bool = False, fail_appends: Sequence[int] = ()) -> None:
        self.durable = durable
        self.fail = fail
        self.fail_appends = set(fail_appends)
        """Numbers (from 1) of the append calls that fail."""
        self.appends = 0
        self.records: list[TopicRecord] = []
        self.flushed = 0
        self.closed = False
        self._format = DataFormat.ANY
        self._topic = ""

    def open(self, topic: str, data_format: DataFormat) -> tuple[str, int]:
        self._topic = topic
        self._format = data_format
        if self.durable and topic in _DURABLE:
            epoch, records = _DURABLE[topic]
            self.records = records
            return epoch, records[-1].seq if records else 0
        epoch = uuid.uuid4().hex[:8]
        if self.durable:
            _DURABLE[topic] = (epoch, self.records)
        return epoch, 0

    def append(self, records: Sequence[TopicRecord]) -> None:
        self.appends += 1
        if self.fail or self.appends in self.fail_appends:
            raise OSError("disk on fire")
        if self._format.upsert:
            for record in records:
                self.records = [r for r in self.records if (r.key, r.ts_ms) != (record.key, record.ts_ms)]
                self.records.append(record)
            if self.durable:
                _DURABLE[self._topic] = (_DURABLE[self._topic][0], self.records)
        else:
            self.records.extend(records)

    def query(self, query: TopicQuery) -> QueryResult:
        matched = sorted((r for r in self.records if query.matches(r)), key=lambda r: (r.ts_ms, r.seq))
        truncated = len(matched) > query.limit
        return QueryResult(matched[-query.limit :], truncated)

    def replay(self, since_seq: int = 0) -> Iterator[TopicRecord]:
        return iter(sorted((r for r in self.records if r.seq > since_seq), key=lambda r: r.seq))

    def latest(self, key: str | None = None) -> list[TopicRecord]:
        best: dict[str, TopicRecord] = {}
        for r in self.records:
            if key is not None and r.key != key:
                continue
            if r.key not in best or (r.ts_ms, r.seq) >= (best[r.key].ts_ms, best[r.key].seq):
                best[r.key] = r
        return sorted(best.values(), key=lambda r: (r.ts_ms, r.seq))

    def keys(self) -> list[KeyInfo]:
        info: dict[str, list[int]] = {}
        for r in self.records:
            entry = info.setdefault(r.key, [0, 0])
            entry[0] += 1
            entry[1] = max(entry[1], r.ts_ms)
        return [KeyInfo(k, n, ts) for k, (n, ts) in sorted(info.items())]

    def count(self) -> int:
        return len(self.records)

    def bounds(self) -> tuple[int, int]:
        if not self.records:
            return (0, 0)
        seqs = [r.seq for r in self.records]
        return (min(seqs), max(seqs))

    def flush(self) -> None:
        self.flushed += 1

    def close(self) -> None:
        self.closed = True




class RepublishConfig(PluginConfig):
    target: str
    flush_interval: Annotated[float, msgspec.Meta(ge=0.01)] | None = None


class Republish:
    """Processor: publishes every record it reads to ``target`` (data unchanged)."""

    name = "republish"
    Config = RepublishConfig

    @classmethod
    def from_config(cls, config: RepublishConfig) -> Republish:
        return cls(config.target, config.flush_interval)

    def __init__(self, target: str, flush_interval: float | None) -> None:
        self.target = target
        self.flush_interval = flush_interval
        self.flushes = 0
        self.stopped = False

    def start(self, context: Any) -> None:
        pass

    def process(self, topic: str, records: Sequence[TopicRecord], context: Any) -> None:
        context.publish(self.target, [TopicRecord(r.ts_ms, r.key, r.data) for r in records])

    def flush(self, context: Any) -> None:
        self.flushes += 1

    def stop(self, context: Any) -> None:
        self.stopped = True




# --- helpers for tests that talk to a hub over real sockets ---------------------------

import json as _json  # noqa: E402
import time as _time  # noqa: E402

import gevent.socket as _gsocket  # noqa: E402


def quote(symbol: str, bid: float, ask: float, ts_ms: int, **extra: Any) -> dict[str, Any]:
    return {"symbol": symbol, "bid": bid, "ask": ask, "bid_size": 1.0, "ask_size": 2.0, "ts_ms": ts_ms, **extra}


def lines(quotes: Sequence[dict[str, Any]]) -> bytes:
    return b"".join(_json.dumps(q).encode() + b"\n" for q in quotes)


def connect(address: tuple[str, int]) -> Any:
    return _gsocket.create_connection(address, timeout=10)


def read_lines(sock: Any, count: int, timeout: float = 20.0) -> list[bytes]:
    """Read until ``count`` complete lines arrived (fails after ``timeout`` seconds)."""
    buffer = b""
    NL = b"\n"
    deadline = _time.monotonic() + timeout
    while buffer.count(b"\n") < count:
        remaining = deadline - _time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"only {buffer.count(NL)} of {count} lines within {timeout}s")
        sock.settimeout(remaining)
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise AssertionError(f"connection closed after {buffer.count(NL)} of {count} lines")
        buffer += chunk
    return buffer.split(b"\n")[:count]


def send_until_cut(sock: Any, data: bytes, timeout: float = 10.0, between: Any = None) -> int:
    """Send ``data`` again and again until the server hangs up; the number of sends (fails after ``timeout``).

    ``between()``, when given, runs after every send (to probe the server meanwhile).
    """
    sends = 0
    deadline = _time.monotonic() + timeout
    while _time.monotonic() < deadline:
        try:
            sock.sendall(data)
        except OSError:
            return sends
        sends += 1
        if between is not None:
            between()
    raise AssertionError(f"still connected after {sends} sends in {timeout} s")
