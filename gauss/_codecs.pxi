# Included by _core.pyx: the compiled quote codecs of the binary formats (avro, protobuf).
# Their pure twins are gauss/_pycodecs.py; names are exported through _core.pyx's __all__.
#
# PERF: a datum is read and written in one pass over C bytes: varints by
# hand, doubles assembled from (or split into) their 8 little-endian bytes
# (right on any host; the compiler folds the shifts into one load or store),
# a symbol's str from the parsers' 1024-entry cache, a symbol's encoded head
# made once per distinct symbol of a batch.


# --- shared ------------------------------------------------------------------


cdef struct _BinaryQuote:
    Py_ssize_t sym_start
    Py_ssize_t sym_size
    int64_t ts
    double bid
    double ask
    double bid_size
    double ask_size


ctypedef bint (*_QuoteReader)(const unsigned char* p, Py_ssize_t n, Py_ssize_t max_key, _BinaryQuote* q) noexcept nogil


cdef inline Py_ssize_t _varint_at(const unsigned char* p, Py_ssize_t i, Py_ssize_t n, uint64_t* out) noexcept nogil:
    """Read the base-128 varint at ``p[i]``; its end, or -1 (truncated, or more than 64 bits).

    At most 10 bytes and the 10th holding bit 63 only: fastavro and protobuf
    silently drop what lies beyond, so such a varint is left to them.
    """
    cdef uint64_t value = 0, b
    cdef int shift = 0
    while i < n:
        b = p[i]
        i += 1
        if shift == 63:
            if b > 1:
                return -1
            out[0] = value | (b << 63)
            return i
        value |= (b & 0x7F) << shift
        if b < 0x80:
            out[0] = value
            return i
        shift += 7
    return -1


cdef inline double _le_double(const unsigned char* p) noexcept nogil:
    """The double of the 8 little-endian bytes at ``p``, every bit kept (NaN payloads too)."""
    cdef uint64_t u = (
        <uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24)
        | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40) | (<uint64_t>p[6] << 48) | (<uint64_t>p[7] << 56)
    )
    cdef double x
    memcpy(&x, &u, 8)
    return x


cdef inline bint _printable(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n):
        if p[k] < 32 or p[k] > 126:
            return False
    return True


cdef inline int _w_varint(_Writer* w, uint64_t value) except -1:
    cdef unsigned char[10] out
    cdef int k = 0
    while value > 0x7F:
        out[k] = <unsigned char>((value & 0x7F) | 0x80)
        value >>= 7
        k += 1
    out[k] = <unsigned char>value
    return _w_raw(w, <const char*>out, k + 1)


cdef inline int _w_le_double(_Writer* w, uint64_t bits) except -1:
    """Write a double's bits as 8 little-endian bytes."""
    _w_reserve(w, 8)
    cdef unsigned char* out = <unsigned char*>(w.buf + w.size)
    out[0] = <unsigned char>bits
    out[1] = <unsigned char>(bits >> 8)
    out[2] = <unsigned char>(bits >> 16)
    out[3] = <unsigned char>(bits >> 24)
    out[4] = <unsigned char>(bits >> 32)
    out[5] = <unsigned char>(bits >> 40)
    out[6] = <unsigned char>(bits >> 48)
    out[7] = <unsigned char>(bits >> 56)
    w.size += 8
    return 0


cdef inline uint64_t _bits(double x) noexcept nogil:
    cdef uint64_t u
    memcpy(&u, &x, 8)
    return u


cdef bytes _utf8(object symbol):
    """The UTF-8 of a batch's symbol; ``TypeError`` if not a ``str``, ``UnicodeEncodeError`` for a lone surrogate."""
    if not isinstance(symbol, str):
        raise TypeError(f"symbol must be a string, got {symbol!r}")
    return (<str>symbol).encode("utf-8")


cdef class _BinaryQuoteParser(_QuoteParser):
    """What the binary quote parsers share: the key bound, the symbol cache, the loop over payloads.

    ``parse(payloads)`` gives the batch of the payloads the format's reader
    took and their positions in ``payloads``; it takes ``bytes`` only and a
    printable ASCII symbol of 1 to ``max_key_bytes`` bytes, and leaves any
    doubt to the codec's general path. It checks types only; the rules of
    SPEC section 1 are the caller's (``QuoteCheck.check_columns``).
    """

    cdef tuple _parse(self, object payloads, _QuoteReader read):
        cdef Py_ssize_t count = len(payloads), row = 0, k
        cdef list symbols = []
        positions = np.empty(count, dtype=np.int64)
        ts = np.empty(count, dtype=np.int64)
        bid = np.empty(count, dtype=np.float64)
        ask = np.empty(count, dtype=np.float64)
        bid_size = np.empty(count, dtype=np.float64)
        ask_size = np.empty(count, dtype=np.float64)
        cdef int64_t[::1] pos_v = positions, ts_v = ts
        cdef double[::1] bid_v = bid, ask_v = ask, bid_size_v = bid_size, ask_size_v = ask_size
        cdef Py_ssize_t max_key = self.max_key_bytes
        cdef const char* p
        cdef Py_ssize_t n
        cdef _BinaryQuote q
        cdef FrameSpans spans = payloads if type(payloads) is FrameSpans else None
        for k in range(count):
            if not _payload_at(payloads, spans, k, &p, &n):
                continue
            if not read(<const unsigned char*>p, n, max_key, &q):
                continue
            symbols.append(self._symbols.get(p + q.sym_start, q.sym_size))
            pos_v[row] = k
            ts_v[row] = q.ts
            bid_v[row] = q.bid
            ask_v[row] = q.ask
            bid_size_v[row] = q.bid_size
            ask_size_v[row] = q.ask_size
            row += 1
        batch = QuoteBatch(symbols, ts[:row], bid[:row], ask[:row], bid_size[:row], ask_size[:row])
        return batch, positions[:row]


# --- avro --------------------------------------------------------------------


cdef bint _read_avro_quote(const unsigned char* p, Py_ssize_t n, Py_ssize_t max_key, _BinaryQuote* q) noexcept nogil:
    """A datum of schemas/quote.avsc filling ``p[:n]`` exactly: length, symbol, 4 doubles, zigzag ts_ms."""
    cdef uint64_t z
    cdef Py_ssize_t size, i = _varint_at(p, 0, n, &z)
    if i < 0 or z == 0 or z & 1 or (z >> 1) > <uint64_t>max_key:  # an empty or negative length, or too long
        return False
    size = <Py_ssize_t>(z >> 1)
    if n - i < size + 33 or not _printable(p + i, size):  # 4 doubles and one varint byte at least must follow
        return False
    q.sym_start = i
    q.sym_size = size
    i += size
    q.bid = _le_double(p + i)
    q.ask = _le_double(p + i + 8)
    q.bid_size = _le_double(p + i + 16)
    q.ask_size = _le_double(p + i + 24)
    if _varint_at(p, i + 32, n, &z) != n:
        return False
    q.ts = <int64_t>((z >> 1) ^ (0 - (z & 1)))
    return True


cdef class AvroQuoteParser(_BinaryQuoteParser):
    """Reads schemaless Avro datums of the shipped quote schema straight into a :class:`QuoteBatch` (the ``avro`` codec's fast path).

    It refuses what is not exactly that layout consumed to its last byte, a
    varint of more than 64 bits, a symbol not printable ASCII; fastavro decides those.
    """

    def parse(self, payloads):
        return self._parse(payloads, _read_avro_quote)


def encode_avro_quotes(QuoteBatch batch not None, framing=None):
    """One schemaless datum of schemas/quote.avsc per quote: fastavro's ``schemaless_writer`` bytes.

    ``framing``: as :func:`encode_csv_quotes`.
    Raises ``TypeError`` for a symbol that is not a ``str``, ``UnicodeEncodeError`` for a lone surrogate.
    """
    cdef _Writer w = _new_writer()
    cdef _Writer hw = _new_writer()  # a symbol's head, written apart from the payloads
    cdef _PerSymbol heads = _PerSymbol()
    cdef int mode = _framing_mode(framing)
    cdef Py_ssize_t i, start, n = len(batch.symbols)
    cdef list out = [None] * n if mode == _EACH else None
    cdef bytes head, raw
    cdef uint64_t ts
    try:
        _reserve_framed(&w, mode, n, _BINARY_QUOTE_BYTES)
        for i in range(n):
            symbol = batch.symbols[i]
            found = heads.get(symbol)
            if found is not None:
                head = <bytes>found
            else:
                raw = _utf8(symbol)
                hw.size = 0
                _w_varint(&hw, <uint64_t>PyBytes_GET_SIZE(raw) << 1)
                head = PyBytes_FromStringAndSize(hw.buf, hw.size) + raw
                heads.put(symbol, head)
            start = _payload_begin(&w, mode)
            _w_raw(&w, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))
            _w_le_double(&w, _bits(batch._bid[i]))
            _w_le_double(&w, _bits(batch._ask[i]))
            _w_le_double(&w, _bits(batch._bid_size[i]))
            _w_le_double(&w, _bits(batch._ask_size[i]))
            ts = <uint64_t>batch._ts[i]
            _w_varint(&w, (ts << 1) ^ (0 - (ts >> 63)))
            _payload_end(&w, mode, start, out, i)
        return _payloads(&w, mode, out)
    finally:
        free(w.buf)
        free(hw.buf)


# --- protobuf ----------------------------------------------------------------


cdef enum:
    _PB_SYMBOL = 0x0A  # field 1, length-delimited
    _PB_TS = 0x30  # field 6, varint
    _PB_FIXED64 = 1  # the wire type of fields 2 to 5 (double)


cdef bint _read_proto_quote(const unsigned char* p, Py_ssize_t n, Py_ssize_t max_key, _BinaryQuote* q) noexcept nogil:
    """A proto3 ``gauss.Quote`` of known fields each at most once, in any order; symbol and ts_ms present."""
    cdef Py_ssize_t i = 0
    cdef unsigned char tag
    cdef int seen = 0, field
    cdef uint64_t u
    cdef double[4] values = [0.0, 0.0, 0.0, 0.0]
    while i < n:
        tag = p[i]
        i += 1
        field = tag >> 3
        if not (tag == _PB_SYMBOL or tag == _PB_TS or (tag & 7 == _PB_FIXED64 and 2 <= field <= 5)):
            return False  # an unknown field, a wrong wire type, a tag of more than one byte
        if seen & (1 << field):  # a repeat: the last one wins, which the library decides
            return False
        seen |= 1 << field
        if tag == _PB_SYMBOL:
            i = _varint_at(p, i, n, &u)
            if i < 0 or u == 0 or u > <uint64_t>max_key or u > <uint64_t>(n - i) or not _printable(p + i, <Py_ssize_t>u):
                return False
            q.sym_start = i
            q.sym_size = <Py_ssize_t>u
            i += <Py_ssize_t>u
        elif tag == _PB_TS:
            i = _varint_at(p, i, n, &u)
            if i < 0:
                return False
            q.ts = <int64_t>u
        elif n - i >= 8:
            values[field - 2] = _le_double(p + i)
            i += 8
        else:  # a truncated double
            return False
    if seen & 0x42 != 0x42:  # no symbol (empty) or no ts_ms (zero)
        return False
    q.bid = values[0]
    q.ask = values[1]
    q.bid_size = values[2]
    q.ask_size = values[3]
    return True


cdef class ProtobufQuoteParser(_BinaryQuoteParser):
    """Reads proto3 ``gauss.Quote`` messages straight into a :class:`QuoteBatch` (the ``protobuf`` codec's fast path).

    An absent double is 0.0, as the library reads it; a message with an
    unknown field, a wrong wire type, a repeated field, no symbol or no
    ``ts_ms``, a varint of more than 64 bits or a symbol not printable ASCII
    is left to the library.
    """

    def parse(self, payloads):
        return self._parse(payloads, _read_proto_quote)


def encode_protobuf_quotes(QuoteBatch batch not None, framing=None):
    """One proto3 ``gauss.Quote`` per quote: the library's ``SerializeToString()`` bytes.

    Implicit presence: an empty symbol, a double whose bits are all zero
    (0.0, not -0.0) and a zero ``ts_ms`` are not written; fields in number order.
    ``framing``: as :func:`encode_csv_quotes`.
    Raises ``TypeError`` for a symbol that is not a ``str``, ``UnicodeEncodeError`` for a lone surrogate.
    """
    cdef _Writer w = _new_writer()
    cdef _Writer hw = _new_writer()  # a symbol's head, written apart from the payloads
    cdef _PerSymbol heads = _PerSymbol()
    cdef int mode = _framing_mode(framing)
    cdef Py_ssize_t i, start, n = len(batch.symbols)
    cdef list out = [None] * n if mode == _EACH else None
    cdef bytes head, raw
    cdef uint64_t bits
    cdef int f
    cdef const double* columns[4]
    columns[0] = batch._bid
    columns[1] = batch._ask
    columns[2] = batch._bid_size
    columns[3] = batch._ask_size
    cdef char tag
    try:
        _reserve_framed(&w, mode, n, _BINARY_QUOTE_BYTES)
        for i in range(n):
            symbol = batch.symbols[i]
            found = heads.get(symbol)
            if found is not None:
                head = <bytes>found
            else:
                raw = _utf8(symbol)
                hw.size = 0
                if PyBytes_GET_SIZE(raw):
                    _w_raw(&hw, "\x0a", 1)
                    _w_varint(&hw, <uint64_t>PyBytes_GET_SIZE(raw))
                head = PyBytes_FromStringAndSize(hw.buf, hw.size) + raw
                heads.put(symbol, head)
            start = _payload_begin(&w, mode)
            _w_raw(&w, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))
            for f in range(4):
                bits = _bits(columns[f][i])
                if bits:
                    tag = <char>(((f + 2) << 3) | _PB_FIXED64)
                    _w_raw(&w, &tag, 1)
                    _w_le_double(&w, bits)
            if batch._ts[i]:
                _w_raw(&w, "\x30", 1)
                _w_varint(&w, <uint64_t>batch._ts[i])
            _payload_end(&w, mode, start, out, i)
        return _payloads(&w, mode, out)
    finally:
        free(w.buf)
        free(hw.buf)
