"""Pure-Python twins of the compiled kernels in ``_core.pyx``.

They are the test oracle for the Cython build and the fallback where it is
not available. Behaviour, names and signatures match ``_core.pyx`` exactly;
``gauss.core`` picks one of the two, once, at import.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Any, Iterable, Sequence

import numpy as np

from gauss.errors import FrameTooLarge

__all__ = [
    "TopicRecord",
    "LineDecoder",
    "LengthPrefixedDecoder",
    "encode_lines",
    "encode_length_prefixed",
    "RecordRing",
    "QuoteRing",
    "OhlcAggregator",
    "QUOTE_FIELDS",
    "DEFAULT_MAX_FRAME_BYTES",
]

DEFAULT_MAX_FRAME_BYTES = 1 << 20
QUOTE_FIELDS = ("symbol", "bid", "ask", "bid_size", "ask_size", "ts_ms")
_MAX_LENGTH_PREFIX = 0xFFFFFFFF


class TopicRecord:
    """One record of a topic: event time, routing key, payload.

    ``seq`` is 0 until a topic stores the record and numbers it.
    """

    __slots__ = ("ts_ms", "key", "data", "seq")

    def __init__(self, ts_ms: int, key: str, data: Any, seq: int = 0) -> None:
        self.ts_ms = ts_ms
        self.key = key
        self.data = data
        self.seq = seq

    def with_seq(self, seq: int) -> TopicRecord:
        return TopicRecord(self.ts_ms, self.key, self.data, seq)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of SPEC section 1 (``seq`` only once numbered)."""
        if self.seq:
            return {"ts_ms": self.ts_ms, "key": self.key, "data": self.data, "seq": self.seq}
        return {"ts_ms": self.ts_ms, "key": self.key, "data": self.data}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TopicRecord) and type(other).__name__ != "TopicRecord":
            return NotImplemented
        return bool(
            self.ts_ms == other.ts_ms  # type: ignore[attr-defined]
            and self.key == other.key  # type: ignore[attr-defined]
            and self.data == other.data  # type: ignore[attr-defined]
            and self.seq == other.seq  # type: ignore[attr-defined]
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TopicRecord(ts_ms={self.ts_ms!r}, key={self.key!r}, data={self.data!r}, seq={self.seq!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (TopicRecord, (self.ts_ms, self.key, self.data, self.seq))


# --- framing ---------------------------------------------------------------


class LineDecoder:
    """Incremental decoder of ``lines`` framing (SPEC section 2).

    Frames end at ``\\n``; a trailing ``\\r`` is dropped; empty lines are
    skipped (keep-alives). A line longer than ``max_frame_bytes`` raises
    :class:`FrameTooLarge`, also while it is still arriving.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        self.max_frame_bytes = max_frame_bytes
        self._pending = b""

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._pending + bytes(chunk) if self._pending else bytes(chunk)
        lines = data.split(b"\n")
        self._pending = lines.pop()
        limit = self.max_frame_bytes
        frames = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > limit:
                self._pending = b""
                raise FrameTooLarge(f"line of {len(line)} bytes exceeds max_frame_bytes={limit}")
            if line:
                frames.append(line)
        # The pending tail may end in a "\r" that a later "\n" strips, so one
        # byte over the limit is allowed only when it is that "\r".
        size = len(self._pending)
        if size > limit and not (size == limit + 1 and self._pending.endswith(b"\r")):
            self._pending = b""
            raise FrameTooLarge(f"unterminated line of {size} bytes exceeds max_frame_bytes={limit}")
        return frames


class LengthPrefixedDecoder:
    """Incremental decoder of ``length-prefixed`` framing: u32 BE length, payload."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        self.max_frame_bytes = max_frame_bytes
        self._pending = b""

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._pending + bytes(chunk) if self._pending else bytes(chunk)
        frames = []
        pos = 0
        end = len(data)
        limit = self.max_frame_bytes
        while end - pos >= 4:
            size = int.from_bytes(data[pos : pos + 4], "big")
            if size > limit:
                self._pending = b""
                raise FrameTooLarge(f"frame of {size} bytes exceeds max_frame_bytes={limit}")
            if end - pos - 4 < size:
                break
            frames.append(data[pos + 4 : pos + 4 + size])
            pos += 4 + size
        self._pending = data[pos:]
        return frames


def encode_lines(payloads: Sequence[bytes]) -> bytes:
    """Frame a batch of payloads as lines (payloads must not contain ``\\n``)."""
    if not payloads:
        return b""
    for payload in payloads:
        if b"\n" in payload:
            raise ValueError("a lines payload must not contain a newline")
    return b"\n".join(payloads) + b"\n"


def encode_length_prefixed(payloads: Sequence[bytes]) -> bytes:
    """Frame a batch of payloads with u32 big-endian length prefixes."""
    parts = []
    for payload in payloads:
        size = len(payload)
        if size > _MAX_LENGTH_PREFIX:
            raise ValueError("payload too large for a u32 length prefix")
        parts.append(size.to_bytes(4, "big"))
        parts.append(bytes(payload))
    return b"".join(parts)


# --- ring buffers ----------------------------------------------------------


def _select(
    candidates: Iterable[tuple[int, int, int]],
    limit: int,
) -> tuple[list[int], bool]:
    """Pick the most recent ``limit`` of (ts_ms, seq, slot) and return slots ascending."""
    ordered = sorted(candidates)
    truncated = len(ordered) > limit
    if truncated:
        ordered = ordered[len(ordered) - limit :]
    return [slot for _, _, slot in ordered], truncated


class _RingIndex:
    """Slot bookkeeping shared by both ring layouts.

    Slots are written round-robin; ``_by_key`` keeps, per key, the seqs of its
    stored records in arrival order, so a key query touches only its own
    records. A seq maps to a slot as ``(seq - 1) % capacity`` because seqs
    arrive consecutively.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._count = 0
        self._first_seq = 0
        self._last_seq = 0
        self._by_key: dict[str, deque[int]] = {}
        self._keys: list[str | None] = [None] * capacity

    def __len__(self) -> int:
        return self._count

    @property
    def first_seq(self) -> int:
        return self._first_seq

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def _slot(self, seq: int) -> int:
        return (seq - 1) % self.capacity

    def _claim(self, seq: int, key: str) -> int:
        """Reserve the slot for ``seq`` (evicting what it held) and index it."""
        if self._last_seq and seq != self._last_seq + 1:
            raise ValueError(f"seq {seq} does not follow {self._last_seq}")
        if seq < 1:
            raise ValueError(f"seq must be at least 1, got {seq}")
        slot = self._slot(seq)
        old_key = self._keys[slot]
        if old_key is not None:
            old = self._by_key[old_key]
            old.popleft()
            if not old:
                del self._by_key[old_key]
                self._key_gone(old_key)
            self._first_seq += 1
        else:
            self._count += 1
            if not self._first_seq:
                self._first_seq = seq
        self._keys[slot] = key
        bucket = self._by_key.get(key)
        if bucket is None:
            bucket = self._by_key[key] = deque()
        bucket.append(seq)
        self._last_seq = seq
        return slot

    def _key_gone(self, key: str) -> None:
        """Called when the ring no longer holds any record of ``key``."""

    def _candidate_seqs(self, key: str | None, since_seq: int | None) -> Iterable[int]:
        if key is not None:
            seqs: Iterable[int] = self._by_key.get(key, ())
        else:
            seqs = range(self._first_seq, self._last_seq + 1) if self._count else ()
        if since_seq is not None and since_seq >= self._first_seq:
            if key is not None:
                bucket = self._by_key.get(key)
                if not bucket:
                    return ()
                return [s for s in bucket if s > since_seq]
            return range(since_seq + 1, self._last_seq + 1)
        return seqs

    def _match(
        self,
        ts: Sequence[int] | np.ndarray,
        key: str | None,
        from_ms: int | None,
        to_ms: int | None,
        since_seq: int | None,
        limit: int,
    ) -> tuple[list[int], bool]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        cap = self.capacity
        out = []
        for seq in self._candidate_seqs(key, since_seq):
            slot = (seq - 1) % cap
            t = int(ts[slot])
            if (from_ms is None or from_ms <= t) and (to_ms is None or t < to_ms):
                out.append((t, seq, slot))
        return _select(out, limit)

    def _keys_from(self, ts: Sequence[int] | np.ndarray) -> list[tuple[str, int, int]]:
        """``(key, records, last_ts_ms)`` for each key held, sorted by key."""
        cap = self.capacity
        return sorted(
            (key, len(seqs), max(int(ts[(s - 1) % cap]) for s in seqs)) for key, seqs in self._by_key.items()
        )

    def _latest_slots(self, ts: Sequence[int] | np.ndarray, key: str | None) -> list[int]:
        cap = self.capacity
        keys = [key] if key is not None else list(self._by_key)
        slots = []
        for k in keys:
            seqs = self._by_key.get(k)
            if not seqs:
                continue
            best = max(seqs, key=lambda s: (int(ts[(s - 1) % cap]), s))
            slots.append((int(ts[(best - 1) % cap]), best, (best - 1) % cap))
        slots.sort()
        return [slot for _, _, slot in slots]


class RecordRing(_RingIndex):
    """Fixed-capacity store of any records; the oldest is overwritten.

    Records must be appended with consecutive ``seq`` numbers. Queries follow
    SPEC section 4: ``from_ms <= ts_ms < to_ms``, ``seq > since_seq``,
    ascending by ``ts_ms`` (then ``seq``), the most recent ``limit``.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._records: list[TopicRecord | None] = [None] * capacity
        self._ts = [0] * capacity

    def append(self, records: Sequence[TopicRecord]) -> None:
        for record in records:
            slot = self._claim(record.seq, record.key)
            self._records[slot] = record
            self._ts[slot] = record.ts_ms

    def query(
        self,
        key: str | None = None,
        from_ms: int | None = None,
        to_ms: int | None = None,
        since_seq: int | None = None,
        limit: int = 1000,
    ) -> tuple[list[TopicRecord], bool]:
        slots, truncated = self._match(self._ts, key, from_ms, to_ms, since_seq, limit)
        return [self._records[s] for s in slots], truncated  # type: ignore[misc]

    def latest(self, key: str | None = None) -> list[TopicRecord]:
        return [self._records[s] for s in self._latest_slots(self._ts, key)]  # type: ignore[misc]

    def keys(self) -> list[tuple[str, int, int]]:
        return self._keys_from(self._ts)


class QuoteRing(_RingIndex):
    """Columnar ring for quotes: numpy columns, ~52 bytes a quote plus the key.

    Keys are interned once in a symbol table; a slot holds a 4-byte symbol id.
    Query results are rebuilt as :class:`TopicRecord` with the six quote fields.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._sym = np.zeros(capacity, dtype=np.int32)
        self._ts = np.zeros(capacity, dtype=np.int64)
        self._seq = np.zeros(capacity, dtype=np.int64)
        self._bid = np.zeros(capacity, dtype=np.float64)
        self._ask = np.zeros(capacity, dtype=np.float64)
        self._bid_size = np.zeros(capacity, dtype=np.float64)
        self._ask_size = np.zeros(capacity, dtype=np.float64)
        self._symbols: list[str] = []
        self._symbol_ids: dict[str, int] = {}
        self._free_ids: list[int] = []  # ids of keys no longer held, reused first: the table stays bounded

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (the symbol table excluded)."""
        return sum(
            a.nbytes for a in (self._sym, self._ts, self._seq, self._bid, self._ask, self._bid_size, self._ask_size)
        )

    def _symbol_id(self, key: str) -> int:
        sid = self._symbol_ids.get(key)
        if sid is None:
            if self._free_ids:
                sid = self._free_ids.pop()
                self._symbols[sid] = key
            else:
                sid = len(self._symbols)
                self._symbols.append(key)
            self._symbol_ids[key] = sid
        return sid

    def _key_gone(self, key: str) -> None:
        sid = self._symbol_ids.pop(key)
        self._symbols[sid] = ""
        self._free_ids.append(sid)

    def append(self, records: Sequence[TopicRecord]) -> None:
        """Append quote records; ``data`` must hold bid, ask, bid_size, ask_size."""
        for record in records:
            data = record.data
            # Read every field before claiming a slot: a bad record leaves the ring as it was.
            values = (float(data["bid"]), float(data["ask"]), float(data["bid_size"]), float(data["ask_size"]))
            slot = self._claim(record.seq, record.key)
            self._sym[slot] = self._symbol_id(record.key)
            self._ts[slot] = record.ts_ms
            self._seq[slot] = record.seq
            self._bid[slot], self._ask[slot], self._bid_size[slot], self._ask_size[slot] = values

    def append_columns(
        self,
        first_seq: int,
        keys: Sequence[str],
        ts_ms: Sequence[int] | np.ndarray,
        bid: Sequence[float] | np.ndarray,
        ask: Sequence[float] | np.ndarray,
        bid_size: Sequence[float] | np.ndarray,
        ask_size: Sequence[float] | np.ndarray,
    ) -> None:
        """Append a decoded batch given as columns; seqs are ``first_seq, first_seq+1, ...``."""
        n = len(keys)
        if not (len(ts_ms) == len(bid) == len(ask) == len(bid_size) == len(ask_size) == n):
            raise ValueError("columns differ in length")
        for i in range(n):
            seq = first_seq + i
            slot = self._claim(seq, keys[i])
            self._sym[slot] = self._symbol_id(keys[i])
            self._ts[slot] = ts_ms[i]
            self._seq[slot] = seq
            self._bid[slot] = bid[i]
            self._ask[slot] = ask[i]
            self._bid_size[slot] = bid_size[i]
            self._ask_size[slot] = ask_size[i]

    def _record(self, slot: int) -> TopicRecord:
        key = self._symbols[self._sym[slot]]
        ts = int(self._ts[slot])
        data = {
            "symbol": key,
            "bid": float(self._bid[slot]),
            "ask": float(self._ask[slot]),
            "bid_size": float(self._bid_size[slot]),
            "ask_size": float(self._ask_size[slot]),
            "ts_ms": ts,
        }
        return TopicRecord(ts, key, data, int(self._seq[slot]))

    def query(
        self,
        key: str | None = None,
        from_ms: int | None = None,
        to_ms: int | None = None,
        since_seq: int | None = None,
        limit: int = 1000,
    ) -> tuple[list[TopicRecord], bool]:
        slots, truncated = self._match(self._ts, key, from_ms, to_ms, since_seq, limit)
        return [self._record(s) for s in slots], truncated

    def latest(self, key: str | None = None) -> list[TopicRecord]:
        return [self._record(s) for s in self._latest_slots(self._ts, key)]

    def keys(self) -> list[tuple[str, int, int]]:
        return self._keys_from(self._ts)


# --- OHLC aggregation ------------------------------------------------------


class _Bucket:
    __slots__ = ("start", "open", "high", "low", "close", "ticks", "open_ts", "close_ts")

    def __init__(self, start: int, ts: int, price: float) -> None:
        self.start = start
        self.open = self.high = self.low = self.close = price
        self.ticks = 1
        self.open_ts = self.close_ts = ts

    def add(self, ts: int, price: float) -> None:
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        if ts < self.open_ts:
            self.open_ts = ts
            self.open = price
        if ts >= self.close_ts:
            self.close_ts = ts
            self.close = price
        self.ticks += 1


class OhlcAggregator:
    """Mid-price OHLC candles per (key, timeframe), fed batches of quotes.

    ``timeframes_ms`` lists the candle widths; buckets start at
    ``ts - ts % width`` (UTC-aligned). For each key and timeframe the buckets
    within ``hold_buckets`` widths of the newest one stay open to
    out-of-order quotes; a quote for an older bucket is *late*: it is counted
    in ``late_counts[timeframe_index]`` and reported, never applied.

    Within a bucket, ``open`` is the earliest quote by ``ts_ms`` (the first to
    arrive among equal timestamps) and ``close`` the latest (the last to
    arrive among equal timestamps).
    """

    def __init__(self, timeframes_ms: Sequence[int], hold_buckets: int = 2) -> None:
        if not timeframes_ms:
            raise ValueError("at least one timeframe is needed")
        if any(int(tf) < 1 for tf in timeframes_ms):
            raise ValueError("timeframes must be positive")
        if hold_buckets < 1:
            raise ValueError("hold_buckets must be at least 1")
        self.timeframes_ms = [int(tf) for tf in timeframes_ms]
        self.hold_buckets = hold_buckets
        self.late_counts = [0] * len(self.timeframes_ms)
        # (key, tf_index) -> buckets ascending by start
        self._state: dict[tuple[str, int], list[_Bucket]] = {}
        self._held_keys: set[str] = set()

    def update(
        self,
        keys: Sequence[str],
        ts_ms: Sequence[int] | np.ndarray,
        bids: Sequence[float] | np.ndarray,
        asks: Sequence[float] | np.ndarray,
    ) -> tuple[list[tuple[str, int, int, float, float, float, float, int, bool]], list[tuple[int, int]]]:
        """Apply a batch of quotes given as columns.

        Returns ``(candles, late)``: each candle that changed, once, as
        ``(key, timeframe_ms, start_ms, open, high, low, close, ticks, is_open)``
        where ``is_open`` says the bucket is the newest of its key and
        timeframe; and ``(batch_index, timeframe_index)`` for each late quote.
        """
        n = len(keys)
        if not (len(ts_ms) == len(bids) == len(asks) == n):
            raise ValueError("columns differ in length")
        changed: dict[tuple[str, int, int], _Bucket] = {}
        late: list[tuple[int, int]] = []
        hold = self.hold_buckets
        tfs = self.timeframes_ms
        state = self._state
        for i in range(n):
            key = keys[i]
            ts = int(ts_ms[i])
            price = (float(bids[i]) + float(asks[i])) / 2.0
            for t, width in enumerate(tfs):
                start = ts - ts % width
                buckets = state.get((key, t))
                if buckets is None:
                    bucket = _Bucket(start, ts, price)
                    state[(key, t)] = [bucket]
                    self._held_keys.add(key)
                    changed[(key, t, start)] = bucket
                    continue
                newest = buckets[-1].start
                if start > newest:
                    buckets.append(_Bucket(start, ts, price))
                    floor = start - (hold - 1) * width
                    while buckets[0].start < floor:
                        buckets.pop(0)
                    changed[(key, t, start)] = buckets[-1]
                    continue
                if start < newest - (hold - 1) * width:
                    self.late_counts[t] += 1
                    late.append((i, t))
                    continue
                pos = bisect.bisect_left([b.start for b in buckets], start)
                if pos < len(buckets) and buckets[pos].start == start:
                    buckets[pos].add(ts, price)
                else:
                    buckets.insert(pos, _Bucket(start, ts, price))
                changed[(key, t, start)] = buckets[pos]
        candles = []
        for (key, t, start), b in changed.items():
            is_open = state[(key, t)][-1].start == start
            candles.append((key, tfs[t], start, b.open, b.high, b.low, b.close, b.ticks, is_open))
        return candles, late

    def update_records(
        self, records: Sequence[TopicRecord]
    ) -> tuple[list[tuple[str, int, int, float, float, float, float, int, bool]], list[tuple[int, int]]]:
        """Like :meth:`update`, reading key, ts_ms and data bid/ask of quote records."""
        return self.update(
            [r.key for r in records],
            [r.ts_ms for r in records],
            [r.data["bid"] for r in records],
            [r.data["ask"] for r in records],
        )

    @property
    def key_count(self) -> int:
        """Keys whose buckets are held."""
        return len(self._held_keys)

    def forget(self, key: str) -> bool:
        """Drop every bucket held for ``key`` (True if it had any); its next quote starts afresh."""
        slots = [(key, t) for t in range(len(self.timeframes_ms)) if (key, t) in self._state]
        for slot in slots:
            del self._state[slot]
        self._held_keys.discard(key)
        return bool(slots)

    def candle(self, key: str, timeframe_ms: int, start_ms: int) -> tuple[float, float, float, float, int] | None:
        """The held candle ``(open, high, low, close, ticks)``, or None."""
        t = self.timeframes_ms.index(timeframe_ms)
        for b in self._state.get((key, t), ()):
            if b.start == start_ms:
                return (b.open, b.high, b.low, b.close, b.ticks)
        return None
