# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels: framing, ring buffers, OHLC aggregation, TopicRecord.

Behaviour, names and signatures match the pure-Python twins in
``gauss/_pycore.py`` (the test oracle); ``gauss.core`` picks one of the two,
once, at import. Constants live in the twin and are imported from it.

PERF: inner loops touch only C data: the framing decoders scan the caller's
buffer with ``memchr``; the rings keep per-key doubly linked chains of slots
plus an "inversions" counter (how many neighbours are out of ``ts_ms``
order) so a sorted chain is answered by walking back from its newest record;
the OHLC state is a flat array of C structs indexed by ``key_id * n_tf + t``.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint32_t
from libc.stdlib cimport free, malloc, qsort, realloc
from libc.string cimport memchr, memcpy, memmove

import numpy as np

from gauss._pycore import _MAX_LENGTH_PREFIX, DEFAULT_MAX_FRAME_BYTES, QUOTE_FIELDS
from gauss.errors import FrameTooLarge

cdef enum:
    _NL = 10  # "\n"
    _CR = 13  # "\r"

cdef Py_ssize_t _MAX_PREFIX = _MAX_LENGTH_PREFIX

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


# --- records ---------------------------------------------------------------


@cython.freelist(1024)
cdef class TopicRecord:
    """One record of a topic: event time, routing key, payload.

    ``seq`` is 0 until a topic stores the record and numbers it.
    """

    cdef public object ts_ms
    cdef public object key
    cdef public object data
    cdef public object seq

    def __init__(self, ts_ms, key, data, seq=0):
        self.ts_ms = ts_ms
        self.key = key
        self.data = data
        self.seq = seq

    def with_seq(self, seq):
        return _record(self.ts_ms, self.key, self.data, seq)

    def as_dict(self):
        """The JSON form of SPEC section 1 (``seq`` only once numbered)."""
        if self.seq:
            return {"ts_ms": self.ts_ms, "key": self.key, "data": self.data, "seq": self.seq}
        return {"ts_ms": self.ts_ms, "key": self.key, "data": self.data}

    def __eq__(self, other):
        if not isinstance(other, TopicRecord) and type(other).__name__ != "TopicRecord":
            return NotImplemented
        return (
            self.ts_ms == other.ts_ms
            and self.key == other.key
            and self.data == other.data
            and self.seq == other.seq
        )

    def __ne__(self, other):
        result = self.__eq__(other)
        if result is NotImplemented:
            return result
        return not result

    __hash__ = None

    def __repr__(self):
        return f"TopicRecord(ts_ms={self.ts_ms!r}, key={self.key!r}, data={self.data!r}, seq={self.seq!r})"

    def __reduce__(self):
        return (TopicRecord, (self.ts_ms, self.key, self.data, self.seq))


cdef inline TopicRecord _record(object ts_ms, object key, object data, object seq):
    """Build a record without parsing ``__init__`` arguments (hot path)."""
    cdef TopicRecord record = TopicRecord.__new__(TopicRecord)
    record.ts_ms = ts_ms
    record.key = key
    record.data = data
    record.seq = seq
    return record


# --- framing ---------------------------------------------------------------


cdef class _Pending:
    """A growable byte buffer with a hard size limit (the partial frame)."""

    cdef unsigned char* buf
    cdef Py_ssize_t size
    cdef Py_ssize_t alloc
    cdef Py_ssize_t limit

    def __cinit__(self, Py_ssize_t limit):
        self.buf = NULL
        self.size = 0
        self.alloc = 0
        self.limit = limit

    def __dealloc__(self):
        free(self.buf)

    cdef int extend(self, const unsigned char* data, Py_ssize_t n) except -1:
        cdef Py_ssize_t need = self.size + n
        cdef Py_ssize_t grow
        cdef unsigned char* fresh
        if need > self.limit:
            raise FrameTooLarge(f"buffered frame of {need} bytes exceeds the decoder limit")
        if need > self.alloc:
            grow = max(need, min(self.alloc * 2, self.limit), 256)
            fresh = <unsigned char*>realloc(self.buf, grow)
            if fresh == NULL:
                raise MemoryError()
            self.buf = fresh
            self.alloc = grow
        if n:
            memcpy(self.buf + self.size, data, n)
        self.size = need
        return 0

    cdef void clear(self):
        self.size = 0
        if self.alloc > 65536:
            # NOTE: give a large buffer back once its frame is done, so an idle
            # connection that once saw a big frame does not keep holding it.
            free(self.buf)
            self.buf = NULL
            self.alloc = 0


cdef class LineDecoder:
    """Incremental decoder of ``lines`` framing (SPEC section 2).

    Frames end at ``\\n``; a trailing ``\\r`` is dropped; empty lines are
    skipped (keep-alives). A line longer than ``max_frame_bytes`` raises
    :class:`FrameTooLarge`, also while it is still arriving.
    """

    cdef readonly Py_ssize_t max_frame_bytes
    cdef _Pending _pending

    def __init__(self, Py_ssize_t max_frame_bytes=DEFAULT_MAX_FRAME_BYTES):
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        self.max_frame_bytes = max_frame_bytes
        # The tail may hold one extra byte: a "\r" a later "\n" strips.
        self._pending = _Pending(max_frame_bytes + 1)

    @property
    def buffered(self):
        return self._pending.size

    def feed(self, chunk):
        cdef Py_buffer view
        PyObject_GetBuffer(chunk, &view, PyBUF_SIMPLE)
        try:
            return self._feed(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef inline int _check_tail(self, Py_ssize_t size, unsigned char last) except -1:
        cdef Py_ssize_t limit = self.max_frame_bytes
        if size > limit and not (size == limit + 1 and last == _CR):
            self._pending.clear()
            raise FrameTooLarge(f"unterminated line of {size} bytes exceeds max_frame_bytes={limit}")
        return 0

    cdef inline int _too_large(self, Py_ssize_t size) except -1:
        self._pending.clear()
        raise FrameTooLarge(f"line of {size} bytes exceeds max_frame_bytes={self.max_frame_bytes}")

    cdef list _feed(self, const unsigned char* data, Py_ssize_t n):
        cdef list frames = []
        cdef Py_ssize_t limit = self.max_frame_bytes
        cdef Py_ssize_t pos = 0, end, length, head, total
        cdef const unsigned char* nl
        cdef _Pending pending = self._pending
        cdef bytes frame
        cdef char* out
        if n == 0:
            return frames
        if pending.size:
            nl = <const unsigned char*>memchr(data, _NL, n)
            if nl == NULL:
                self._check_tail(pending.size + n, data[n - 1])
                pending.extend(data, n)
                return frames
            # The line began in an earlier chunk: pending + data[:head].
            head = nl - data
            total = pending.size + head
            if head:
                if data[head - 1] == _CR:
                    total -= 1
            elif pending.buf[pending.size - 1] == _CR:
                total -= 1
            if total > limit:
                self._too_large(total)
            if total:
                frame = PyBytes_FromStringAndSize(NULL, total)
                out = PyBytes_AS_STRING(frame)
                if total <= pending.size:
                    memcpy(out, pending.buf, total)
                else:
                    memcpy(out, pending.buf, pending.size)
                    memcpy(out + pending.size, data, total - pending.size)
                frames.append(frame)
            pending.clear()
            pos = head + 1
        while pos < n:
            nl = <const unsigned char*>memchr(data + pos, _NL, n - pos)
            if nl == NULL:
                break
            end = nl - data
            length = end - pos
            if length and data[end - 1] == _CR:
                length -= 1
            if length > limit:
                self._too_large(length)
            if length:
                frames.append(PyBytes_FromStringAndSize(<const char*>data + pos, length))
            pos = end + 1
        if pos < n:
            self._check_tail(n - pos, data[n - 1])
            pending.extend(data + pos, n - pos)
        return frames


cdef inline uint32_t _read_u32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef class LengthPrefixedDecoder:
    """Incremental decoder of ``length-prefixed`` framing: u32 BE length, payload."""

    cdef readonly Py_ssize_t max_frame_bytes
    cdef _Pending _pending

    def __init__(self, Py_ssize_t max_frame_bytes=DEFAULT_MAX_FRAME_BYTES):
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        self.max_frame_bytes = max_frame_bytes
        self._pending = _Pending(max_frame_bytes + 4)

    @property
    def buffered(self):
        return self._pending.size

    def feed(self, chunk):
        cdef Py_buffer view
        PyObject_GetBuffer(chunk, &view, PyBUF_SIMPLE)
        try:
            return self._feed(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef inline int _check_size(self, Py_ssize_t size) except -1:
        if size > self.max_frame_bytes:
            self._pending.clear()
            raise FrameTooLarge(f"frame of {size} bytes exceeds max_frame_bytes={self.max_frame_bytes}")
        return 0

    cdef list _feed(self, const unsigned char* data, Py_ssize_t n):
        cdef list frames = []
        cdef Py_ssize_t pos = 0, take, size
        cdef _Pending pending = self._pending
        if pending.size:
            # Finish the frame that began in an earlier chunk.
            if pending.size < 4:
                take = min(4 - pending.size, n)
                pending.extend(data, take)
                pos = take
                if pending.size < 4:
                    return frames
            size = _read_u32(pending.buf)
            self._check_size(size)
            take = min(4 + size - pending.size, n - pos)
            pending.extend(data + pos, take)
            pos += take
            if pending.size < 4 + size:
                return frames
            frames.append(PyBytes_FromStringAndSize(<const char*>pending.buf + 4, size))
            pending.clear()
        while n - pos >= 4:
            size = _read_u32(data + pos)
            self._check_size(size)
            if n - pos - 4 < size:
                break
            frames.append(PyBytes_FromStringAndSize(<const char*>data + pos + 4, size))
            pos += 4 + size
        if pos < n:
            pending.extend(data + pos, n - pos)
        return frames


cdef list _as_bytes_list(object payloads):
    """The payloads as a list of ``bytes`` (bytes-like items are copied once)."""
    cdef list out = list(payloads)
    cdef Py_ssize_t i
    for i in range(len(out)):
        if type(out[i]) is not bytes:
            out[i] = bytes(out[i])
    return out


def encode_lines(payloads):
    """Frame a batch of payloads as lines (payloads must not contain ``\\n``)."""
    cdef list items = _as_bytes_list(payloads)
    cdef Py_ssize_t total = 0, size
    cdef bytes payload, result
    cdef char* out
    cdef const char* src
    if not items:
        return b""
    for payload in items:
        size = PyBytes_GET_SIZE(payload)
        if size and memchr(PyBytes_AS_STRING(payload), _NL, size) != NULL:
            raise ValueError("a lines payload must not contain a newline")
        total += size + 1
    result = PyBytes_FromStringAndSize(NULL, total)
    out = PyBytes_AS_STRING(result)
    for payload in items:
        size = PyBytes_GET_SIZE(payload)
        memcpy(out, PyBytes_AS_STRING(payload), size)
        out[size] = _NL
        out += size + 1
    return result


def encode_length_prefixed(payloads):
    """Frame a batch of payloads with u32 big-endian length prefixes."""
    cdef list items = _as_bytes_list(payloads)
    cdef Py_ssize_t total = 0, size
    cdef bytes payload, result
    cdef unsigned char* out
    for payload in items:
        size = PyBytes_GET_SIZE(payload)
        if size > _MAX_PREFIX:
            raise ValueError("payload too large for a u32 length prefix")
        total += size + 4
    result = PyBytes_FromStringAndSize(NULL, total)
    out = <unsigned char*>PyBytes_AS_STRING(result)
    for payload in items:
        size = PyBytes_GET_SIZE(payload)
        out[0] = (size >> 24) & 0xFF
        out[1] = (size >> 16) & 0xFF
        out[2] = (size >> 8) & 0xFF
        out[3] = size & 0xFF
        memcpy(out + 4, PyBytes_AS_STRING(payload), size)
        out += size + 4
    return result


# --- ring buffers ----------------------------------------------------------


ctypedef struct _Match:
    int64_t ts
    int64_t seq


cdef int _cmp_match(const void* a, const void* b) noexcept nogil:
    cdef const _Match* x = <const _Match*>a
    cdef const _Match* y = <const _Match*>b
    if x.ts != y.ts:
        return -1 if x.ts < y.ts else 1
    if x.seq != y.seq:
        return -1 if x.seq < y.seq else 1
    return 0


cdef class _RingIndex:
    """Slot bookkeeping shared by both ring layouts.

    Slots are written round-robin, so ``seq`` maps to slot
    ``(seq - 1) % capacity``. Each key has an id and a chain of its slots
    (``_next``/``_prev``, oldest to newest); an evicted slot is always the
    head of its key's chain. ``_inv`` / ``_kinv`` count neighbours out of
    ``ts_ms`` order in seq order / in each chain: when zero, (ts, seq) order
    is seq order and a query walks back from the newest record and stops as
    soon as it has ``limit`` + 1 matches.
    """

    cdef readonly Py_ssize_t capacity
    cdef Py_ssize_t _count
    cdef int64_t _first_seq
    cdef int64_t _last_seq
    cdef int64_t _inv
    cdef Py_ssize_t _last_slot
    # per slot (numpy-owned, so nbytes can report them)
    cdef object _ts_arr, _kid_arr, _next_arr, _prev_arr
    cdef int64_t* _ts
    cdef int32_t* _kid
    cdef int32_t* _next
    cdef int32_t* _prev
    # per key id (C arrays, grown on demand)
    cdef int32_t* _head
    cdef int32_t* _tail
    cdef int64_t* _kcount
    cdef int64_t* _kinv
    cdef Py_ssize_t _kalloc
    cdef dict _key_ids
    cdef list _key_names
    cdef list _free_ids
    # key lookup cache: consecutive records often share the key object
    cdef object _last_key
    cdef int32_t _last_kid

    def __cinit__(self, *args, **kwargs):
        self._head = NULL
        self._tail = NULL
        self._kcount = NULL
        self._kinv = NULL
        self._kalloc = 0

    def __dealloc__(self):
        free(self._head)
        free(self._tail)
        free(self._kcount)
        free(self._kinv)

    def __init__(self, Py_ssize_t capacity):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if capacity > 0x7FFFFFFF:
            raise ValueError("capacity must be below 2**31")
        self.capacity = capacity
        self._count = 0
        self._first_seq = 0
        self._last_seq = 0
        self._inv = 0
        self._ts_arr = np.zeros(capacity, dtype=np.int64)
        self._kid_arr = np.zeros(capacity, dtype=np.int32)
        self._next_arr = np.full(capacity, -1, dtype=np.int32)
        self._prev_arr = np.full(capacity, -1, dtype=np.int32)
        self._ts = <int64_t*>_data_ptr(self._ts_arr)
        self._kid = <int32_t*>_data_ptr(self._kid_arr)
        self._next = <int32_t*>_data_ptr(self._next_arr)
        self._prev = <int32_t*>_data_ptr(self._prev_arr)
        self._key_ids = {}
        self._key_names = []
        self._free_ids = []
        self._last_key = None
        self._last_kid = -1

    def __len__(self):
        return self._count

    @property
    def first_seq(self):
        return self._first_seq

    @property
    def last_seq(self):
        return self._last_seq

    cdef int _grow_keys(self) except -1:
        cdef Py_ssize_t n = max(16, self._kalloc * 2)
        cdef int32_t* head = <int32_t*>realloc(self._head, n * sizeof(int32_t))
        if head == NULL:
            raise MemoryError()
        self._head = head
        cdef int32_t* tail = <int32_t*>realloc(self._tail, n * sizeof(int32_t))
        if tail == NULL:
            raise MemoryError()
        self._tail = tail
        cdef int64_t* kcount = <int64_t*>realloc(self._kcount, n * sizeof(int64_t))
        if kcount == NULL:
            raise MemoryError()
        self._kcount = kcount
        cdef int64_t* kinv = <int64_t*>realloc(self._kinv, n * sizeof(int64_t))
        if kinv == NULL:
            raise MemoryError()
        self._kinv = kinv
        self._kalloc = n
        return 0

    cdef inline int32_t _find_key(self, object key) except -2:
        """The id of ``key``, or -1 when the ring holds none of its records."""
        cdef PyObject* found = PyDict_GetItem(self._key_ids, key)
        if found == NULL:
            return -1
        return <int32_t><object>found

    cdef inline int32_t _key_id(self, object key) except -1:
        """The id of ``key``, creating one (with an empty chain) if needed."""
        cdef int32_t kid
        cdef PyObject* found
        if key is self._last_key and self._last_kid >= 0:
            return self._last_kid
        found = PyDict_GetItem(self._key_ids, key)
        if found != NULL:
            kid = <int32_t><object>found
        else:
            if self._free_ids:
                kid = self._free_ids.pop()
                self._key_names[kid] = key
            else:
                kid = len(self._key_names)
                if kid >= self._kalloc:
                    self._grow_keys()
                self._key_names.append(key)
            self._key_ids[key] = kid
            self._head[kid] = -1
            self._tail[kid] = -1
            self._kcount[kid] = 0
            self._kinv[kid] = 0
        self._last_key = key
        self._last_kid = kid
        return kid

    cdef inline int _check_seq(self, int64_t seq) except -1:
        if self._last_seq and seq != self._last_seq + 1:
            raise ValueError(f"seq {seq} does not follow {self._last_seq}")
        if seq < 1:
            raise ValueError(f"seq must be at least 1, got {seq}")
        return 0

    cdef inline Py_ssize_t _evict_for(self, int64_t seq) except -1:
        """Free the slot of ``seq`` (dropping the oldest record if full); return it."""
        cdef Py_ssize_t cap = self.capacity
        cdef Py_ssize_t slot
        cdef int32_t old, nxt
        if self._count == 0:
            self._first_seq = seq
            return (seq - 1) % cap
        # PERF: seqs are consecutive, so the slot follows the last one (no division).
        slot = self._last_slot + 1
        if slot == cap:
            slot = 0
        if self._count < cap:
            return slot
        # Full: the slot holds the oldest record (first_seq), the head of its chain.
        old = self._kid[slot]
        nxt = self._next[slot]
        if nxt >= 0:
            self._prev[nxt] = -1
            if self._ts[nxt] < self._ts[slot]:
                self._kinv[old] -= 1
            self._head[old] = nxt
        else:
            self._head[old] = -1
            self._tail[old] = -1
        self._kcount[old] -= 1
        if self._kcount[old] == 0:
            self._release_key(old)
        if cap > 1 and self._ts[slot + 1 if slot + 1 < cap else 0] < self._ts[slot]:
            self._inv -= 1
        self._first_seq += 1
        self._count -= 1
        return slot

    cdef int _release_key(self, int32_t kid) except -1:
        name = self._key_names[kid]
        del self._key_ids[name]
        self._key_names[kid] = None
        self._free_ids.append(kid)
        if self._last_kid == kid:
            self._last_key = None
            self._last_kid = -1
        return 0

    cdef inline void _link(self, Py_ssize_t slot, int32_t kid, int64_t ts, int64_t seq) noexcept:
        """Store ``ts`` and the key of ``seq`` in its (free) slot and chain it."""
        cdef int32_t tail = self._tail[kid]
        if self._count > 0 and ts < self._ts[self._last_slot]:
            self._inv += 1
        self._ts[slot] = ts
        self._kid[slot] = kid
        self._next[slot] = -1
        self._prev[slot] = tail
        if tail >= 0:
            self._next[tail] = <int32_t>slot
            if ts < self._ts[tail]:
                self._kinv[kid] += 1
        else:
            self._head[kid] = <int32_t>slot
        self._tail[kid] = <int32_t>slot
        self._kcount[kid] += 1
        self._count += 1
        self._last_seq = seq
        self._last_slot = slot

    cdef inline int64_t _seq_of(self, Py_ssize_t slot) noexcept:
        cdef Py_ssize_t cap = self.capacity
        cdef Py_ssize_t first_slot = (self._first_seq - 1) % cap
        return self._first_seq + (slot - first_slot + cap) % cap

    cdef tuple _match(self, object key, object from_ms, object to_ms, object since_seq, Py_ssize_t limit):
        """Slots of the most recent ``limit`` matches, ascending by (ts, seq), and truncated."""
        cdef bint has_lo = from_ms is not None
        cdef bint has_hi = to_ms is not None
        cdef bint has_since = since_seq is not None
        cdef int64_t lo = 0, hi = 0, since = 0
        cdef int32_t kid = -1
        cdef bint by_key = key is not None
        cdef bint ordered
        cdef Py_ssize_t cap = self.capacity, slot, found = 0, keep, i, avail
        cdef int64_t seq, t, a, b, mid
        cdef _Match* matches
        cdef list slots = []
        cdef bint truncated = False
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if has_lo:
            lo = from_ms
        if has_hi:
            hi = to_ms
        if has_since:
            since = since_seq
        if self._count == 0:
            return slots, False
        if by_key:
            kid = self._find_key(key)
            if kid < 0:
                return slots, False
            avail = self._kcount[kid]
            ordered = self._kinv[kid] == 0
            slot = self._tail[kid]
        else:
            avail = self._count
            ordered = self._inv == 0
            seq = self._last_seq
            if ordered and has_hi:
                # ts ascends with seq: bisect for the newest record with ts < hi.
                a = self._first_seq
                b = self._last_seq + 1
                while a < b:
                    mid = a + (b - a) // 2
                    if self._ts[(mid - 1) % cap] < hi:
                        a = mid + 1
                    else:
                        b = mid
                seq = a - 1
                avail = seq - self._first_seq + 1
                if avail <= 0:
                    return slots, False
            slot = (seq - 1) % cap
        if ordered:
            avail = min(avail, limit + 1)
        matches = <_Match*>malloc(max(avail, 1) * sizeof(_Match))
        if matches == NULL:
            raise MemoryError()
        try:
            # Walk from the newest record back to the oldest.
            while True:
                seq = self._seq_of(slot)
                if has_since and seq <= since:
                    break
                t = self._ts[slot]
                if has_lo and t < lo:
                    if ordered:
                        break
                elif not (has_hi and t >= hi):
                    matches[found].ts = t
                    matches[found].seq = seq
                    found += 1
                    if ordered and found > limit:
                        break
                if by_key:
                    slot = self._prev[slot]
                    if slot < 0:
                        break
                else:
                    if seq == self._first_seq:
                        break
                    slot = (slot + cap - 1) % cap
            if ordered:
                # Matches are newest first: keep the first ``limit``, reversed.
                truncated = found > limit
                keep = min(found, limit)
                for i in range(keep - 1, -1, -1):
                    slots.append((matches[i].seq - 1) % cap)
            else:
                qsort(matches, found, sizeof(_Match), _cmp_match)
                truncated = found > limit
                for i in range(found - limit if truncated else 0, found):
                    slots.append((matches[i].seq - 1) % cap)
        finally:
            free(matches)
        return slots, truncated

    cdef Py_ssize_t _latest_of(self, int32_t kid) noexcept:
        """The slot of the greatest (ts, seq) of key ``kid``."""
        cdef Py_ssize_t slot = self._tail[kid], best = slot
        if self._kinv[kid] == 0:
            return best
        slot = self._prev[slot]
        while slot >= 0:
            # Walking back, seq falls: a tie on ts keeps the newer ``best``.
            if self._ts[slot] > self._ts[best]:
                best = slot
            slot = self._prev[slot]
        return best

    cdef list _latest_slots(self, object key):
        cdef int32_t kid
        cdef list found = []
        cdef Py_ssize_t slot
        if key is not None:
            kid = self._find_key(key)
            if kid < 0:
                return []
            return [self._latest_of(kid)]
        for kid in range(len(self._key_names)):
            if self._key_names[kid] is not None:
                slot = self._latest_of(kid)
                found.append((self._ts[slot], self._seq_of(slot), slot))
        found.sort()
        return [entry[2] for entry in found]

    def keys(self):
        """``(key, records, last_ts_ms)`` for each key held, sorted by key."""
        cdef int32_t kid
        cdef list out = []
        for kid in range(len(self._key_names)):
            name = self._key_names[kid]
            if name is not None:
                out.append((name, self._kcount[kid], self._ts[self._latest_of(kid)]))
        out.sort()
        return out


cdef inline void* _data_ptr(object array) except NULL:
    """The data pointer of a C-contiguous numpy array (kept alive by its owner)."""
    return <void*><size_t>array.ctypes.data


cdef class RecordRing(_RingIndex):
    """Fixed-capacity store of any records; the oldest is overwritten.

    Records must be appended with consecutive ``seq`` numbers. Queries follow
    SPEC section 4: ``from_ms <= ts_ms < to_ms``, ``seq > since_seq``,
    ascending by ``ts_ms`` (then ``seq``), the most recent ``limit``.
    """

    cdef list _records

    def __init__(self, Py_ssize_t capacity):
        _RingIndex.__init__(self, capacity)
        self._records = [None] * capacity

    def append(self, records):
        cdef Py_ssize_t slot
        cdef int64_t seq, ts
        cdef int32_t kid
        for record in records:
            if type(record) is TopicRecord:
                seq = (<TopicRecord>record).seq
                ts = (<TopicRecord>record).ts_ms
                key = (<TopicRecord>record).key
            else:
                seq = record.seq
                ts = record.ts_ms
                key = record.key
            self._check_seq(seq)
            slot = self._evict_for(seq)
            kid = self._key_id(key)
            self._link(slot, kid, ts, seq)
            self._records[slot] = record

    def query(self, key=None, from_ms=None, to_ms=None, since_seq=None, Py_ssize_t limit=1000):
        slots, truncated = self._match(key, from_ms, to_ms, since_seq, limit)
        records = self._records
        return [records[s] for s in slots], truncated

    def latest(self, key=None):
        records = self._records
        return [records[s] for s in self._latest_slots(key)]


cdef class QuoteRing(_RingIndex):
    """Columnar ring for quotes: numpy columns, 52 bytes a quote key included.

    A slot holds a 4-byte key id (interned in a key table), ts, the four
    prices and sizes, and two 4-byte links of its key's chain. Query results
    are rebuilt as :class:`TopicRecord` with the six quote fields.
    """

    cdef object _bid_arr, _ask_arr, _bid_size_arr, _ask_size_arr
    cdef double* _bid
    cdef double* _ask
    cdef double* _bid_size
    cdef double* _ask_size

    def __init__(self, Py_ssize_t capacity):
        _RingIndex.__init__(self, capacity)
        self._bid_arr = np.zeros(capacity, dtype=np.float64)
        self._ask_arr = np.zeros(capacity, dtype=np.float64)
        self._bid_size_arr = np.zeros(capacity, dtype=np.float64)
        self._ask_size_arr = np.zeros(capacity, dtype=np.float64)
        self._bid = <double*>_data_ptr(self._bid_arr)
        self._ask = <double*>_data_ptr(self._ask_arr)
        self._bid_size = <double*>_data_ptr(self._bid_size_arr)
        self._ask_size = <double*>_data_ptr(self._ask_size_arr)

    @property
    def nbytes(self):
        """Bytes held by the per-slot columns (the key table excluded)."""
        return sum(
            a.nbytes
            for a in (
                self._kid_arr, self._ts_arr, self._next_arr, self._prev_arr,
                self._bid_arr, self._ask_arr, self._bid_size_arr, self._ask_size_arr,
            )
        )

    def append(self, records):
        """Append quote records; ``data`` must hold bid, ask, bid_size, ask_size."""
        cdef Py_ssize_t slot
        cdef int64_t seq, ts
        cdef int32_t kid
        cdef double bid, ask, bid_size, ask_size
        for record in records:
            if type(record) is TopicRecord:
                seq = (<TopicRecord>record).seq
                ts = (<TopicRecord>record).ts_ms
                key = (<TopicRecord>record).key
                data = (<TopicRecord>record).data
            else:
                seq = record.seq
                ts = record.ts_ms
                key = record.key
                data = record.data
            # Read every field before claiming a slot: a bad record leaves the ring as it was.
            bid = data["bid"]
            ask = data["ask"]
            bid_size = data["bid_size"]
            ask_size = data["ask_size"]
            self._check_seq(seq)
            slot = self._evict_for(seq)
            kid = self._key_id(key)
            self._link(slot, kid, ts, seq)
            self._bid[slot] = bid
            self._ask[slot] = ask
            self._bid_size[slot] = bid_size
            self._ask_size[slot] = ask_size

    def append_columns(self, first_seq, keys, ts_ms, bid, ask, bid_size, ask_size):
        """Append a decoded batch given as columns; seqs are ``first_seq, first_seq+1, ...``."""
        cdef Py_ssize_t n = len(keys), i, slot
        cdef int64_t seq
        cdef int32_t kid
        if not (len(ts_ms) == len(bid) == len(ask) == len(bid_size) == len(ask_size) == n):
            raise ValueError("columns differ in length")
        if n == 0:
            return
        cdef const int64_t[::1] ts_v = np.ascontiguousarray(ts_ms, dtype=np.int64)
        cdef const double[::1] bid_v = np.ascontiguousarray(bid, dtype=np.float64)
        cdef const double[::1] ask_v = np.ascontiguousarray(ask, dtype=np.float64)
        cdef const double[::1] bid_size_v = np.ascontiguousarray(bid_size, dtype=np.float64)
        cdef const double[::1] ask_size_v = np.ascontiguousarray(ask_size, dtype=np.float64)
        seq = first_seq
        self._check_seq(seq)
        if not isinstance(keys, list):
            keys = list(keys)
        cdef list key_list = keys
        for i in range(n):
            slot = self._evict_for(seq)
            kid = self._key_id(key_list[i])
            self._link(slot, kid, ts_v[i], seq)
            self._bid[slot] = bid_v[i]
            self._ask[slot] = ask_v[i]
            self._bid_size[slot] = bid_size_v[i]
            self._ask_size[slot] = ask_size_v[i]
            seq += 1

    cdef TopicRecord _quote(self, Py_ssize_t slot):
        key = self._key_names[self._kid[slot]]
        ts = self._ts[slot]
        data = {
            "symbol": key,
            "bid": self._bid[slot],
            "ask": self._ask[slot],
            "bid_size": self._bid_size[slot],
            "ask_size": self._ask_size[slot],
            "ts_ms": ts,
        }
        return _record(ts, key, data, self._seq_of(slot))

    def query(self, key=None, from_ms=None, to_ms=None, since_seq=None, Py_ssize_t limit=1000):
        slots, truncated = self._match(key, from_ms, to_ms, since_seq, limit)
        return [self._quote(s) for s in slots], truncated

    def latest(self, key=None):
        return [self._quote(s) for s in self._latest_slots(key)]


# --- OHLC aggregation ------------------------------------------------------


ctypedef struct _Bucket:
    int64_t start
    int64_t open_ts
    int64_t close_ts
    int64_t ticks
    double open
    double high
    double low
    double close
    int64_t gen  # the batch that last changed it
    int64_t chg  # its entry in that batch's change list


ctypedef struct _Change:
    int64_t state
    int64_t start
    bint final  # evicted during the batch: ``snap`` holds its last values
    _Bucket snap


cdef inline void _bucket_init(_Bucket* b, int64_t start, int64_t ts, double price) noexcept nogil:
    b.start = start
    b.open = price
    b.high = price
    b.low = price
    b.close = price
    b.ticks = 1
    b.open_ts = ts
    b.close_ts = ts
    b.gen = 0
    b.chg = -1


cdef inline void _bucket_add(_Bucket* b, int64_t ts, double price) noexcept nogil:
    if price > b.high:
        b.high = price
    if price < b.low:
        b.low = price
    if ts < b.open_ts:
        b.open_ts = ts
        b.open = price
    if ts >= b.close_ts:
        b.close_ts = ts
        b.close = price
    b.ticks += 1


cdef class OhlcAggregator:
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

    cdef readonly list timeframes_ms
    cdef readonly Py_ssize_t hold_buckets
    cdef Py_ssize_t _ntf
    cdef int64_t* _widths
    cdef int64_t* _late
    cdef dict _key_ids
    cdef list _key_names
    cdef list _free_ids  # ids of forgotten keys, reused before new ones
    cdef Py_ssize_t _kalloc
    cdef _Bucket* _buckets  # [key][tf][hold], ascending by start
    cdef int32_t* _nb  # buckets held per (key, tf)
    cdef _Change* _changes
    cdef Py_ssize_t _nchanges
    cdef Py_ssize_t _challoc
    cdef int64_t _gen

    def __cinit__(self, *args, **kwargs):
        self._widths = NULL
        self._late = NULL
        self._buckets = NULL
        self._nb = NULL
        self._changes = NULL
        self._kalloc = 0
        self._challoc = 0

    def __dealloc__(self):
        free(self._widths)
        free(self._late)
        free(self._buckets)
        free(self._nb)
        free(self._changes)

    def __init__(self, timeframes_ms, Py_ssize_t hold_buckets=2):
        cdef Py_ssize_t t
        if not timeframes_ms:
            raise ValueError("at least one timeframe is needed")
        if any(int(tf) < 1 for tf in timeframes_ms):
            raise ValueError("timeframes must be positive")
        if hold_buckets < 1:
            raise ValueError("hold_buckets must be at least 1")
        widths = [int(tf) for tf in timeframes_ms]
        if max(widths) * hold_buckets >= (1 << 62):
            raise ValueError("timeframes_ms * hold_buckets is too large")
        self.timeframes_ms = widths
        self.hold_buckets = hold_buckets
        self._ntf = len(widths)
        self._widths = <int64_t*>malloc(self._ntf * sizeof(int64_t))
        self._late = <int64_t*>malloc(self._ntf * sizeof(int64_t))
        if self._widths == NULL or self._late == NULL:
            raise MemoryError()
        for t in range(self._ntf):
            self._widths[t] = widths[t]
            self._late[t] = 0
        self._key_ids = {}
        self._key_names = []
        self._free_ids = []
        self._gen = 0
        self._nchanges = 0

    @property
    def late_counts(self):
        """Late quotes so far, per timeframe index."""
        return [self._late[t] for t in range(self._ntf)]

    cdef int32_t _key_id(self, object key) except -1:
        cdef PyObject* found = PyDict_GetItem(self._key_ids, key)
        cdef Py_ssize_t kid, n, first, i
        cdef _Bucket* buckets
        cdef int32_t* nb
        if found != NULL:
            return <int32_t><object>found
        if self._free_ids:
            kid = self._free_ids.pop()
            first = kid * self._ntf
            for i in range(first, first + self._ntf):
                self._nb[i] = 0
            self._key_ids[key] = kid
            self._key_names[kid] = key
            return <int32_t>kid
        kid = len(self._key_names)
        if kid >= self._kalloc:
            n = max(16, self._kalloc * 2)
            buckets = <_Bucket*>realloc(self._buckets, n * self._ntf * self.hold_buckets * sizeof(_Bucket))
            if buckets == NULL:
                raise MemoryError()
            self._buckets = buckets
            nb = <int32_t*>realloc(self._nb, n * self._ntf * sizeof(int32_t))
            if nb == NULL:
                raise MemoryError()
            self._nb = nb
            self._kalloc = n
        first = kid * self._ntf
        for i in range(first, first + self._ntf):
            self._nb[i] = 0
        self._key_ids[key] = kid
        self._key_names.append(key)
        return <int32_t>kid

    cdef inline int _changed(self, Py_ssize_t state, _Bucket* b) except -1:
        """Note that ``b`` changed in this batch (once per bucket)."""
        cdef Py_ssize_t n
        cdef _Change* grown
        if b.gen == self._gen:
            return 0
        if self._nchanges == self._challoc:
            n = max(64, self._challoc * 2)
            grown = <_Change*>realloc(self._changes, n * sizeof(_Change))
            if grown == NULL:
                raise MemoryError()
            self._changes = grown
            self._challoc = n
        b.gen = self._gen
        b.chg = self._nchanges
        self._changes[self._nchanges].state = state
        self._changes[self._nchanges].start = b.start
        self._changes[self._nchanges].final = False
        self._nchanges += 1
        return 0

    cdef inline void _evicted(self, _Bucket* b) noexcept:
        """Keep the last values of a bucket changed in this batch and now dropped."""
        if b.gen == self._gen:
            self._changes[b.chg].final = True
            self._changes[b.chg].snap = b[0]

    def update(self, keys, ts_ms, bids, asks):
        """Apply a batch of quotes given as columns.

        Returns ``(candles, late)``: each candle that changed, once, as
        ``(key, timeframe_ms, start_ms, open, high, low, close, ticks, is_open)``
        where ``is_open`` says the bucket is the newest of its key and
        timeframe; and ``(batch_index, timeframe_index)`` for each late quote.
        """
        cdef Py_ssize_t n = len(keys)
        if not (len(ts_ms) == len(bids) == len(asks) == n):
            raise ValueError("columns differ in length")
        cdef list late = []
        if n == 0:
            return [], late
        cdef const int64_t[::1] ts_v = np.ascontiguousarray(ts_ms, dtype=np.int64)
        cdef const double[::1] bid_v = np.ascontiguousarray(bids, dtype=np.float64)
        cdef const double[::1] ask_v = np.ascontiguousarray(asks, dtype=np.float64)
        if not isinstance(keys, list):
            keys = list(keys)
        cdef list key_list = keys
        cdef Py_ssize_t i, t, j, drop, nb, state
        cdef Py_ssize_t ntf = self._ntf, hold = self.hold_buckets
        cdef int64_t ts, width, r, start, newest, floor
        cdef double price
        cdef int32_t kid = -1
        cdef _Bucket* bk
        cdef object last_key = None
        self._gen += 1
        self._nchanges = 0
        for i in range(n):
            key = key_list[i]
            if key is not last_key or kid < 0:
                kid = self._key_id(key)
                last_key = key
            ts = ts_v[i]
            price = (bid_v[i] + ask_v[i]) / 2.0
            for t in range(ntf):
                width = self._widths[t]
                r = ts % width
                if r < 0:
                    r += width
                start = ts - r
                state = kid * ntf + t
                bk = self._buckets + state * hold
                nb = self._nb[state]
                if nb == 0:
                    _bucket_init(bk, start, ts, price)
                    self._nb[state] = 1
                    self._changed(state, bk)
                    continue
                newest = bk[nb - 1].start
                if start > newest:
                    floor = start - (hold - 1) * width
                    drop = 0
                    while drop < nb and bk[drop].start < floor:
                        self._evicted(&bk[drop])
                        drop += 1
                    if drop:
                        nb -= drop
                        memmove(bk, bk + drop, nb * sizeof(_Bucket))
                    _bucket_init(&bk[nb], start, ts, price)
                    self._nb[state] = nb + 1
                    self._changed(state, &bk[nb])
                    continue
                if start < newest - (hold - 1) * width:
                    self._late[t] += 1
                    late.append((i, t))
                    continue
                j = nb - 1
                while j > 0 and bk[j].start > start:
                    j -= 1
                if bk[j].start == start:
                    _bucket_add(&bk[j], ts, price)
                else:
                    # A gap in the held window: open a bucket between its neighbours.
                    if bk[j].start < start:
                        j += 1
                    memmove(bk + j + 1, bk + j, (nb - j) * sizeof(_Bucket))
                    _bucket_init(&bk[j], start, ts, price)
                    self._nb[state] = nb + 1
                self._changed(state, &bk[j])
        return self._emit(), late

    cdef list _emit(self):
        """The candles changed in this batch, in order of their first change."""
        cdef list candles = []
        cdef Py_ssize_t c, j, nb, ntf = self._ntf, hold = self.hold_buckets
        cdef _Change* ch
        cdef _Bucket* b
        cdef _Bucket* bk
        cdef bint is_open
        for c in range(self._nchanges):
            ch = &self._changes[c]
            bk = self._buckets + ch.state * hold
            nb = self._nb[ch.state]
            if ch.final:
                b = &ch.snap
            else:
                b = NULL
                for j in range(nb):
                    if bk[j].start == ch.start:
                        b = &bk[j]
                        break
            is_open = bk[nb - 1].start == ch.start
            candles.append(
                (
                    self._key_names[ch.state // ntf],
                    self._widths[ch.state % ntf],
                    b.start,
                    b.open,
                    b.high,
                    b.low,
                    b.close,
                    b.ticks,
                    is_open,
                )
            )
        self._nchanges = 0
        return candles

    def update_records(self, records):
        """Like :meth:`update`, reading key, ts_ms and data bid/ask of quote records."""
        return self.update(
            [r.key for r in records],
            [r.ts_ms for r in records],
            [r.data["bid"] for r in records],
            [r.data["ask"] for r in records],
        )

    @property
    def key_count(self):
        """Keys whose buckets are held."""
        return len(self._key_ids)

    def forget(self, key):
        """Drop every bucket held for ``key`` (True if it had any); its next quote starts afresh."""
        cdef PyObject* found = PyDict_GetItem(self._key_ids, key)
        cdef Py_ssize_t kid
        if found == NULL:
            return False
        kid = <Py_ssize_t><object>found
        del self._key_ids[key]
        self._key_names[kid] = None
        self._free_ids.append(kid)
        return True

    def candle(self, key, timeframe_ms, start_ms):
        """The held candle ``(open, high, low, close, ticks)``, or None."""
        cdef Py_ssize_t t = self.timeframes_ms.index(timeframe_ms)
        cdef PyObject* found = PyDict_GetItem(self._key_ids, key)
        cdef Py_ssize_t state, j
        cdef int64_t start = start_ms
        cdef _Bucket* bk
        if found == NULL:
            return None
        state = (<Py_ssize_t><object>found) * self._ntf + t
        bk = self._buckets + state * self.hold_buckets
        for j in range(self._nb[state]):
            if bk[j].start == start:
                return (bk[j].open, bk[j].high, bk[j].low, bk[j].close, bk[j].ticks)
        return None
