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
from cpython.conversion cimport Py_DTSF_ADD_DOT_0, PyOS_double_to_string, PyOS_string_to_double
from cpython.dict cimport PyDict_GetItem
from cpython.mem cimport PyMem_Free
from cpython.ref cimport PyObject
from cpython.unicode cimport PyUnicode_DATA, PyUnicode_DecodeASCII, PyUnicode_GET_LENGTH, PyUnicode_READ_CHAR
from libc.math cimport copysign, floor, isfinite, log10
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort, realloc
from libc.string cimport memchr, memcmp, memcpy, memmove, memset, strlen

import mmap
from collections.abc import Sequence as _Sequence

import msgspec
import numpy as np

from gauss._pycore import _MAX_LENGTH_PREFIX, DEFAULT_MAX_FRAME_BYTES, QUOTE_FIELDS
from gauss.errors import FrameTooLarge

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object text)
    PyObject* _list_item "PyList_GET_ITEM"(object items, Py_ssize_t i)  # borrowed, no check: for _RecentIds

cdef extern from *:
    """
    /* CRC-32 (zlib's polynomial, what zlib.crc32 gives): carry-less multiplication folds 16 bytes a step where the
       CPU has PCLMULQDQ (the method and constants of Intel's "Fast CRC Computation for Generic Polynomials Using
       PCLMULQDQ", as Linux's crc32-pclmul uses them), slicing by 8 for the rest and on other CPUs. */
    static uint32_t gauss_crc_table[8][256];
    static int gauss_crc_folds;
    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    #include <immintrin.h>
    #define GAUSS_CRC_FOLD_TARGET __attribute__((target("pclmul,sse4.1")))
    GAUSS_CRC_FOLD_TARGET static inline __m128i gauss_fold16(__m128i x, __m128i k, __m128i next) {
        return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), next);
    }
    /* The register c (not inverted) carried over n >= 64 bytes, n a multiple of 16. */
    GAUSS_CRC_FOLD_TARGET static uint32_t gauss_crc_fold(uint32_t c, const unsigned char* p, size_t n) {
        const __m128i k1k2 = _mm_set_epi64x(0x1c6e41596LL, 0x154442bd4LL);
        const __m128i k3k4 = _mm_set_epi64x(0x0ccaa009eLL, 0x1751997d0LL);
        const __m128i k5 = _mm_set_epi64x(0, 0x163cd6124LL);
        const __m128i poly = _mm_set_epi64x(0x1f7011641LL, 0x1db710641LL);  /* mu, P' (Barrett) */
        const __m128i low32 = _mm_set_epi32(0, 0, 0, -1);
        __m128i x1 = _mm_xor_si128(_mm_loadu_si128((const __m128i*)p), _mm_cvtsi32_si128((int)c));
        __m128i x2 = _mm_loadu_si128((const __m128i*)(p + 16));
        __m128i x3 = _mm_loadu_si128((const __m128i*)(p + 32));
        __m128i x4 = _mm_loadu_si128((const __m128i*)(p + 48));
        __m128i t;
        for (p += 64, n -= 64; n >= 64; p += 64, n -= 64) {
            x1 = gauss_fold16(x1, k1k2, _mm_loadu_si128((const __m128i*)p));
            x2 = gauss_fold16(x2, k1k2, _mm_loadu_si128((const __m128i*)(p + 16)));
            x3 = gauss_fold16(x3, k1k2, _mm_loadu_si128((const __m128i*)(p + 32)));
            x4 = gauss_fold16(x4, k1k2, _mm_loadu_si128((const __m128i*)(p + 48)));
        }
        x1 = gauss_fold16(gauss_fold16(gauss_fold16(x1, k3k4, x2), k3k4, x3), k3k4, x4);
        for (; n >= 16; p += 16, n -= 16)
            x1 = gauss_fold16(x1, k3k4, _mm_loadu_si128((const __m128i*)p));
        x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), _mm_clmulepi64_si128(x1, k3k4, 0x10));  /* 128 -> 64 bits */
        x1 = _mm_xor_si128(_mm_srli_si128(x1, 4), _mm_clmulepi64_si128(_mm_and_si128(x1, low32), k5, 0x00));  /* -> 32 */
        t = _mm_and_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, low32), poly, 0x10), low32);
        x1 = _mm_xor_si128(x1, _mm_clmulepi64_si128(t, poly, 0x00));
        return (uint32_t)_mm_extract_epi32(x1, 1);
    }
    static int gauss_crc_can_fold(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
    }
    #else
    static uint32_t gauss_crc_fold(uint32_t c, const unsigned char* p, size_t n) { return c; }
    static int gauss_crc_can_fold(void) { return 0; }
    #endif
    static void gauss_crc_init(void) {
        uint32_t i, c;
        int k, t;
        for (i = 0; i < 256; i++) {
            c = i;
            for (k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            gauss_crc_table[0][i] = c;
        }
        for (i = 0; i < 256; i++)
            for (t = 1; t < 8; t++)
                gauss_crc_table[t][i] = (gauss_crc_table[t - 1][i] >> 8) ^ gauss_crc_table[0][gauss_crc_table[t - 1][i] & 0xff];
        gauss_crc_folds = gauss_crc_can_fold();
    }
    static uint32_t gauss_crc32(const unsigned char* p, size_t n) {
        const uint32_t (*T)[256] = (const uint32_t (*)[256])gauss_crc_table;
        uint32_t c = 0xFFFFFFFFu, a, b;
        size_t folded;
        if (n >= 64 && gauss_crc_folds) {
            folded = n & ~(size_t)15;
            c = gauss_crc_fold(c, p, folded);
            p += folded;
            n -= folded;
        }
        while (n >= 8) {
            memcpy(&a, p, 4);
            memcpy(&b, p + 4, 4);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
            a = __builtin_bswap32(a);
            b = __builtin_bswap32(b);
    #endif
            a ^= c;
            c = T[7][a & 0xff] ^ T[6][(a >> 8) & 0xff] ^ T[5][(a >> 16) & 0xff] ^ T[4][a >> 24]
              ^ T[3][b & 0xff] ^ T[2][(b >> 8) & 0xff] ^ T[1][(b >> 16) & 0xff] ^ T[0][b >> 24];
            p += 8;
            n -= 8;
        }
        while (n--) c = T[0][(c ^ *p++) & 0xff] ^ (c >> 8);
        return c ^ 0xFFFFFFFFu;
    }
    """
    void gauss_crc_init() noexcept
    uint32_t gauss_crc32(const unsigned char* data, size_t size) noexcept

gauss_crc_init()

_encode_json = msgspec.json.encode

cdef enum:
    _NL = 10  # "\n"
    _CR = 13  # "\r"

cdef Py_ssize_t _MAX_PREFIX = _MAX_LENGTH_PREFIX

__all__ = [
    "TopicRecord",
    "QuoteBatch",
    "JsonQuoteParser",
    "CsvQuoteParser",
    "encode_csv_quotes",
    "AvroQuoteParser",
    "encode_avro_quotes",
    "ProtobufQuoteParser",
    "encode_protobuf_quotes",
    "LineDecoder",
    "LengthPrefixedDecoder",
    "encode_lines",
    "encode_length_prefixed",
    "encode_checked_frames",
    "write_records_json",
    "write_record_lines",
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


# --- quote columns ---------------------------------------------------------


cdef double[23] _P10 = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
]
"""The powers of ten a double holds exactly (Clinger's fast path, both directions)."""

cdef int64_t _DIGITS15 = 1000000000000000  # 10**15: below it every decimal is one double's shortest form

cdef extern from *:
    """
    #include <math.h>
    #include <string.h>
    #include <stdint.h>
    #if defined(__SIZEOF_INT128__)
    typedef unsigned __int128 gauss_u128;
    static const uint64_t gauss_p10[20] = {
        1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL, 100000000ULL,
        1000000000ULL, 10000000000ULL, 100000000000ULL, 1000000000000ULL, 10000000000000ULL,
        100000000000000ULL, 1000000000000000ULL, 10000000000000000ULL, 100000000000000000ULL,
        1000000000000000000ULL, 10000000000000000000ULL};
    static inline gauss_u128 gauss_pow10(int k) {
        return k < 20 ? (gauss_u128)gauss_p10[k] : (gauss_u128)gauss_p10[k - 19] * gauss_p10[19];
    }
    /* repr(a) for 1e-4 <= a < 1e15 in out: the shortest decimal that reads back as a and, of those, the
       nearest to a. Its length, its fraction digits in *frac; 0 on a tie between two nearest (repr decides).

       a = M * 2**-L exactly; everything is scaled by 10**k (k: 17 - a's decimal exponent, so the
       interval of decimals that read back as a holds 11 or more integers), the interval's bounds are
       the midpoints to a's neighbours (inclusive when M is even: strtod reads a midpoint as the even
       mantissa), its integers are cut by ten while any remain, and the one nearest to a is taken. */
    static int gauss_shortest(double a, char* out, int* frac) {
        uint64_t bits, M, lo, hi, cq, q, p, rem, lo10, hi10;
        int L, S, k, r = 0, n, whole, len = 0, i, inclusive, up;
        gauss_u128 scale, vlo, vhi, vc, mask, twice, crem;
        char digits[24];
        memcpy(&bits, &a, 8);
        M = (bits & ((1ULL << 52) - 1)) | (1ULL << 52);
        L = 1075 - (int)((bits >> 52) & 0x7ff);
        k = 17 - (int)floor(log10(a));
        if (k > 21) k = 21;  /* a >= 1e-4: a decade off below means log10 rounded */
        if (L < 1 || L > 70 || k < 0) return 0;
        S = L + 2;
        mask = ((gauss_u128)1 << S) - 1;
        for (;;) {
            scale = gauss_pow10(k);
            vc = (gauss_u128)(4 * M) * scale;
            if ((vc >> S) >= gauss_p10[17] || k == 21) break;
            k += 1;  /* log10 rounded up at a power of ten: one more digit */
        }
        vlo = (gauss_u128)(4 * M - (M == (1ULL << 52) ? 1 : 2)) * scale;  /* a power of two: a nearer neighbour below */
        vhi = (gauss_u128)(4 * M + 2) * scale;
        inclusive = (M & 1) == 0;
        lo = (uint64_t)(vlo >> S) + (((vlo & mask) != 0) || !inclusive);
        hi = (uint64_t)(vhi >> S) - (((vhi & mask) == 0) && !inclusive);
        for (;;) {
            lo10 = lo / 10 + (lo % 10 != 0);
            hi10 = hi / 10;
            if (lo10 > hi10) break;
            lo = lo10;
            hi = hi10;
            r += 1;
        }
        /* the integer at this level nearest to a * 10**(k - r) */
        p = gauss_p10[r];
        cq = (uint64_t)(vc >> S);
        crem = vc & mask;
        q = cq / p;
        rem = cq - q * p;
        twice = (gauss_u128)rem * 2 + (crem >> (S - 1));  /* 2 * (rem + crem / 2**S), its whole part */
        crem = (crem << 1) & mask;  /* and what is left of its fraction */
        if (twice == p && crem == 0) return 0;
        up = twice > p || (twice == p && crem != 0);
        q += up;
        if (q < lo) q = lo;
        if (q > hi) q = hi;
        n = 0;
        do { digits[23 - n++] = (char)('0' + q % 10); q /= 10; } while (q);
        /* value = digits * 10**(r - k) */
        whole = n + r - k;
        if (whole >= n) {
            memcpy(out, digits + 24 - n, n);
            len = n;
            for (i = n; i < whole; i++) out[len++] = '0';
            out[len++] = '.';
            out[len++] = '0';
            *frac = 0;
            return len;
        }
        if (whole > 0) {
            memcpy(out, digits + 24 - n, whole);
            out[whole] = '.';
            memcpy(out + whole + 1, digits + 24 - n + whole, n - whole);
            *frac = n - whole;
            return n + 1;
        }
        out[len++] = '0';
        out[len++] = '.';
        for (i = 0; i < -whole; i++) out[len++] = '0';
        memcpy(out + len, digits + 24 - n, n);
        *frac = n - whole;
        return len + n;
    }
    #else
    static int gauss_shortest(double a, char* out, int* frac) { return 0; }
    #endif
    """
    int gauss_shortest(double a, char* out, int* frac) noexcept


cdef extern from *:
    """
    /* How many of the 8 bytes at p are decimal digits before the first other byte (0..8), and their value;
       -1 where it is not compiled (the caller reads digit by digit). 8 bytes must be readable at p.
       PERF: one load, one test of all 8 bytes, three multiplications (fast_float's eight-digit method). */
    static const uint64_t gauss_pow10_u64[9] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000};
    static inline int gauss_digits8(const char* p, uint64_t* value) {
    #if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        uint64_t x, t, other;
        int k;
        memcpy(&x, p, 8);
        t = x - 0x3030303030303030ULL;  /* a digit byte becomes 0..9; bytes past the first other one are never used */
        other = (t | (t + 0x7676767676767676ULL)) & 0x8080808080808080ULL;  /* high bit: not 0..9 */
        k = other ? __builtin_ctzll(other) >> 3 : 8;
        if (k == 0) {
            *value = 0;
            return 0;
        }
        t <<= 8 * (8 - k);  /* the digits at the top, zeros (leading zeros) below */
        t = t * 10 + (t >> 8);
        t = (((t & 0x000000FF000000FFULL) * 0x000F424000000064ULL)
             + (((t >> 16) & 0x000000FF000000FFULL) * 0x0000271000000001ULL)) >> 32;
        *value = (uint32_t)t;
        return k;
    #else
        return -1;
    #endif
    }
    """
    const uint64_t* gauss_pow10_u64
    int gauss_digits8(const char* p, uint64_t* value) noexcept nogil


cdef enum:
    # What a writer reserves per quote up front (no regrowth copies); longer ones grow the buffer.
    _RECORD_JSON_BYTES = 192  # a record's SPEC section 1 JSON (~160)
    _CSV_ROW_BYTES = 128  # a CSV row (~75)
    _BINARY_QUOTE_BYTES = 64  # a protobuf or Avro quote (~50)


cdef enum:
    _MEMO_BYTES = 24  # the longest float text a column remembers (a sign, 17 digits, a point, room to spare)


cdef struct _Writer:
    char* buf
    Py_ssize_t size
    Py_ssize_t alloc
    # Per float column (bid, ask, bid_size, ask_size):
    int[4] digits  # the fraction digits of the last value written (where the next search starts)
    double[4] last  # the last value written in [1e-4, 1e15) (0.0: none yet), and its text
    char[4 * _MEMO_BYTES] last_text
    int[4] last_len


cdef inline _Writer _new_writer() noexcept:
    """An empty writer: no buffer, no float column remembered."""
    cdef _Writer w
    memset(&w, 0, sizeof(_Writer))
    return w


cdef int _w_grow(_Writer* w, Py_ssize_t n) except -1:
    cdef Py_ssize_t grow = max(w.size + n, w.alloc * 2, 4096)
    cdef char* fresh = <char*>realloc(w.buf, grow)
    if fresh == NULL:
        raise MemoryError()
    w.buf = fresh
    w.alloc = grow
    return 0


cdef inline int _w_reserve(_Writer* w, Py_ssize_t n) except -1:
    if w.size + n > w.alloc:
        return _w_grow(w, n)
    return 0


cdef inline void _put(_Writer* w, const char* data, Py_ssize_t n) noexcept:
    """Append ``n`` bytes the writer has room for (reserved before)."""
    memcpy(w.buf + w.size, data, n)
    w.size += n


cdef inline int _w_raw(_Writer* w, const char* data, Py_ssize_t n) except -1:
    _w_reserve(w, n)
    _put(w, data, n)
    return 0


cdef char* _PAIRS = (
    b"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    b"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    b"8081828384858687888990919293949596979899"
)
"""The two digits of 0 to 99 (a number is written two digits a step)."""


cdef inline void _put_uint(_Writer* w, uint64_t value) noexcept:
    """Append ``value``'s decimal digits (20 at most, reserved before), written in place."""
    cdef int n = 1
    cdef uint64_t bound = 10
    cdef uint64_t pair
    while n < 20 and value >= bound:
        n += 1
        bound *= 10
    cdef char* end = w.buf + w.size + n
    w.size += n
    while value >= 100:
        pair = value % 100
        value //= 100
        end -= 2
        memcpy(end, _PAIRS + 2 * pair, 2)
    if value >= 10:
        memcpy(end - 2, _PAIRS + 2 * value, 2)
    else:
        end[-1] = <char>(48 + value)


cdef inline void _put_int(_Writer* w, int64_t value) noexcept:
    """Append ``value`` in decimal (21 bytes at most, reserved before)."""
    if value < 0:
        _put(w, "-", 1)
        _put_uint(w, <uint64_t>(-(value + 1)) + 1)
    else:
        _put_uint(w, <uint64_t>value)


cdef inline int _w_int(_Writer* w, int64_t value) except -1:
    _w_reserve(w, 21)
    _put_int(w, value)
    return 0


cdef inline int _clinger(double a, int k, int64_t* m) noexcept:
    """1 if the decimal ``m * 10**-k`` (``m < 10**15``) reads back as ``a``, 0 if not, -1 once ``m`` would reach 10**15."""
    cdef double y = a * _P10[k]
    if y >= <double>_DIGITS15:
        return -1
    m[0] = <int64_t>(y + 0.5)  # any rounding will do: a y that passes is within 1/8 of an integer
    return <double>m[0] / _P10[k] == a


cdef int _w_float(_Writer* w, double x, int column, bint json=True) except -1:
    """``repr(x)``: the shortest decimal that reads back as ``x``; if not finite ``null`` (JSON) or ``repr``'s word.

    PERF: a value equal to the column's last one (a size, an unchanged price) copies that one's text.
    """
    cdef Py_ssize_t start, size
    if x == w.last[column] and w.last_len[column]:
        _w_raw(w, w.last_text + column * _MEMO_BYTES, w.last_len[column])
        return 0
    start = w.size
    _w_float_text(w, x, column, json)
    size = w.size - start
    if 1e-4 <= x < 1e15 or -1e15 < x <= -1e-4:
        if size <= _MEMO_BYTES:
            memcpy(w.last_text + column * _MEMO_BYTES, w.buf + start, size)
            w.last_len[column] = <int>size
            w.last[column] = x
    return 0


cdef int _w_float_text(_Writer* w, double x, int column, bint json) except -1:
    """``repr(x)`` written afresh.

    PERF: a price with as many decimals as the column's last value, or one
    or two more, is found by Clinger's test (``m / 10**k == x`` with ``m <
    10**15``: then the decimal ``m * 10**-k`` is the only one of at most 15
    digits for ``x``, so ``repr`` prints it without its trailing zeros): one
    to three tests, no search. Any
    other value is found exactly by ``gauss_shortest``; what neither
    covers (huge, tiny, a tie) goes to CPython's own ``repr`` code.
    """
    cdef double a
    cdef int64_t m, ip, frac
    cdef int k, pad, n, fraction_digits, found
    cdef char* text
    if not (x - x == 0.0):
        if json:
            return _w_raw(w, "null", 4)
        if x != x:
            return _w_raw(w, "nan", 3)
        return _w_raw(w, "inf", 3) if x > 0 else _w_raw(w, "-inf", 4)
    if x == 0.0:
        if copysign(1.0, x) < 0.0:
            return _w_raw(w, "-0.0", 4)
        return _w_raw(w, "0.0", 3)
    a = -x if x < 0.0 else x
    if 1e-4 <= a < 1e15:
        _w_reserve(w, 40)  # a sign, 16 digits, a point, up to 21 fraction digits
        k = w.digits[column]
        found = _clinger(a, k, &m)
        while found == 0 and k < w.digits[column] + 2:  # a price with a decimal or two more than the last
            k += 1
            found = _clinger(a, k, &m)
        if found == 1:
            # No two decimals of at most 15 digits read back as one double: a shorter
            # form is this one without its trailing zeros.
            while k > 0 and m % 10 == 0:
                k -= 1
                m //= 10
            w.digits[column] = k
            if x < 0.0:
                _put(w, "-", 1)
            if k == 0:
                _put_uint(w, <uint64_t>m)
                _put(w, ".0", 2)
                return 0
            ip = m // <int64_t>_P10[k]
            frac = m - ip * <int64_t>_P10[k]
            _put_uint(w, <uint64_t>ip)
            w.buf[w.size] = b"."
            pad = k
            while pad > 0:
                w.buf[w.size + pad] = <char>(48 + frac % 10)
                frac //= 10
                pad -= 1
            w.size += k + 1
            return 0
        n = gauss_shortest(a, w.buf + w.size + (x < 0.0), &fraction_digits)
        if n > 0:
            if fraction_digits < 15:
                w.digits[column] = fraction_digits
            if x < 0.0:
                w.buf[w.size] = b"-"
                n += 1
            w.size += n
            return 0
    text = PyOS_double_to_string(x, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    try:
        _w_raw(w, text, strlen(text))
    finally:
        PyMem_Free(text)
    return 0


# --- payloads written one by one, or framed into one buffer (the sinks' fused path) --------


cdef enum:
    _EACH = 0  # a list of payloads
    _LINES = 1  # one bytes: each payload then "\n"
    _PREFIXED = 2  # one bytes: each payload after its u32 big-endian length


cdef int _framing_mode(object framing) except -1:
    if framing is None:
        return _EACH
    if framing == "lines":
        return _LINES
    if framing == "length-prefixed":
        return _PREFIXED
    raise ValueError(f"framing must be None, 'lines' or 'length-prefixed', not {framing!r}")


cdef inline Py_ssize_t _payload_begin(_Writer* w, int mode) except -1:
    """Where the next payload starts in ``w`` (its length header reserved when prefixed)."""
    if mode == _EACH:
        w.size = 0
    elif mode == _PREFIXED:
        _w_reserve(w, 4)
        w.size += 4
    return w.size


cdef inline int _payload_end(_Writer* w, int mode, Py_ssize_t start, list out, Py_ssize_t i) except -1:
    """Finish the payload written since ``start``: into ``out[i]``, or framed in place (as ``encode_lines`` / ``encode_length_prefixed`` frame it)."""
    cdef Py_ssize_t size = w.size - start
    cdef unsigned char* head
    if mode == _EACH:
        out[i] = PyBytes_FromStringAndSize(w.buf, w.size)
    elif mode == _LINES:
        if size and memchr(w.buf + start, _NL, size) != NULL:
            raise ValueError("a lines payload must not contain a newline")
        _w_raw(w, "\n", 1)
    else:
        head = <unsigned char*>w.buf + start - 4
        head[0] = (size >> 24) & 0xFF
        head[1] = (size >> 16) & 0xFF
        head[2] = (size >> 8) & 0xFF
        head[3] = size & 0xFF
    return 0


cdef inline int _reserve_framed(_Writer* w, int mode, Py_ssize_t n, Py_ssize_t per_payload) except -1:
    """Room for a framed batch in one allocation; a list of payloads reuses one small buffer instead."""
    if mode != _EACH:
        _w_reserve(w, n * (per_payload + 4))
    return 0


cdef inline object _payloads(_Writer* w, int mode, list out):
    return out if mode == _EACH else PyBytes_FromStringAndSize(w.buf, w.size)


cdef inline bint _plain_ascii(str text) noexcept:
    """Whether JSON writes ``text`` as it is between quotes (printable ASCII, no quote or backslash)."""
    cdef Py_ssize_t i, n = PyUnicode_GET_LENGTH(text)
    cdef Py_UCS4 c
    if not PyUnicode_IS_ASCII(text):
        return False
    for i in range(n):
        c = PyUnicode_READ_CHAR(text, i)
        if c < 32 or c == 34 or c == 92 or c == 127:
            return False
    return True


cdef enum:
    _RECENT_SLOTS = 64  # an identity cache's slots: the few dozen symbols that take turns through a batch


cdef class _RecentIds:
    """The id last found for up to 64 key objects, by identity: no hash, no comparison of text.

    A batch's symbols are a few ``str`` objects taking turns (the parser's
    own), so nearly every lookup of a symbol's id hits here, not the dict.
    It holds a reference to each key it caches, so an address is never
    reused while cached; :meth:`forget` drops an id that is given up.
    """

    cdef list _keys  # per slot the key object (None when empty)
    cdef int32_t[_RECENT_SLOTS] _ids  # per slot its id, -1 when empty (None may be a key)

    def __cinit__(self):
        self._keys = [None] * _RECENT_SLOTS
        cdef Py_ssize_t slot
        for slot in range(_RECENT_SLOTS):
            self._ids[slot] = -1

    @staticmethod
    cdef inline Py_ssize_t _slot(object key) noexcept:
        return <Py_ssize_t>((<uint64_t><size_t><PyObject*>key * 0x9E3779B97F4A7C15ULL) >> 58)  # 6 bits of the address

    cdef inline int32_t find(self, object key) noexcept:
        """The id cached for ``key``, or -1."""
        cdef Py_ssize_t slot = _RecentIds._slot(key)
        if _list_item(self._keys, slot) == <PyObject*>key:
            return self._ids[slot]
        return -1

    cdef inline int remember(self, object key, int32_t kid) except -1:
        cdef Py_ssize_t slot = _RecentIds._slot(key)
        self._keys[slot] = key
        self._ids[slot] = kid
        return 0

    cdef int forget(self, int32_t kid) except -1:
        """Drop every slot holding ``kid`` (its key was given up, the id may go to another)."""
        cdef Py_ssize_t slot
        for slot in range(_RECENT_SLOTS):
            if self._ids[slot] == kid:
                self._keys[slot] = None
                self._ids[slot] = -1
        return 0


cdef class _PerSymbol:
    """A value made once per symbol for one batch (its JSON or CSV text, its binary head), found by identity first."""

    cdef dict _at  # symbol -> index in _values
    cdef list _values
    cdef _RecentIds _recent

    def __cinit__(self, *args):
        self._at = {}
        self._values = []
        self._recent = _RecentIds()

    cdef inline object get(self, object symbol):
        """The value stored for ``symbol``, or None."""
        cdef int32_t at = self._recent.find(symbol)
        cdef PyObject* found
        if at < 0:
            found = PyDict_GetItem(self._at, symbol)
            if found == NULL:
                return None
            at = <int32_t><object>found
            self._recent.remember(symbol, at)
        return <object>_list_item(self._values, at)

    cdef object put(self, object symbol, object value):
        cdef int32_t at = <int32_t>len(self._values)
        self._values.append(value)
        self._at[symbol] = at
        self._recent.remember(symbol, at)
        return value


cdef class _Names(_PerSymbol):
    """The text of each symbol a batch writes (JSON, or a CSV field), made once per symbol."""

    cdef bint _csv

    def __cinit__(self, bint csv=False):
        self._csv = csv

    cdef bytes text(self, object symbol):
        found = self.get(symbol)
        if found is not None:
            return <bytes>found
        if self._csv:
            text = _csv_field(symbol)
        elif type(symbol) is str and _plain_ascii(symbol):
            text = b'"' + (<str>symbol).encode("ascii") + b'"'
        else:
            text = _encode_json(symbol)
        return <bytes>self.put(symbol, text)


cdef bytes _csv_field(str text):
    """``text`` as a CSV field (RFC 4180: quoted when it holds a comma, a quote or a line break), UTF-8."""
    if "," in text or '"' in text or "\n" in text or "\r" in text:
        text = '"' + text.replace('"', '""') + '"'
    return text.encode("utf-8")


cdef class QuoteBatch:
    """A batch of quotes as columns: what a quote codec reads, a quote topic publishes and stores.

    ``symbols`` is a list of ``str`` (a parser hands out one shared object per
    distinct symbol, so the list is in effect ids into its symbol table),
    ``ts_ms`` an int64 array, ``bid``/``ask``/``bid_size``/``ask_size`` float64
    arrays. A batch a topic publishes is numbered by ``first_seq`` alone (its
    quotes hold ``first_seq, first_seq + 1, ...``; 0 until numbered); one a
    query gathered carries its own ``seqs``. It is a sequence of
    :class:`TopicRecord`: indexing builds the one record asked for (``data``
    the six quote fields), slicing gives a batch sharing the columns.
    """

    cdef readonly list symbols
    cdef readonly object ts_ms, bid, ask, bid_size, ask_size
    cdef object _seqs_arr  # None: seqs follow from _first_seq
    cdef int64_t _first_seq
    cdef const int64_t* _ts
    cdef const double* _bid
    cdef const double* _ask
    cdef const double* _bid_size
    cdef const double* _ask_size
    cdef const int64_t* _seqs

    def __init__(self, symbols, ts_ms, bid, ask, bid_size, ask_size, int64_t first_seq=0, seqs=None):
        self.symbols = symbols if type(symbols) is list else list(symbols)
        self.ts_ms = np.ascontiguousarray(ts_ms, dtype=np.int64)
        self.bid = np.ascontiguousarray(bid, dtype=np.float64)
        self.ask = np.ascontiguousarray(ask, dtype=np.float64)
        self.bid_size = np.ascontiguousarray(bid_size, dtype=np.float64)
        self.ask_size = np.ascontiguousarray(ask_size, dtype=np.float64)
        cdef Py_ssize_t n = len(self.symbols)
        if not (len(self.ts_ms) == len(self.bid) == len(self.ask) == len(self.bid_size) == len(self.ask_size) == n):
            raise ValueError("columns differ in length")
        if first_seq < 0:
            raise ValueError(f"first_seq must not be negative, got {first_seq}")
        self._ts = <const int64_t*>_data_ptr(self.ts_ms)
        self._bid = <const double*>_data_ptr(self.bid)
        self._ask = <const double*>_data_ptr(self.ask)
        self._bid_size = <const double*>_data_ptr(self.bid_size)
        self._ask_size = <const double*>_data_ptr(self.ask_size)
        self._seqs_arr = None
        self._seqs = NULL
        self._first_seq = first_seq
        if seqs is not None:
            if first_seq:
                raise ValueError("give first_seq or seqs, not both")
            self._seqs_arr = np.ascontiguousarray(seqs, dtype=np.int64)
            if len(self._seqs_arr) != n:
                raise ValueError("columns differ in length")
            self._seqs = <const int64_t*>_data_ptr(self._seqs_arr)
            self._first_seq = self._seqs[0] if n else 0

    @property
    def first_seq(self):
        """The seq of the first quote (0 while unnumbered)."""
        return self._first_seq

    @first_seq.setter
    def first_seq(self, int64_t value):
        if self._seqs != NULL:
            raise ValueError("a batch that carries its own seqs cannot be renumbered")
        if value < 0:
            raise ValueError(f"first_seq must not be negative, got {value}")
        self._first_seq = value

    @property
    def seqs(self):
        """The seq of each quote as an int64 array (zeros while unnumbered)."""
        if self._seqs_arr is not None:
            return self._seqs_arr
        n = len(self.symbols)
        if not self._first_seq:
            return np.zeros(n, dtype=np.int64)
        return np.arange(self._first_seq, self._first_seq + n, dtype=np.int64)

    cdef inline int64_t _seq(self, Py_ssize_t i) noexcept:
        if self._seqs != NULL:
            return self._seqs[i]
        return self._first_seq + i if self._first_seq else 0

    @classmethod
    def from_records(cls, records):
        """The batch of quote records (``data`` holding bid, ask, bid_size, ask_size), seqs kept."""
        if isinstance(records, QuoteBatch):
            return records
        cdef Py_ssize_t n = len(records), i
        cdef list symbols = [None] * n
        ts = np.empty(n, dtype=np.int64)
        bid = np.empty(n, dtype=np.float64)
        ask = np.empty(n, dtype=np.float64)
        bid_size = np.empty(n, dtype=np.float64)
        ask_size = np.empty(n, dtype=np.float64)
        seqs = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] ts_v = ts, seqs_v = seqs
        cdef double[::1] bid_v = bid, ask_v = ask, bid_size_v = bid_size, ask_size_v = ask_size
        cdef bint consecutive = True
        for i in range(n):
            record = records[i]
            data = record.data
            symbols[i] = record.key
            ts_v[i] = record.ts_ms
            bid_v[i] = data["bid"]
            ask_v[i] = data["ask"]
            bid_size_v[i] = data["bid_size"]
            ask_size_v[i] = data["ask_size"]
            seqs_v[i] = record.seq
            if i and seqs_v[i] != seqs_v[0] + i:
                consecutive = False
        if consecutive:
            return QuoteBatch(symbols, ts, bid, ask, bid_size, ask_size, seqs_v[0] if n else 0)
        return QuoteBatch(symbols, ts, bid, ask, bid_size, ask_size, seqs=seqs)

    @staticmethod
    def concat(batches):
        """One batch of ``batches`` in order, their seqs kept."""
        if len(batches) == 1:
            return batches[0]
        if not batches:
            return QuoteBatch([], (), (), (), (), ())
        cdef int64_t first_seq = batches[0].first_seq
        cdef int64_t expected = first_seq
        cdef list symbols = []
        cdef bint consecutive = True
        for batch in batches:
            if (<QuoteBatch>batch)._seqs != NULL or batch.first_seq != expected:
                consecutive = False
            expected += len(batch)
            symbols.extend((<QuoteBatch>batch).symbols)
        columns = [
            np.concatenate([b.ts_ms for b in batches]),
            np.concatenate([b.bid for b in batches]),
            np.concatenate([b.ask for b in batches]),
            np.concatenate([b.bid_size for b in batches]),
            np.concatenate([b.ask_size for b in batches]),
        ]
        if consecutive:
            return QuoteBatch(symbols, *columns, first_seq)
        seqs = np.concatenate([b.seqs for b in batches])
        if not seqs.any():
            return QuoteBatch(symbols, *columns)
        return QuoteBatch(symbols, *columns, seqs=seqs)

    def take(self, indices):
        """The quotes at ``indices`` (an int array), in that order, unnumbered."""
        idx = np.asarray(indices, dtype=np.intp)
        cdef list symbols = self.symbols
        return QuoteBatch(
            [symbols[i] for i in idx.tolist()],
            self.ts_ms[idx], self.bid[idx], self.ask[idx], self.bid_size[idx], self.ask_size[idx],
        )

    def passing(self, int64_t min_ts_ms, int64_t max_ts_ms, bint positive_prices):
        """Which quotes pass SPEC section 1's numeric rules; None when every one does (no array then).

        The rules: ``min_ts_ms <= ts_ms <= max_ts_ms``; bid, ask, their sum and
        both sizes finite; with ``positive_prices``, bid and ask above 0.
        PERF: one pass in C and no allocation in the usual case (numpy took
        ten passes and ~40 us of call overhead a batch of 100).
        """
        cdef Py_ssize_t i, n = len(self.symbols)
        for i in range(n):
            if not _quote_passes(self, i, min_ts_ms, max_ts_ms, positive_prices):
                break
        else:
            return None
        ok = np.ones(n, dtype=np.bool_)
        cdef unsigned char[::1] flags = ok.view(np.uint8)
        for i in range(i, n):
            flags[i] = _quote_passes(self, i, min_ts_ms, max_ts_ms, positive_prices)
        return ok

    def of_symbol(self, symbol):
        """The quotes of ``symbol``, seqs kept (the batch itself when every quote is one)."""
        cdef list symbols = self.symbols
        cdef Py_ssize_t i, n = len(symbols)
        cdef list picked = []
        for i in range(n):
            s = symbols[i]
            if s is symbol or s == symbol:
                picked.append(i)
        if len(picked) == n:
            return self
        idx = np.asarray(picked, dtype=np.intp)
        columns = (self.ts_ms[idx], self.bid[idx], self.ask[idx], self.bid_size[idx], self.ask_size[idx])
        if self._seqs_arr is None and not self._first_seq:
            return QuoteBatch([symbol] * len(picked), *columns)
        return QuoteBatch([symbols[i] for i in picked], *columns, seqs=self.seqs[idx])

    @property
    def last_seq(self):
        """The seq of the last quote (0 while unnumbered or empty)."""
        cdef Py_ssize_t n = len(self.symbols)
        return self._seq(n - 1) if n else 0

    def __len__(self):
        return len(self.symbols)

    def __getitem__(self, index):
        cdef Py_ssize_t n = len(self.symbols), i, start, stop, step
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step != 1:
                raise ValueError("a QuoteBatch slice must have step 1")
            stop = max(start, stop)
            columns = (
                self.ts_ms[start:stop], self.bid[start:stop], self.ask[start:stop],
                self.bid_size[start:stop], self.ask_size[start:stop],
            )
            if self._seqs_arr is not None:
                return QuoteBatch(self.symbols[start:stop], *columns, seqs=self._seqs_arr[start:stop])
            return QuoteBatch(self.symbols[start:stop], *columns, self._first_seq + start if self._first_seq else 0)
        i = index
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("QuoteBatch index out of range")
        return self._record(i)

    cdef TopicRecord _record(self, Py_ssize_t i):
        symbol = self.symbols[i]
        ts = self._ts[i]
        data = {
            "symbol": symbol,
            "bid": self._bid[i],
            "ask": self._ask[i],
            "bid_size": self._bid_size[i],
            "ask_size": self._ask_size[i],
            "ts_ms": ts,
        }
        return _record(ts, symbol, data, self._seq(i))

    def __iter__(self):
        return iter(self.records())

    def records(self):
        """Every quote as a :class:`TopicRecord` (for the consumers that want records)."""
        cdef Py_ssize_t i, n = len(self.symbols)
        return [self._record(i) for i in range(n)]

    def __eq__(self, other):
        """Equal to a batch of the same quotes and seqs, or to a list of the same records."""
        if isinstance(other, (list, tuple)):
            return self.records() == list(other)
        if not isinstance(other, QuoteBatch) and type(other).__name__ != "QuoteBatch":
            return NotImplemented
        return bool(
            self.symbols == other.symbols
            and np.array_equal(self.seqs, other.seqs)
            and np.array_equal(self.ts_ms, other.ts_ms)
            and np.array_equal(self.bid, other.bid)
            and np.array_equal(self.ask, other.ask)
            and np.array_equal(self.bid_size, other.bid_size)
            and np.array_equal(self.ask_size, other.ask_size)
        )

    def __ne__(self, other):
        result = self.__eq__(other)
        if result is NotImplemented:
            return result
        return not result

    __hash__ = None

    def __repr__(self):
        return f"QuoteBatch({len(self.symbols)} quotes, first_seq={self._first_seq})"

    def __reduce__(self):
        columns = (self.symbols, self.ts_ms, self.bid, self.ask, self.bid_size, self.ask_size)
        if self._seqs_arr is not None:
            return (QuoteBatch, (*columns, 0, self._seqs_arr))
        return (QuoteBatch, (*columns, self._first_seq))

    # --- JSON, written from the columns --------------------------------------

    cdef int _write_data(self, _Writer* w, Py_ssize_t i, bytes name, Py_ssize_t ts_at=-1, Py_ssize_t ts_len=0) except -1:
        """Quote ``i``'s six fields as JSON; ``ts_at``: where ``w`` holds its ``ts_ms`` digits already (``ts_len`` of them)."""
        _w_reserve(w, 80 + PyBytes_GET_SIZE(name))  # the floats reserve their own room
        _put(w, '{"symbol":', 10)
        _put(w, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
        _put(w, ',"bid":', 7)
        _w_float(w, self._bid[i], 0)
        _w_reserve(w, 12)
        _put(w, ',"ask":', 7)
        _w_float(w, self._ask[i], 1)
        _w_reserve(w, 12)
        _put(w, ',"bid_size":', 12)
        _w_float(w, self._bid_size[i], 2)
        _w_reserve(w, 12)
        _put(w, ',"ask_size":', 12)
        _w_float(w, self._ask_size[i], 3)
        _w_reserve(w, 32)
        _put(w, ',"ts_ms":', 9)
        if ts_at < 0:
            _put_int(w, self._ts[i])
        else:
            _put(w, w.buf + ts_at, ts_len)
        _put(w, "}", 1)
        return 0

    cdef int _write_record(self, _Writer* w, Py_ssize_t i, bytes name) except -1:
        _w_reserve(w, 40 + PyBytes_GET_SIZE(name))
        _put(w, '{"ts_ms":', 9)
        cdef Py_ssize_t ts_at = w.size
        _put_int(w, self._ts[i])
        cdef Py_ssize_t ts_len = w.size - ts_at
        _put(w, ',"key":', 7)
        _put(w, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
        _put(w, ',"data":', 8)
        self._write_data(w, i, name, ts_at, ts_len)
        cdef int64_t seq = self._seq(i)
        _w_reserve(w, 32)
        if seq:
            _put(w, ',"seq":', 7)
            _put_int(w, seq)
        _put(w, "}", 1)
        return 0

    def payloads_json(self, framing=None):
        """Each quote's six fields as a JSON object (what the ``json`` codec sends); with ``framing`` framed into one ``bytes``."""
        cdef _Writer w = _new_writer()
        cdef _Names names = _Names()
        cdef int mode = _framing_mode(framing)
        cdef Py_ssize_t i, start, n = len(self.symbols)
        cdef list out = [None] * n if mode == _EACH else None
        try:
            _reserve_framed(&w, mode, n, _RECORD_JSON_BYTES)
            for i in range(n):
                start = _payload_begin(&w, mode)
                self._write_data(&w, i, names.text(self.symbols[i]))
                _payload_end(&w, mode, start, out, i)
            return _payloads(&w, mode, out)
        finally:
            free(w.buf)

    def record_lines(self):
        """The SPEC section 1 form of every record as JSON lines, each ended by a newline."""
        cdef _Writer w = _new_writer()
        cdef _Names names = _Names()
        cdef Py_ssize_t i, n = len(self.symbols)
        try:
            _w_reserve(&w, n * _RECORD_JSON_BYTES)
            for i in range(n):
                self._write_record(&w, i, names.text(self.symbols[i]))
                _w_raw(&w, "\n", 1)
            return PyBytes_FromStringAndSize(w.buf, w.size)
        finally:
            free(w.buf)

    def record_frames(self):
        """The raw-file log frames of every record's SPEC section 1 form: ``encode_checked_frames(record_lines())``.

        PERF: written in place, each frame's header filled in after its record (no lines to split, no second copy).
        """
        cdef _Writer w = _new_writer()
        cdef _Names names = _Names()
        cdef Py_ssize_t i, start, size, n = len(self.symbols)
        try:
            _w_reserve(&w, n * (_RECORD_JSON_BYTES + 8))
            for i in range(n):
                start = w.size
                _w_reserve(&w, 8)
                w.size += 8
                self._write_record(&w, i, names.text(self.symbols[i]))
                size = w.size - start - 8
                _put_frame_header(<unsigned char*>w.buf + start, size)
            return PyBytes_FromStringAndSize(w.buf, w.size)
        finally:
            free(w.buf)

    def records_json(self, start=0, stop=None, bytes lead not None=b"[", bytes tail not None=b"]"):
        """The JSON array of the records' SPEC section 1 forms; of ``self[start:stop]`` between ``lead`` and ``tail``.

        ``lead=b","``, ``tail=b""`` give a piece of a longer array, written without a copy (the API's chunks).
        """
        cdef Py_ssize_t i, first, end
        first, end, _ = slice(start, stop).indices(len(self.symbols))
        cdef _Writer w = _new_writer()
        cdef _Names names = _Names()
        try:
            _w_reserve(&w, max(0, end - first) * _RECORD_JSON_BYTES + len(lead) + len(tail))
            _w_raw(&w, PyBytes_AS_STRING(lead), PyBytes_GET_SIZE(lead))
            for i in range(first, end):
                if i > first:
                    _w_raw(&w, ",", 1)
                self._write_record(&w, i, names.text(self.symbols[i]))
            _w_raw(&w, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail))
            return PyBytes_FromStringAndSize(w.buf, w.size)
        finally:
            free(w.buf)


_Sequence.register(QuoteBatch)  # a sequence of records, as its pure twin (a Sequence subclass) is


# --- any records as JSON ------------------------------------------------------


cdef enum:
    _JSON_DEPTH = 32  # the nesting of a payload written here (deeper: the fallback), as the twin's


cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object value, int* overflow) except? -1
    double PyFloat_AS_DOUBLE(object value)
    bint PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value)


cdef inline bint _int64_of(object value, int64_t* out):
    """Whether ``value`` (an ``int``) fits int64, and if so its value."""
    cdef int overflow = 0
    cdef long long number = PyLong_AsLongLongAndOverflow(value, &overflow)
    out[0] = number
    return not overflow


cdef inline int _w_json_str(_Writer* w, object text, _Names names) except -1:
    """A ``str`` as JSON (``names`` makes each text once: symbols repeat from record to record)."""
    cdef bytes escaped = names.text(text)
    _w_raw(w, PyBytes_AS_STRING(escaped), PyBytes_GET_SIZE(escaped))
    return 0


cdef inline void _put_char(_Writer* w, char c) noexcept:
    """Append one byte the writer has room for."""
    w.buf[w.size] = c
    w.size += 1


cdef class _JsonTexts:
    """The JSON texts one call writes again and again: of strings, and of object keys with their colon."""

    cdef _Names strings
    cdef _PerSymbol keys

    def __cinit__(self):
        self.strings = _Names()
        self.keys = _PerSymbol()

    cdef inline bytes key(self, object key):
        """``"key":`` for a ``str`` key."""
        found = self.keys.get(key)
        if found is None:
            found = self.keys.put(key, self.strings.text(key) + b":")
        return <bytes>found


cdef int _w_value(_Writer* w, object value, int depth, int* floats, _JsonTexts texts) except -1:
    """``value`` as JSON if it is plain JSON data, 0; 1 if it is not (what was written is then of no use).

    Plain: ``dict`` with ``str`` keys, ``list``, ``tuple``, ``str``, ``int``
    within int64, ``float`` (``repr``'s text, not finite: ``null``), ``bool``
    and ``None``, nested at most ``_JSON_DEPTH`` deep; exact types only.
    ``floats`` counts the floats written, each remembered by its own column.
    """
    cdef type kind = type(value)
    cdef int64_t number
    cdef Py_ssize_t pos = 0, i
    cdef bint first = True
    cdef PyObject* key
    cdef PyObject* item
    cdef bytes text
    if kind is float:
        _w_float(w, PyFloat_AS_DOUBLE(value), floats[0] if floats[0] < 3 else 3)
        floats[0] += 1
    elif kind is str:
        _w_json_str(w, value, texts.strings)
    elif kind is int:
        if not _int64_of(value, &number):
            return 1
        _w_int(w, number)
    elif kind is bool:
        if value:
            _w_raw(w, "true", 4)
        else:
            _w_raw(w, "false", 5)
    elif value is None:
        _w_raw(w, "null", 4)
    elif kind is dict:
        if depth >= _JSON_DEPTH:
            return 1
        _w_reserve(w, 2)
        _put_char(w, b"{")
        while PyDict_Next(value, &pos, &key, &item):
            if type(<object>key) is not str:
                return 1
            text = texts.key(<object>key)
            _w_reserve(w, PyBytes_GET_SIZE(text) + 1)
            if not first:
                _put_char(w, b",")
            first = False
            _put(w, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))
            if _w_value(w, <object>item, depth + 1, floats, texts):
                return 1
        _w_reserve(w, 1)
        _put_char(w, b"}")
    elif kind is list or kind is tuple:
        if depth >= _JSON_DEPTH:
            return 1
        _w_reserve(w, 2)
        _put_char(w, b"[")
        for i in range(len(value)):
            if i:
                _w_reserve(w, 1)
                _put_char(w, b",")
            if _w_value(w, value[i], depth + 1, floats, texts):
                return 1
        _w_reserve(w, 1)
        _put_char(w, b"]")
    else:
        return 1
    return 0


cdef int _w_topic_record(_Writer* w, object record, object fallback, _JsonTexts texts) except -1:
    """``record``'s SPEC section 1 form as JSON: written here when it is plain JSON, else ``fallback(record)``'s bytes."""
    cdef Py_ssize_t start = w.size
    cdef int floats = 0
    cdef int64_t ts, seq
    cdef TopicRecord r
    cdef bytes text
    if type(record) is TopicRecord:
        r = <TopicRecord>record
        if (
            type(r.ts_ms) is int and type(r.key) is str and type(r.seq) is int
            and _int64_of(r.ts_ms, &ts) and _int64_of(r.seq, &seq)
        ):
            _w_reserve(w, 40)
            _put(w, '{"ts_ms":', 9)
            _put_int(w, ts)
            _put(w, ',"key":', 7)
            _w_json_str(w, r.key, texts.strings)
            _w_raw(w, ',"data":', 8)
            if not _w_value(w, r.data, 0, &floats, texts):
                _w_reserve(w, 32)
                if seq:
                    _put(w, ',"seq":', 7)
                    _put_int(w, seq)
                _put_char(w, b"}")
                return 0
            w.size = start
    text = fallback(record)
    _w_raw(w, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))
    return 0


def write_records_json(records, fallback, start=0, stop=None, bytes lead not None=b"[", bytes tail not None=b"]"):
    """The JSON array of the records' SPEC section 1 forms; of ``records[start:stop]`` between ``lead`` and ``tail``.

    Records whose fields and payload are plain JSON data are written here
    (floats as ``repr`` writes them, as a :class:`QuoteBatch` does); any
    other is ``fallback(record)``, its JSON as ``bytes``.
    """
    cdef object items = records if type(records) is list or type(records) is tuple else list(records)
    cdef Py_ssize_t i, first, end
    first, end, _ = slice(start, stop).indices(len(items))
    cdef _Writer w = _new_writer()
    cdef _JsonTexts texts = _JsonTexts()
    try:
        _w_reserve(&w, max(0, end - first) * _RECORD_JSON_BYTES + len(lead) + len(tail))
        _w_raw(&w, PyBytes_AS_STRING(lead), PyBytes_GET_SIZE(lead))
        for i in range(first, end):
            if i > first:
                _w_raw(&w, ",", 1)
            _w_topic_record(&w, items[i], fallback, texts)
        _w_raw(&w, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail))
        return PyBytes_FromStringAndSize(w.buf, w.size)
    finally:
        free(w.buf)


def write_record_lines(records, fallback):
    """The records' SPEC section 1 forms as JSON lines, each ended by a newline (written as :func:`write_records_json` writes them)."""
    cdef object items = records if type(records) is list or type(records) is tuple else list(records)
    cdef Py_ssize_t i
    cdef _Writer w = _new_writer()
    cdef _JsonTexts texts = _JsonTexts()
    try:
        _w_reserve(&w, len(items) * _RECORD_JSON_BYTES)
        for i in range(len(items)):
            _w_topic_record(&w, items[i], fallback, texts)
            _w_raw(&w, "\n", 1)
        return PyBytes_FromStringAndSize(w.buf, w.size)
    finally:
        free(w.buf)


cdef inline void* _data_ptr(object array) except NULL:
    """The data pointer of a C-contiguous numpy array (kept alive by its owner), or a valid one when it is empty.

    PERF: the buffer protocol costs ~0.1 us where ``array.ctypes.data`` costs ~5 us
    (a batch sliced into an answer's chunks asks for six columns a chunk).
    """
    cdef Py_buffer view
    cdef void* data
    PyObject_GetBuffer(array, &view, PyBUF_SIMPLE)
    data = view.buf
    PyBuffer_Release(&view)
    return data if data != NULL else <void*>_P10


# --- the json quote parser -------------------------------------------------


cdef enum:
    _F_SYMBOL = 1
    _F_BID = 2
    _F_ASK = 4
    _F_BID_SIZE = 8
    _F_ASK_SIZE = 16
    _F_TS = 32
    _F_REQUIRED = 1 | 2 | 4 | 32
    _SYMBOL_CACHE = 1024


cdef inline Py_ssize_t _skip_ws(const char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and p[i] <= 32 and (p[i] == 32 or p[i] == 9 or p[i] == 10 or p[i] == 13):
        i += 1
    return i


cdef inline int _field_of(const char* name, Py_ssize_t size) noexcept nogil:
    if size == 6 and memcmp(name, b"symbol", 6) == 0:
        return _F_SYMBOL
    if size == 3:
        if memcmp(name, b"bid", 3) == 0:
            return _F_BID
        if memcmp(name, b"ask", 3) == 0:
            return _F_ASK
    if size == 8:
        if memcmp(name, b"bid_size", 8) == 0:
            return _F_BID_SIZE
        if memcmp(name, b"ask_size", 8) == 0:
            return _F_ASK_SIZE
    if size == 5 and memcmp(name, b"ts_ms", 5) == 0:
        return _F_TS
    return 0


cdef inline int _known_key(const char* p, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* size) noexcept nogil:
    """The field of a quote key written ``"name":`` (no space) at ``p[i]``, its length in ``size``; 0 for any other.

    PERF: the closing quote and colon are looked for only where a quote key's would
    be (names of 3, 8, 6 and 5 bytes), no scan; the name is then :func:`_field_of`'s.
    """
    cdef Py_ssize_t[4] lengths = [3, 8, 6, 5]
    cdef Py_ssize_t length
    cdef int k, field
    for k in range(4):
        length = lengths[k]
        if i + length + 2 < n and p[i + length + 1] == 34 and p[i + length + 2] == 58:  # '"', ":"
            field = _field_of(p + i + 1, length)
            if field:
                size[0] = length + 3
                return field
    return 0


cdef inline Py_ssize_t _read_number(const char* p, Py_ssize_t i, Py_ssize_t n, double* out) except -2:
    """Read the JSON number at ``p[i]`` as a double (an integer as ``float(int)``); its end, or -1.

    PERF: Clinger's fast path (at most 15 significant digits, a power of ten
    up to 22) is exact; anything else goes to CPython's correctly rounded
    ``float()`` parser.
    """
    cdef Py_ssize_t start = i, j
    cdef bint negative = False, integral = True
    cdef uint64_t m = 0, eight
    cdef int digits = 0, frac = 0, exp = 0, e10, k
    cdef bint exp_negative = False
    cdef char* end
    cdef double value
    if i < n and p[i] == 45:  # "-"
        negative = True
        i += 1
    if i >= n:
        return -1
    if p[i] == 48:  # "0"
        i += 1
    elif 49 <= p[i] <= 57:
        while i + 8 <= n and digits <= 11:  # PERF: 8 digits a step while m stays exact (<= 19 digits)
            k = gauss_digits8(p + i, &eight)
            if k <= 0:
                break
            m = m * gauss_pow10_u64[k] + eight
            digits += k
            i += k
            if k < 8:
                break
        while i < n and 48 <= p[i] <= 57:
            if m or p[i] != 48:
                if digits < 19:
                    m = m * 10 + <uint64_t>(p[i] - 48)
                digits += 1
            i += 1
    else:
        return -1
    if i < n and p[i] == 46:  # "."
        integral = False
        i += 1
        j = i
        # PERF: 8 digits a step; a leading zero counts as a digit here, which only sends more numbers to float()
        while i + 8 <= n and digits <= 11:
            k = gauss_digits8(p + i, &eight)
            if k <= 0:
                break
            m = m * gauss_pow10_u64[k] + eight
            digits += k
            frac += k
            i += k
            if k < 8:
                break
        while i < n and 48 <= p[i] <= 57:
            if m or p[i] != 48:
                if digits < 19:
                    m = m * 10 + <uint64_t>(p[i] - 48)
                digits += 1
            if digits <= 19:
                frac += 1
            i += 1
        if i == j:
            return -1
    if i < n and (p[i] == 101 or p[i] == 69):  # "e", "E"
        integral = False
        i += 1
        if i < n and (p[i] == 43 or p[i] == 45):
            exp_negative = p[i] == 45
            i += 1
        j = i
        while i < n and 48 <= p[i] <= 57:
            if exp < 10000:
                exp = exp * 10 + (p[i] - 48)
            i += 1
        if i == j:
            return -1
    if digits <= 15:
        e10 = (-exp if exp_negative else exp) - frac
        if m == 0:
            # "-0" is the integer 0 (float(0) is 0.0); "-0.0" is the float -0.0.
            out[0] = -0.0 if negative and not integral else 0.0
            return i
        if -22 <= e10 <= 22:
            value = <double>m
            value = value * _P10[e10] if e10 >= 0 else value / _P10[-e10]
            out[0] = -value if negative else value
            return i
    # The text was checked against JSON's grammar above: it is a number CPython reads the same way.
    value = PyOS_string_to_double(p + start, &end, NULL)
    if end != p + i:
        return -1
    out[0] = value
    return i


cdef inline Py_ssize_t _read_ts(const char* p, Py_ssize_t i, Py_ssize_t n, int64_t* out) noexcept nogil:
    """Read a JSON integer of at most 18 digits, no sign, at ``p[i]``; its end, or -1."""
    cdef int64_t value = 0
    cdef uint64_t eight
    cdef Py_ssize_t start = i
    cdef int k
    if i < n and p[i] == 48:
        i += 1
    else:
        while i + 8 <= n and i - start <= 10:  # PERF: 8 digits a step while at most 18 are read
            k = gauss_digits8(p + i, &eight)
            if k <= 0:
                break
            value = value * <int64_t>gauss_pow10_u64[k] + <int64_t>eight
            i += k
            if k < 8:
                break
        while i < n and 48 <= p[i] <= 57:
            value = value * 10 + (p[i] - 48)
            i += 1
            if i - start > 18:
                return -1
    if i == start or (i < n and (p[i] == 46 or p[i] == 101 or p[i] == 69)):
        return -1
    out[0] = value
    return i


cdef inline bint _quote_passes(
    QuoteBatch batch, Py_ssize_t i, int64_t min_ts_ms, int64_t max_ts_ms, bint positive_prices
) noexcept:
    cdef int64_t ts = batch._ts[i]
    cdef double bid = batch._bid[i], ask = batch._ask[i]
    if ts < min_ts_ms or ts > max_ts_ms:
        return False
    if not (isfinite(bid + ask) and isfinite(batch._bid_size[i]) and isfinite(batch._ask_size[i])):
        return False  # a finite sum needs both prices finite
    return not positive_prices or (bid > 0.0 and ask > 0.0)


cdef class FrameSpans:
    """The frames one chunk completed, as spans of that chunk: a sequence of ``bytes`` that makes no object a frame.

    What the compiled decoders made with ``spans=True`` return from
    ``feed``; the quote parsers read the spans in place, and a frame is
    turned into ``bytes`` only where something asks for it (the general
    path of a refused payload, a middleware). The first frame may have begun
    in an earlier chunk: it is held as its own ``bytes``.
    """

    cdef bytes _chunk
    cdef const char* _base
    cdef object _head  # bytes of a frame begun in an earlier chunk, or None
    cdef Py_ssize_t* _spans  # (start, length) pairs into _chunk
    cdef Py_ssize_t _count
    cdef Py_ssize_t _alloc

    def __cinit__(self):
        self._spans = NULL
        self._count = 0
        self._alloc = 0
        self._head = None

    def __dealloc__(self):
        free(self._spans)

    cdef int _add(self, Py_ssize_t start, Py_ssize_t length) except -1:
        cdef Py_ssize_t grow
        cdef Py_ssize_t* fresh
        if self._count == self._alloc:
            grow = max(64, self._alloc * 2)
            fresh = <Py_ssize_t*>realloc(self._spans, grow * 2 * sizeof(Py_ssize_t))
            if fresh == NULL:
                raise MemoryError()
            self._spans = fresh
            self._alloc = grow
        self._spans[2 * self._count] = start
        self._spans[2 * self._count + 1] = length
        self._count += 1
        return 0

    cdef inline void _at(self, Py_ssize_t k, const char** p, Py_ssize_t* n) noexcept:
        """Frame ``k`` (``0 <= k < len``) in place."""
        if self._head is not None:
            if k == 0:
                p[0] = PyBytes_AS_STRING(self._head)
                n[0] = PyBytes_GET_SIZE(self._head)
                return
            k -= 1
        p[0] = self._base + self._spans[2 * k]
        n[0] = self._spans[2 * k + 1]

    def __len__(self):
        return self._count + (self._head is not None)

    def __getitem__(self, index):
        cdef Py_ssize_t size = len(self), k
        cdef const char* p
        cdef Py_ssize_t n
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(size))]
        k = index
        if k < 0:
            k += size
        if not 0 <= k < size:
            raise IndexError("frame index out of range")
        self._at(k, &p, &n)
        return PyBytes_FromStringAndSize(p, n)

    def __iter__(self):
        cdef Py_ssize_t k
        for k in range(len(self)):
            yield self[k]

    def __eq__(self, other):
        if isinstance(other, (FrameSpans, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self):
        return f"FrameSpans({len(self)} frames)"


_Sequence.register(FrameSpans)


cdef FrameSpans _spans_of(bytes chunk):
    """An empty :class:`FrameSpans` over ``chunk``."""
    cdef FrameSpans out = FrameSpans.__new__(FrameSpans)
    out._chunk = chunk
    out._base = PyBytes_AS_STRING(chunk)
    return out


cdef inline bint _payload_at(object payloads, FrameSpans spans, Py_ssize_t k, const char** p, Py_ssize_t* n):
    """Payload ``k`` in place (a span, or a ``bytes`` item); False for an item that is not ``bytes``."""
    if spans is not None:
        spans._at(k, p, n)
        return True
    payload = payloads[k]
    if type(payload) is not bytes:
        return False
    p[0] = PyBytes_AS_STRING(payload)
    n[0] = PyBytes_GET_SIZE(payload)
    return True


cdef class _SymbolCache:
    """The ``str`` of each symbol a parser reads, from a 1024-entry cache (no object a quote)."""

    cdef list _slots

    def __cinit__(self):
        self._slots = [None] * _SYMBOL_CACHE

    cdef object get(self, const char* text, Py_ssize_t size):
        """The symbol of ``size`` ASCII bytes at ``text``."""
        cdef uint32_t h = 2166136261
        cdef Py_ssize_t k
        for k in range(size):
            h = (h ^ <unsigned char>text[k]) * 16777619
        cdef Py_ssize_t slot = h & (_SYMBOL_CACHE - 1)
        cached = self._slots[slot]
        if (
            cached is not None
            and PyUnicode_GET_LENGTH(cached) == size
            and memcmp(PyUnicode_DATA(cached), text, size) == 0
        ):
            return cached
        symbol = PyUnicode_DecodeASCII(text, size, NULL)
        self._slots[slot] = symbol
        return symbol


cdef class _QuoteParser:
    """What every quote parser holds: the key bound (symbols of 1 to ``max_key_bytes`` bytes) and the symbol cache."""

    cdef readonly Py_ssize_t max_key_bytes
    cdef _SymbolCache _symbols

    def __init__(self, Py_ssize_t max_key_bytes):
        if max_key_bytes < 1:
            raise ValueError(f"max_key_bytes must be at least 1, got {max_key_bytes}")
        self.max_key_bytes = max_key_bytes
        self._symbols = _SymbolCache()


cdef class JsonQuoteParser(_QuoteParser):
    """Reads plain JSON quote objects straight into a :class:`QuoteBatch` (the ``json`` codec's fast path).

    ``parse(payloads)`` gives the batch of the payloads it could read and
    their positions in ``payloads``; the others (an escaped or non-ASCII
    symbol, unknown or repeated fields, a symbol of more than
    ``max_key_bytes`` bytes or none, any doubt) are left to the codec's
    general path. Values are exact: floats correctly rounded as ``float()``
    reads them, an integer read as a float as ``float(int)`` converts it.
    It checks types only; the rules of SPEC section 1 are the caller's
    (``QuoteCheck.check_columns``).

    PERF: one pass over each payload in C; a symbol is looked up in a
    1024-entry cache of the ``str`` objects made so far (no object a quote).
    """

    def parse(self, payloads):
        cdef Py_ssize_t count = len(payloads), row = 0, k, i, n, name_start, value_start, key_size = 0
        cdef list symbols = []
        positions = np.empty(count, dtype=np.int64)
        ts = np.empty(count, dtype=np.int64)
        bid = np.empty(count, dtype=np.float64)
        ask = np.empty(count, dtype=np.float64)
        bid_size = np.empty(count, dtype=np.float64)
        ask_size = np.empty(count, dtype=np.float64)
        cdef int64_t[::1] pos_v = positions, ts_v = ts
        cdef double[::1] bid_v = bid, ask_v = ask, bid_size_v = bid_size, ask_size_v = ask_size
        cdef const char* p
        cdef int seen, field
        cdef double number
        cdef int64_t stamp
        cdef double values[4]
        cdef Py_ssize_t sym_start = 0, sym_size = 0
        cdef Py_ssize_t max_key = self.max_key_bytes
        cdef FrameSpans spans = payloads if type(payloads) is FrameSpans else None
        for k in range(count):
            if not _payload_at(payloads, spans, k, &p, &n):
                continue
            i = _skip_ws(p, 0, n)
            if i >= n or p[i] != 123:  # "{"
                continue
            i += 1
            seen = 0
            values[2] = 0.0
            values[3] = 0.0
            stamp = 0
            while True:
                i = _skip_ws(p, i, n)
                if i >= n or p[i] != 34:  # '"' of a field name
                    break
                field = _known_key(p, i, n, &key_size)
                if field:
                    i += key_size
                else:
                    name_start = i + 1
                    i = name_start
                    while i < n and p[i] != 34 and p[i] != 92:
                        i += 1
                    if i >= n or p[i] != 34:
                        break
                    field = _field_of(p + name_start, i - name_start)
                    i = _skip_ws(p, i + 1, n)
                    if i >= n or p[i] != 58:  # ":"
                        break
                    i += 1
                if field == 0 or seen & field:
                    break
                seen |= field
                i = _skip_ws(p, i, n)
                if field == _F_SYMBOL:
                    if i >= n or p[i] != 34:
                        break
                    value_start = i + 1
                    i = value_start
                    while i < n and 32 <= p[i] < 127 and p[i] != 34 and p[i] != 92:
                        i += 1
                    if i >= n or p[i] != 34 or not 0 < i - value_start <= max_key:
                        break
                    sym_start = value_start
                    sym_size = i - value_start
                    i += 1
                elif field == _F_TS:
                    i = _read_ts(p, i, n, &stamp)
                    if i < 0:
                        break
                else:
                    i = _read_number(p, i, n, &number)
                    if i < 0:
                        break
                    if field == _F_BID:
                        values[0] = number
                    elif field == _F_ASK:
                        values[1] = number
                    elif field == _F_BID_SIZE:
                        values[2] = number
                    else:
                        values[3] = number
                i = _skip_ws(p, i, n)
                if i < n and p[i] == 44:  # ","
                    i += 1
                    continue
                if i < n and p[i] == 125:  # "}"
                    i = _skip_ws(p, i + 1, n)
                    if i == n and seen & _F_REQUIRED == _F_REQUIRED:
                        symbols.append(self._symbols.get(p + sym_start, sym_size))
                        pos_v[row] = k
                        ts_v[row] = stamp
                        bid_v[row] = values[0]
                        ask_v[row] = values[1]
                        bid_size_v[row] = values[2]
                        ask_size_v[row] = values[3]
                        row += 1
                break
        batch = QuoteBatch(symbols, ts[:row], bid[:row], ask[:row], bid_size[:row], ask_size[:row])
        return batch, positions[:row]


# --- the csv quote codec ---------------------------------------------------


cdef class CsvQuoteParser(_QuoteParser):
    """Reads plain CSV quote rows (``symbol,bid,ask,bid_size,ask_size,ts_ms``) straight into a :class:`QuoteBatch`.

    Like :class:`JsonQuoteParser`: ``parse(payloads)`` gives the batch of
    the rows it could read and their positions; it takes only six unquoted
    fields, a printable ASCII symbol of 1 to ``max_key_bytes`` bytes, JSON
    numbers for the prices and sizes and at most 18 digits for ``ts_ms``, and
    leaves every other row (quoting, spaces, empty fields, ``nan``...) to the
    codec's general path. Values are exact: ``float()`` of the text, an
    integer as ``float(int)``.
    """

    def parse(self, payloads):
        cdef Py_ssize_t count = len(payloads), row = 0, k, i, n, f
        cdef list symbols = []
        positions = np.empty(count, dtype=np.int64)
        ts = np.empty(count, dtype=np.int64)
        bid = np.empty(count, dtype=np.float64)
        ask = np.empty(count, dtype=np.float64)
        bid_size = np.empty(count, dtype=np.float64)
        ask_size = np.empty(count, dtype=np.float64)
        cdef int64_t[::1] pos_v = positions, ts_v = ts
        cdef double[::1] bid_v = bid, ask_v = ask, bid_size_v = bid_size, ask_size_v = ask_size
        cdef const char* p
        cdef double values[4]
        cdef int64_t stamp = 0
        cdef Py_ssize_t max_key = self.max_key_bytes, sym_size
        cdef FrameSpans spans = payloads if type(payloads) is FrameSpans else None
        for k in range(count):
            if not _payload_at(payloads, spans, k, &p, &n):
                continue
            i = 0
            while i < n and 32 <= p[i] < 127 and p[i] != 44 and p[i] != 34:  # not "," or '"'
                i += 1
            if i == 0 or i > max_key or i >= n or p[i] != 44:
                continue
            sym_size = i
            i += 1
            for f in range(4):
                i = _read_number(p, i, n, &values[f])
                if i < 0 or i >= n or p[i] != 44:
                    break
                i += 1
            else:
                i = _read_ts(p, i, n, &stamp)
                if i == n:
                    symbols.append(self._symbols.get(p, sym_size))
                    pos_v[row] = k
                    ts_v[row] = stamp
                    bid_v[row] = values[0]
                    ask_v[row] = values[1]
                    bid_size_v[row] = values[2]
                    ask_size_v[row] = values[3]
                    row += 1
        batch = QuoteBatch(symbols, ts[:row], bid[:row], ask[:row], bid_size[:row], ask_size[:row])
        return batch, positions[:row]


def encode_csv_quotes(QuoteBatch batch, framing=None):
    """One CSV row per quote, as the ``csv`` codec writes it: floats as ``repr``, the symbol quoted when RFC 4180 says so.

    With ``framing`` (``"lines"``, ``"length-prefixed"``) the rows come framed
    in one ``bytes``, as the framing's encoder would frame the list.
    Raises ``UnicodeEncodeError`` for a symbol that is not valid UTF-8 (a lone surrogate).
    """
    cdef _Writer w = _new_writer()
    cdef _Names names = _Names(True)
    cdef int mode = _framing_mode(framing)
    cdef Py_ssize_t i, start, n = len(batch.symbols)
    cdef list out = [None] * n if mode == _EACH else None
    cdef bytes name
    try:
        _reserve_framed(&w, mode, n, _CSV_ROW_BYTES)
        for i in range(n):
            start = _payload_begin(&w, mode)
            name = names.text(batch.symbols[i])
            _w_raw(&w, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
            _w_raw(&w, ",", 1)
            _w_float(&w, batch._bid[i], 0, False)
            _w_raw(&w, ",", 1)
            _w_float(&w, batch._ask[i], 1, False)
            _w_raw(&w, ",", 1)
            _w_float(&w, batch._bid_size[i], 2, False)
            _w_raw(&w, ",", 1)
            _w_float(&w, batch._ask_size[i], 3, False)
            _w_raw(&w, ",", 1)
            _w_int(&w, batch._ts[i])
            _payload_end(&w, mode, start, out, i)
        return _payloads(&w, mode, out)
    finally:
        free(w.buf)


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
    :class:`FrameTooLarge`, also while it is still arriving. With ``spans``
    a ``bytes`` chunk's frames come back as :class:`FrameSpans` (no
    ``bytes`` a frame), otherwise as a list.
    """

    cdef readonly Py_ssize_t max_frame_bytes
    cdef readonly bint spans
    cdef _Pending _pending

    def __init__(self, Py_ssize_t max_frame_bytes=DEFAULT_MAX_FRAME_BYTES, bint spans=False):
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        self.max_frame_bytes = max_frame_bytes
        self.spans = spans
        # The tail may hold one extra byte: a "\r" a later "\n" strips.
        self._pending = _Pending(max_frame_bytes + 1)

    @property
    def buffered(self):
        return self._pending.size

    def feed(self, chunk):
        cdef Py_buffer view
        cdef FrameSpans out
        cdef list frames = []
        if self.spans and type(chunk) is bytes:
            out = _spans_of(chunk)
            try:
                self._feed(<const unsigned char*>out._base, PyBytes_GET_SIZE(chunk), out, frames)
            except FrameTooLarge as exc:
                exc.frames = out  # the frames before it (SPEC section 6)
                raise
            return out
        PyObject_GetBuffer(chunk, &view, PyBUF_SIMPLE)
        try:
            self._feed(<const unsigned char*>view.buf, view.len, None, frames)
        except FrameTooLarge as exc:
            exc.frames = frames
            raise
        finally:
            PyBuffer_Release(&view)
        return frames

    cdef inline int _check_tail(self, Py_ssize_t size, unsigned char last) except -1:
        cdef Py_ssize_t limit = self.max_frame_bytes
        if size > limit and not (size == limit + 1 and last == _CR):
            self._pending.clear()
            raise FrameTooLarge(f"unterminated line of {size} bytes exceeds max_frame_bytes={limit}")
        return 0

    cdef inline int _too_large(self, Py_ssize_t size) except -1:
        self._pending.clear()
        raise FrameTooLarge(f"line of {size} bytes exceeds max_frame_bytes={self.max_frame_bytes}")

    cdef int _feed(self, const unsigned char* data, Py_ssize_t n, FrameSpans spans, list frames) except -1:
        """Add the frames ``data`` completes to ``frames`` or (``spans`` given) to ``spans``."""
        cdef Py_ssize_t limit = self.max_frame_bytes
        cdef Py_ssize_t pos = 0, end, length, head, total
        cdef const unsigned char* nl
        cdef _Pending pending = self._pending
        cdef bytes frame
        cdef char* out
        if n == 0:
            return 0
        if pending.size:
            nl = <const unsigned char*>memchr(data, _NL, n)
            if nl == NULL:
                self._check_tail(pending.size + n, data[n - 1])
                pending.extend(data, n)
                return 0
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
                if spans is not None:
                    spans._head = frame
                else:
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
                if spans is not None:
                    spans._add(pos, length)
                else:
                    frames.append(PyBytes_FromStringAndSize(<const char*>data + pos, length))
            pos = end + 1
        if pos < n:
            self._check_tail(n - pos, data[n - 1])
            pending.extend(data + pos, n - pos)
        return 0


cdef inline uint32_t _read_u32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef class LengthPrefixedDecoder:
    """Incremental decoder of ``length-prefixed`` framing: u32 BE length, payload (``spans``: as :class:`LineDecoder`)."""

    cdef readonly Py_ssize_t max_frame_bytes
    cdef readonly bint spans
    cdef _Pending _pending

    def __init__(self, Py_ssize_t max_frame_bytes=DEFAULT_MAX_FRAME_BYTES, bint spans=False):
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        self.max_frame_bytes = max_frame_bytes
        self.spans = spans
        self._pending = _Pending(max_frame_bytes + 4)

    @property
    def buffered(self):
        return self._pending.size

    def feed(self, chunk):
        cdef Py_buffer view
        cdef FrameSpans out
        cdef list frames = []
        if self.spans and type(chunk) is bytes:
            out = _spans_of(chunk)
            try:
                self._feed(<const unsigned char*>out._base, PyBytes_GET_SIZE(chunk), out, frames)
            except FrameTooLarge as exc:
                exc.frames = out  # the frames before it (SPEC section 6)
                raise
            return out
        PyObject_GetBuffer(chunk, &view, PyBUF_SIMPLE)
        try:
            self._feed(<const unsigned char*>view.buf, view.len, None, frames)
        except FrameTooLarge as exc:
            exc.frames = frames
            raise
        finally:
            PyBuffer_Release(&view)
        return frames

    cdef inline int _check_size(self, Py_ssize_t size) except -1:
        if size > self.max_frame_bytes:
            self._pending.clear()
            raise FrameTooLarge(f"frame of {size} bytes exceeds max_frame_bytes={self.max_frame_bytes}")
        return 0

    cdef int _feed(self, const unsigned char* data, Py_ssize_t n, FrameSpans spans, list frames) except -1:
        """Add the frames ``data`` completes to ``frames`` or (``spans`` given) to ``spans``."""
        cdef Py_ssize_t pos = 0, take, size
        cdef _Pending pending = self._pending
        if pending.size:
            # Finish the frame that began in an earlier chunk.
            if pending.size < 4:
                take = min(4 - pending.size, n)
                pending.extend(data, take)
                pos = take
                if pending.size < 4:
                    return 0
            size = _read_u32(pending.buf)
            self._check_size(size)
            take = min(4 + size - pending.size, n - pos)
            pending.extend(data + pos, take)
            pos += take
            if pending.size < 4 + size:
                return 0
            frame = PyBytes_FromStringAndSize(<const char*>pending.buf + 4, size)
            if spans is not None:
                spans._head = frame
            else:
                frames.append(frame)
            pending.clear()
        while n - pos >= 4:
            size = _read_u32(data + pos)
            self._check_size(size)
            if n - pos - 4 < size:
                break
            if spans is not None:
                spans._add(pos + 4, size)
            else:
                frames.append(PyBytes_FromStringAndSize(<const char*>data + pos + 4, size))
            pos += 4 + size
        if pos < n:
            pending.extend(data + pos, n - pos)
        return 0


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


def encode_checked_frames(bytes lines not None):
    """The log frames (u32 big-endian length, CRC-32, payload) of each ``\\n``-ended line of ``lines``.

    Returns ``(frames, count)``. A last line without its newline is an error:
    the caller hands whole lines (JSON lines, which hold no newline inside).
    """
    cdef const unsigned char* data = <const unsigned char*>PyBytes_AS_STRING(lines)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(lines), pos = 0, count = 0, n
    cdef const unsigned char* end
    cdef unsigned char* out
    cdef bytes result
    if size and data[size - 1] != _NL:
        raise ValueError("the last line has no newline")
    end = data + size
    while data + pos < end:
        n = <const unsigned char*>memchr(data + pos, _NL, size - pos) - (data + pos)
        if n > _MAX_PREFIX:
            raise ValueError("payload too large for a u32 length prefix")
        pos += n + 1
        count += 1
    result = PyBytes_FromStringAndSize(NULL, size - count + 8 * count)  # each newline becomes an 8-byte header
    out = <unsigned char*>PyBytes_AS_STRING(result)
    pos = 0
    while pos < size:
        n = <const unsigned char*>memchr(data + pos, _NL, size - pos) - (data + pos)
        memcpy(out + 8, data + pos, n)
        _put_frame_header(out, n)
        out += n + 8
        pos += n + 1
    return result, count


cdef inline void _put_frame_header(unsigned char* out, Py_ssize_t n) noexcept:
    """Fill the 8 bytes before a payload of ``n`` bytes at ``out + 8``: its length and CRC-32, big-endian."""
    cdef uint32_t crc = gauss_crc32(out + 8, n)
    out[0] = (n >> 24) & 0xFF
    out[1] = (n >> 16) & 0xFF
    out[2] = (n >> 8) & 0xFF
    out[3] = n & 0xFF
    out[4] = (crc >> 24) & 0xFF
    out[5] = (crc >> 16) & 0xFF
    out[6] = (crc >> 8) & 0xFF
    out[7] = crc & 0xFF


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


cdef enum:
    _INV_NEXT = 0x40000000  # in a slot's key id: the next record of its key is older (one of ``_kinv``)
    _KID_MASK = 0x3FFFFFFF


_NO_SLOTS = np.empty(0, dtype=np.intp)
_NUMPY_HUGE_PAGES_FROM = 1 << 22  # numpy asks the kernel for transparent huge pages from 4 MiB on
_NO_HUGE_PAGES = getattr(mmap, "MADV_NOHUGEPAGE", None)  # a Linux constant


def _ring_column(Py_ssize_t n, dtype):
    """A zeroed column of ``n`` slots whose memory the kernel maps a 4 KiB page at a time, at first write.

    PERF: numpy madvises a large array into transparent huge pages, so the
    ring's first write into each 2 MiB page made the kernel zero the whole
    page in that write: 4-6 ms stalls of ingest on this machine, the
    end-to-end p99. A private anonymous map, kept out of huge pages, costs
    a page fault of a few microseconds every 4 KiB instead.
    """
    nbytes = n * np.dtype(dtype).itemsize
    if nbytes < _NUMPY_HUGE_PAGES_FROM:
        return np.zeros(n, dtype=dtype)
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)  # private: a forked child never writes into it
    if _NO_HUGE_PAGES is not None:
        memory.madvise(_NO_HUGE_PAGES)
    return np.frombuffer(memory, dtype=dtype, count=n)


cdef class _RingIndex:
    """Slot bookkeeping shared by both ring layouts.

    Slots are written round-robin, so ``seq`` maps to slot
    ``(seq - 1) % capacity``. Each key has an id and a chain of its slots,
    linked newest to oldest (``_prev``), of ``_kcount`` slots: an evicted slot
    is always the oldest of its key's, so the chain is walked for that many
    steps from ``_tail`` and a link into an evicted slot is never followed.
    A slot's ``_kid`` carries ``_INV_NEXT``: its key's next record is older. ``_inv`` / ``_kinv`` count neighbours out of
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
    cdef object _ts_arr, _kid_arr, _prev_arr
    cdef int64_t* _ts
    cdef int32_t* _kid
    cdef int32_t* _prev
    # per key id (C arrays, grown on demand)
    cdef int32_t* _tail
    cdef int64_t* _kcount
    cdef int64_t* _kinv
    cdef Py_ssize_t _kalloc
    cdef dict _key_ids
    cdef list _key_names
    cdef list _free_ids
    # key lookup cache: consecutive records often share the key object
    cdef _RecentIds _recent

    def __cinit__(self, *args, **kwargs):
        self._recent = _RecentIds()
        self._tail = NULL
        self._kcount = NULL
        self._kinv = NULL
        self._kalloc = 0

    def __dealloc__(self):
        free(self._tail)
        free(self._kcount)
        free(self._kinv)

    def __init__(self, Py_ssize_t capacity):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if capacity > _KID_MASK:
            raise ValueError("capacity must be below 2**30")
        self.capacity = capacity
        self._count = 0
        self._first_seq = 0
        self._last_seq = 0
        self._inv = 0
        self._ts_arr = _ring_column(capacity, np.int64)
        self._kid_arr = _ring_column(capacity, np.int32)
        self._prev_arr = np.full(capacity, -1, dtype=np.int32)
        self._ts = <int64_t*>_data_ptr(self._ts_arr)
        self._kid = <int32_t*>_data_ptr(self._kid_arr)
        self._prev = <int32_t*>_data_ptr(self._prev_arr)
        self._key_ids = {}
        self._key_names = []
        self._free_ids = []

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
        cdef int32_t kid = self._recent.find(key)
        cdef PyObject* found
        if kid >= 0:
            return kid
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
            self._tail[kid] = -1
            self._kcount[kid] = 0
            self._kinv[kid] = 0
        self._recent.remember(key, kid)
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
        cdef int32_t old, tagged
        if self._count == 0:
            self._first_seq = seq
            return (seq - 1) % cap
        # PERF: seqs are consecutive, so the slot follows the last one (no division).
        slot = self._last_slot + 1
        if slot == cap:
            slot = 0
        if self._count < cap:
            return slot
        # Full: the slot holds the oldest record (first_seq), the oldest of its key's chain.
        tagged = self._kid[slot]
        old = tagged & _KID_MASK
        if tagged & _INV_NEXT:
            self._kinv[old] -= 1
        self._kcount[old] -= 1
        if self._kcount[old] == 0:
            self._tail[old] = -1
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
        self._recent.forget(kid)
        return 0

    cdef inline void _link(self, Py_ssize_t slot, int32_t kid, int64_t ts, int64_t seq) noexcept:
        """Store ``ts`` and the key of ``seq`` in its (free) slot and chain it."""
        cdef int32_t tail = self._tail[kid]
        if self._count > 0 and ts < self._ts[self._last_slot]:
            self._inv += 1
        self._ts[slot] = ts
        self._kid[slot] = kid
        self._prev[slot] = tail
        if tail >= 0 and ts < self._ts[tail]:
            self._kinv[kid] += 1
            self._kid[tail] |= _INV_NEXT
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
        """Slots (an intp array) of the most recent ``limit`` matches, ascending by (ts, seq), and truncated."""
        cdef bint has_lo = from_ms is not None
        cdef bint has_hi = to_ms is not None
        cdef bint has_since = since_seq is not None
        cdef int64_t lo = 0, hi = 0, since = 0
        cdef int32_t kid = -1
        cdef bint by_key = key is not None
        cdef bint ordered
        cdef Py_ssize_t cap = self.capacity, slot, found = 0, keep, i, avail, chain_left = 0
        cdef int64_t seq, t, a, b, mid
        cdef _Match* matches
        slots = _NO_SLOTS
        cdef Py_ssize_t[::1] out
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
            avail = chain_left = self._kcount[kid]
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
                    chain_left -= 1
                    if chain_left == 0:  # the chain's oldest record: the link before it is stale
                        break
                    slot = self._prev[slot]
                else:
                    if seq == self._first_seq:
                        break
                    slot = (slot + cap - 1) % cap
            truncated = found > limit
            keep = min(found, limit)
            slots = np.empty(keep, dtype=np.intp)
            out = slots
            if ordered:
                # Matches are newest first: keep the first ``limit``, reversed.
                for i in range(keep):
                    out[i] = (matches[keep - 1 - i].seq - 1) % cap
            else:
                qsort(matches, found, sizeof(_Match), _cmp_match)
                for i in range(keep):
                    out[i] = (matches[found - keep + i].seq - 1) % cap
        finally:
            free(matches)
        return slots, truncated

    cdef Py_ssize_t _latest_of(self, int32_t kid) noexcept:
        """The slot of the greatest (ts, seq) of key ``kid``."""
        cdef Py_ssize_t slot = self._tail[kid], best = slot
        cdef int64_t left = self._kcount[kid] - 1
        if self._kinv[kid] == 0:
            return best
        while left > 0:
            # Walking back, seq falls: a tie on ts keeps the newer ``best``.
            slot = self._prev[slot]
            left -= 1
            if self._ts[slot] > self._ts[best]:
                best = slot
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
        return [records[s] for s in slots.tolist()], truncated

    def latest(self, key=None):
        records = self._records
        return [records[s] for s in self._latest_slots(key)]


cdef class QuoteRing(_RingIndex):
    """Columnar ring for quotes: numpy columns, 48 bytes a quote key included.

    A slot holds a 4-byte key id (interned in a key table), ts, the four
    prices and sizes, and the 4-byte link to its key's previous record; its
    seq follows from the slot (seqs are consecutive). Query results
    are rebuilt as :class:`TopicRecord` with the six quote fields.
    """

    cdef object _bid_arr, _ask_arr, _bid_size_arr, _ask_size_arr
    cdef double* _bid
    cdef double* _ask
    cdef double* _bid_size
    cdef double* _ask_size

    def __init__(self, Py_ssize_t capacity):
        _RingIndex.__init__(self, capacity)
        self._bid_arr = _ring_column(capacity, np.float64)
        self._ask_arr = _ring_column(capacity, np.float64)
        self._bid_size_arr = _ring_column(capacity, np.float64)
        self._ask_size_arr = _ring_column(capacity, np.float64)
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
                self._kid_arr, self._ts_arr, self._prev_arr,
                self._bid_arr, self._ask_arr, self._bid_size_arr, self._ask_size_arr,
            )
        )

    def append(self, records):
        """Append quote records (``data`` must hold bid, ask, bid_size, ask_size), or a numbered :class:`QuoteBatch`."""
        if type(records) is QuoteBatch:
            self._append_batch(records)
            return
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

    cdef int _append_batch(self, QuoteBatch batch) except -1:
        cdef Py_ssize_t n = len(batch.symbols), i, slot
        cdef int64_t seq
        cdef list symbols = batch.symbols
        for i in range(n):
            seq = batch._seq(i)
            self._check_seq(seq)
            slot = self._evict_for(seq)
            self._link(slot, self._key_id(symbols[i]), batch._ts[i], seq)
            self._bid[slot] = batch._bid[i]
            self._ask[slot] = batch._ask[i]
            self._bid_size[slot] = batch._bid_size[i]
            self._ask_size[slot] = batch._ask_size[i]
        return 0

    cdef QuoteBatch _gather(self, object slots):
        """The quotes of ``slots`` (intp), in that order, with their seqs: answers are columns too."""
        idx = np.asarray(slots, dtype=np.intp)
        cdef const Py_ssize_t[::1] idx_v = idx
        cdef Py_ssize_t n = len(idx), i, slot
        cdef list symbols = [None] * n
        cdef list names = self._key_names
        seqs = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] seqs_v = seqs
        for i in range(n):
            slot = idx_v[i]
            symbols[i] = names[self._kid[slot] & _KID_MASK]
            seqs_v[i] = self._seq_of(slot)
        return QuoteBatch(
            symbols, self._ts_arr[idx], self._bid_arr[idx], self._ask_arr[idx],
            self._bid_size_arr[idx], self._ask_size_arr[idx], seqs=seqs,
        )

    def query(self, key=None, from_ms=None, to_ms=None, since_seq=None, Py_ssize_t limit=1000):
        slots, truncated = self._match(key, from_ms, to_ms, since_seq, limit)
        return self._gather(slots), truncated

    def latest(self, key=None):
        return self._gather(self._latest_slots(key))


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

    With ``coalesce_open`` the newest bucket of each key and timeframe (the
    open candle) is not reported by :meth:`update` while it stays the newest:
    its changes are held until :meth:`take_open`, and a held change goes out
    with the batch that opens a newer bucket. So a batch over many symbols
    reports only the candles it closed or changed behind the newest.
    """

    cdef readonly list timeframes_ms
    cdef readonly Py_ssize_t hold_buckets
    cdef readonly bint coalesce_open
    cdef Py_ssize_t _ntf
    cdef int64_t* _widths
    cdef int64_t* _late
    cdef dict _key_ids
    cdef list _key_names
    cdef list _free_ids  # ids of forgotten keys, reused before new ones
    cdef _RecentIds _recent
    cdef Py_ssize_t _kalloc
    cdef _Bucket* _buckets  # [key][tf][hold], ascending by start
    cdef int32_t* _nb  # buckets held per (key, tf)
    cdef _Change* _changes
    cdef Py_ssize_t _nchanges
    cdef Py_ssize_t _challoc
    cdef int64_t _gen
    cdef int64_t* _key_gen  # per key id: the last update that saw it
    cdef readonly list batch_keys
    cdef int64_t* _open_mark  # per (key, tf): 1 + its entry in _open_list while its newest bucket has held changes, else 0
    cdef int64_t* _open_list  # states whose open candle changed since take_open, first change first (stale entries skipped)
    cdef Py_ssize_t _nopen
    cdef Py_ssize_t _openalloc

    def __cinit__(self, *args, **kwargs):
        self._recent = _RecentIds()
        self._widths = NULL
        self._late = NULL
        self._buckets = NULL
        self._nb = NULL
        self._changes = NULL
        self._open_mark = NULL
        self._open_list = NULL
        self._key_gen = NULL
        self._kalloc = 0
        self._challoc = 0
        self._nopen = 0
        self._openalloc = 0

    def __dealloc__(self):
        free(self._widths)
        free(self._late)
        free(self._buckets)
        free(self._nb)
        free(self._changes)
        free(self._open_mark)
        free(self._open_list)
        free(self._key_gen)

    def __init__(self, timeframes_ms, Py_ssize_t hold_buckets=2, bint coalesce_open=False):
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
        self.coalesce_open = coalesce_open
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
        self.batch_keys = []

    @property
    def late_counts(self):
        """Late quotes so far, per timeframe index."""
        return [self._late[t] for t in range(self._ntf)]

    cdef int32_t _key_id(self, object key) except -1:
        cdef int32_t kid = self._recent.find(key)
        if kid < 0:
            kid = self._find_or_add_key(key)
            self._recent.remember(key, kid)
        return kid

    cdef int32_t _find_or_add_key(self, object key) except -1:
        cdef PyObject* found = PyDict_GetItem(self._key_ids, key)
        cdef Py_ssize_t kid, n, first, i
        cdef _Bucket* buckets
        cdef int32_t* nb
        cdef int64_t* marks
        cdef int64_t* gens
        if found != NULL:
            return <int32_t><object>found
        if self._free_ids:
            kid = self._free_ids.pop()
            first = kid * self._ntf
            for i in range(first, first + self._ntf):
                self._nb[i] = 0
                self._open_mark[i] = 0
            self._key_gen[kid] = 0
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
            marks = <int64_t*>realloc(self._open_mark, n * self._ntf * sizeof(int64_t))
            if marks == NULL:
                raise MemoryError()
            self._open_mark = marks
            gens = <int64_t*>realloc(self._key_gen, n * sizeof(int64_t))
            if gens == NULL:
                raise MemoryError()
            self._key_gen = gens
            self._kalloc = n
        first = kid * self._ntf
        for i in range(first, first + self._ntf):
            self._nb[i] = 0
            self._open_mark[i] = 0
        self._key_gen[kid] = 0
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
        :attr:`batch_keys` then lists the batch's distinct keys.
        """
        cdef Py_ssize_t n = len(keys)
        self.batch_keys = []
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
        cdef list seen = []
        self._gen += 1
        self._nchanges = 0
        for i in range(n):
            key = key_list[i]
            if key is not last_key or kid < 0:
                kid = self._key_id(key)
                last_key = key
                if self._key_gen[kid] != self._gen:
                    self._key_gen[kid] = self._gen
                    seen.append(key)
            ts = ts_v[i]
            price = (bid_v[i] + ask_v[i]) / 2.0
            for t in range(ntf):
                width = self._widths[t]
                state = kid * ntf + t
                bk = self._buckets + state * hold
                nb = self._nb[state]
                # PERF: a quote in its key's newest bucket (nearly every one) needs no division; starts are on the grid
                if nb and ts >= bk[nb - 1].start and <uint64_t>ts - <uint64_t>bk[nb - 1].start < <uint64_t>width:
                    _bucket_add(&bk[nb - 1], ts, price)
                    self._changed(state, &bk[nb - 1])
                    continue
                r = ts % width
                if r < 0:
                    r += width
                start = ts - r
                if nb == 0:
                    _bucket_init(bk, start, ts, price)
                    self._nb[state] = 1
                    self._changed(state, bk)
                    continue
                newest = bk[nb - 1].start
                if start > newest:
                    if self._open_mark[state]:  # the open candle's held changes go out now that it closes
                        self._changed(state, &bk[nb - 1])
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
        self.batch_keys = seen
        return self._emit(), late

    cdef int _hold_open(self, Py_ssize_t state) except -1:
        """Note that the open candle of ``state`` has changes :meth:`take_open` will report."""
        cdef Py_ssize_t n
        cdef int64_t* grown
        if self._open_mark[state]:
            return 0
        if self._nopen == self._openalloc:
            n = max(64, self._openalloc * 2)
            grown = <int64_t*>realloc(self._open_list, n * sizeof(int64_t))
            if grown == NULL:
                raise MemoryError()
            self._open_list = grown
            self._openalloc = n
        self._open_list[self._nopen] = state
        self._nopen += 1
        self._open_mark[state] = self._nopen
        return 0

    cdef tuple _candle(self, Py_ssize_t state, _Bucket* b, bint is_open):
        return (
            self._key_names[state // self._ntf],
            self._widths[state % self._ntf],
            b.start,
            b.open,
            b.high,
            b.low,
            b.close,
            b.ticks,
            is_open,
        )

    cdef list _emit(self):
        """The candles changed in this batch, in order of their first change (open ones held with ``coalesce_open``)."""
        cdef list candles = []
        cdef Py_ssize_t c, j, nb, hold = self.hold_buckets
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
            if is_open and self.coalesce_open:
                self._hold_open(ch.state)
                continue
            candles.append(self._candle(ch.state, b, is_open))
        self._nchanges = 0
        return candles

    def take_open(self, key=None):
        """The open candles changed since they were last taken (of ``key`` only, if given), each once.

        With ``coalesce_open``, what the processor publishes every interval
        (and, for one key, before it forgets it). In order of first change.
        """
        cdef list candles = []
        cdef Py_ssize_t i, t, state, first, hold = self.hold_buckets
        cdef PyObject* found
        if key is not None:
            found = PyDict_GetItem(self._key_ids, key)
            if found == NULL:
                return candles
            first = (<Py_ssize_t><object>found) * self._ntf
            for state in range(first, first + self._ntf):
                if self._open_mark[state]:
                    self._open_mark[state] = 0
                    candles.append(self._candle(state, self._buckets + state * hold + self._nb[state] - 1, True))
            return candles
        for i in range(self._nopen):
            state = self._open_list[i]
            if self._open_mark[state] == i + 1:
                self._open_mark[state] = 0
                candles.append(self._candle(state, self._buckets + state * hold + self._nb[state] - 1, True))
        self._nopen = 0
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
        """Drop every bucket held for ``key`` (True if it had any), held open changes included; its next quote starts afresh."""
        cdef PyObject* found = PyDict_GetItem(self._key_ids, key)
        cdef Py_ssize_t kid, i
        if found == NULL:
            return False
        kid = <Py_ssize_t><object>found
        for i in range(kid * self._ntf, (kid + 1) * self._ntf):
            self._open_mark[i] = 0
        del self._key_ids[key]
        self._key_names[kid] = None
        self._free_ids.append(kid)
        self._recent.forget(<int32_t>kid)
        return True

    def seed(self, key, timeframe_ms, start_ms, open, high, low, close, ticks):
        """Hold a stored candle as the bucket ``start_ms`` of ``key``: quotes that follow extend it.

        For a symbol coming back after :meth:`forget` (a key with no held open
        changes), so that its candles go on from what was stored instead of
        starting afresh. The candle's
        first and last quote times are not stored: later quotes of the bucket
        set its close, none replaces its open. Returns False, changing
        nothing, when that bucket is held already, is older than the held
        window or does not start on the timeframe's grid (a multiple of
        ``timeframe_ms``: it is no candle of this timeframe).
        """
        cdef Py_ssize_t t = self.timeframes_ms.index(timeframe_ms)
        cdef int64_t start = start_ms, width = self._widths[t]
        cdef int64_t count = ticks
        cdef double o = open, h = high, l = low, c = close
        cdef Py_ssize_t hold = self.hold_buckets, state, nb, j, drop
        cdef _Bucket* bk
        if count < 1:
            raise ValueError("a stored candle has at least one tick")
        if start % width:
            return False
        state = self._key_id(key) * self._ntf + t
        bk = self._buckets + state * hold
        nb = self._nb[state]
        if nb and start < bk[nb - 1].start - (hold - 1) * width:
            return False
        j = 0
        while j < nb and bk[j].start < start:
            j += 1
        if j < nb and bk[j].start == start:
            return False
        if j == nb and nb:  # the newest bucket now: the window moves with it
            drop = 0
            while drop < nb and bk[drop].start < start - (hold - 1) * width:
                drop += 1
            if drop:
                nb -= drop
                j -= drop
                memmove(bk, bk + drop, nb * sizeof(_Bucket))
        memmove(bk + j + 1, bk + j, (nb - j) * sizeof(_Bucket))
        _bucket_init(&bk[j], start, start, o)
        bk[j].high = h
        bk[j].low = l
        bk[j].close = c
        bk[j].ticks = count
        self._nb[state] = nb + 1
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


include "_codecs.pxi"
