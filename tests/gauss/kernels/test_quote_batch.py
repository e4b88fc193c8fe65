"""QuoteBatch and JsonQuoteParser: quotes as columns, in both builds.

The compiled kernels must equal their pure twins (records, JSON bytes), the
JSON they write must read back as the same batch to the bit, floats written
as ``repr`` writes them, and whatever the compiled parser reads must be what
the general path (``msgspec`` then ``float()``) reads from the same payload.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import struct
from types import ModuleType
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e7, max_value=1e7).map(lambda x: round(x, 5)),
    st.floats(min_value=1e-4, max_value=1e15),  # mostly 16 and 17 digits: the exact long-form path
    st.sampled_from([0.0, -0.0, 5e-324, 1e-4, 9.999999999999999e-05, 1e15, 1e16, 2.0**53, 1.7976931348623157e308, 0.1, 1.085]),
)
symbols = st.one_of(
    st.sampled_from(["EURUSD", "BTC/USD", "é", 'q"t', "back\\slash", "tab\t", "x" * 200]),
    st.text(min_size=1, max_size=12),
)
batches = st.lists(
    st.tuples(symbols, st.integers(min_value=-(2**63), max_value=2**63 - 1), floats, floats, floats, floats),
    max_size=30,
)


def build(kernels: ModuleType, rows: list[tuple[Any, ...]], first_seq: int = 0) -> Any:
    columns = list(zip(*rows, strict=True)) if rows else [[]] * 6
    return kernels.QuoteBatch(list(columns[0]), *columns[1:], first_seq=first_seq)


def bits(value: float) -> bytes:
    return struct.pack("<d", value)


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURES)
@given(rows=batches, first_seq=st.sampled_from([0, 1, 2**40]))
def test_both_builds_hold_and_write_the_same_batch(twins: tuple[ModuleType, ModuleType], rows: list[Any], first_seq: int) -> None:
    compiled, pure = (build(k, rows, first_seq) for k in twins)
    assert compiled.records() == pure.records() == list(compiled) == list(pure)
    assert compiled.records_json() == pure.records_json()
    assert compiled.record_lines() == pure.record_lines()
    assert compiled.record_frames() == pure.record_frames() == twins[1].encode_checked_frames(pure.record_lines())[0]
    assert compiled.payloads_json() == pure.payloads_json()
    cut = len(rows) // 2
    for batch in (compiled, pure):  # an array written in two pieces, as the API streams it
        lead = b"," if 0 < cut < len(rows) else b""
        assert batch.records_json(0, cut, b"[", b"") + batch.records_json(cut, None, lead, b"]") == batch.records_json()


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURES)
@given(rows=batches)
def test_written_json_reads_back_as_the_same_batch_to_the_bit(kernels: ModuleType, rows: list[Any]) -> None:
    batch = build(kernels, rows, first_seq=7)
    answer = json.loads(batch.records_json())
    assert [r["seq"] for r in answer] == list(range(7, 7 + len(rows)))
    for record, (symbol, ts, bid, ask, bid_size, ask_size) in zip(answer, rows, strict=True):
        assert (record["ts_ms"], record["key"], record["data"]["symbol"], record["data"]["ts_ms"]) == (ts, symbol, symbol, ts)
        read = [record["data"][name] for name in ("bid", "ask", "bid_size", "ask_size")]
        assert list(map(bits, read)) == list(map(bits, (bid, ask, bid_size, ask_size)))
    lines = batch.record_lines().splitlines()
    assert [json.loads(line) for line in lines] == answer
    assert [json.loads(p) for p in batch.payloads_json()] == [r["data"] for r in answer]


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES)
@given(value=floats)
def test_floats_are_written_as_repr_writes_them(kernels: ModuleType, value: float) -> None:
    (payload,) = kernels.QuoteBatch(["S"], [1], [value], [value], [value], [value]).payloads_json()
    assert payload == f'{{"symbol":"S","bid":{value!r},"ask":{value!r},"bid_size":{value!r},"ask_size":{value!r},"ts_ms":1}}'.encode()


repeating = st.sampled_from([1.5, -1.5, 0.0, -0.0, 1e-5, 1e16, 0.1, 1000000.0, 5e-324, math.inf, math.nan])


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES)
@given(rows=st.lists(st.tuples(repeating, repeating, repeating, repeating), min_size=1, max_size=12))
def test_columns_that_repeat_values_are_written_as_repr_writes_them(kernels: ModuleType, rows: list[tuple[float, ...]]) -> None:
    """A value equal to its column's last one is copied from that one's text: never across columns, never for 0.0 or -0.0."""
    batch = kernels.QuoteBatch(["S"] * len(rows), [1] * len(rows), *map(list, zip(*rows, strict=True)))
    written = [re.findall(rb'"(?:bid|ask|bid_size|ask_size)":([^,}]*)', line) for line in batch.payloads_json()]
    assert written == [[(repr(v) if math.isfinite(v) else "null").encode() for v in row] for row in rows]
    assert kernels.encode_csv_quotes(batch) == [f"S,{','.join(map(repr, row))},1".encode() for row in rows]


def test_long_floats_are_written_as_repr_writes_them(kernels: ModuleType) -> None:
    rng = np.random.default_rng(13)
    values = np.concatenate(
        [
            10.0 ** rng.uniform(-4, 15, 20_000),
            1.1 + rng.integers(0, 10**6, 20_000) * 1e-6,  # computed prices: 16-17 digits
            rng.uniform(1e-4, 1e-3, 5_000),
            -(10.0 ** rng.uniform(-4, 15, 5_000)),
        ]
    )
    batch = kernels.QuoteBatch(["S"] * len(values), np.ones(len(values), np.int64), values, values, values, values)
    written = [line.split(b'"bid":', 1)[1].split(b",", 1)[0].decode() for line in batch.payloads_json()]
    assert written == [repr(float(v)) for v in values]


@settings(max_examples=500, deadline=None, suppress_health_check=FIXTURES)
@given(
    digits=st.integers(min_value=1, max_value=10**17),
    exponent=st.integers(min_value=-21, max_value=14),
    steps=st.integers(min_value=-3, max_value=3),
)
def test_floats_beside_a_decimal_are_written_as_repr_writes_them(
    kernels: ModuleType, digits: int, exponent: int, steps: int
) -> None:
    """The shortest-decimal path at its edges: a few ulps from a decimal, ties, powers of two and ten."""
    value = float(f"{digits}e{exponent}")
    for _ in range(abs(steps)):
        value = math.nextafter(value, math.inf if steps > 0 else 0.0)
    values = [value, -value, 2.0 ** round(math.log2(value)) if value > 0 else 1.0]
    batch = kernels.QuoteBatch(["S"] * 3, [1] * 3, values, values, values, values)
    written = [line.split(b'"bid":', 1)[1].split(b",", 1)[0].decode() for line in batch.payloads_json()]
    assert written == [repr(v) for v in values]


def test_numbers_json_cannot_say_are_written_as_null(kernels: ModuleType) -> None:
    (payload,) = kernels.QuoteBatch(["S"], [1], [math.nan], [math.inf], [-math.inf], [1.0]).payloads_json()
    assert json.loads(payload) == {"symbol": "S", "bid": None, "ask": None, "bid_size": None, "ask_size": 1.0, "ts_ms": 1}


def test_a_batch_is_a_sequence_of_records(kernels: ModuleType) -> None:
    batch = kernels.QuoteBatch(["A", "B", "A"], [1, 2, 3], [1.0, 2.0, 3.0], [1.5, 2.5, 3.5], [0.0, 1.0, 2.0], [4.0, 5.0, 6.0])
    assert len(batch) == 3 and batch.first_seq == 0 and batch.last_seq == 0
    assert batch[1] == kernels.TopicRecord(2, "B", {"symbol": "B", "bid": 2.0, "ask": 2.5, "bid_size": 1.0, "ask_size": 5.0, "ts_ms": 2})
    batch.first_seq = 10
    assert [r.seq for r in batch] == [10, 11, 12] and batch.last_seq == 12
    assert batch[-1].seq == 12 and batch[1:].first_seq == 11 and len(batch[1:]) == 2 and len(batch[5:]) == 0
    with pytest.raises(IndexError):
        batch[3]
    assert type(batch[-1].data["bid"]) is float and type(batch[-1].ts_ms) is int
    assert kernels.QuoteBatch.from_records(batch.records()) == batch
    assert kernels.QuoteBatch.from_records(batch[1:].records()) == batch[1:]
    assert kernels.QuoteBatch.concat([batch[:1], batch[1:]]) == batch
    assert kernels.QuoteBatch.concat([batch[1:], batch[:1]]).seqs.tolist() == [11, 12, 10]  # seqs that do not follow: kept each
    assert len(kernels.QuoteBatch.concat([])) == 0
    taken = batch.take(np.array([2, 0]))
    assert taken.symbols == ["A", "A"] and taken.ts_ms.tolist() == [3, 1] and taken.first_seq == 0
    assert pickle.loads(pickle.dumps(batch)) == batch
    assert batch == batch.records() and batch != batch.records()[:2]


def test_a_batch_of_gathered_quotes_keeps_each_seq(kernels: ModuleType) -> None:
    data = {"symbol": "A", "bid": 1.0, "ask": 2.0, "bid_size": 0.0, "ask_size": 0.0, "ts_ms": 1}
    records = [kernels.TopicRecord(1, "A", data, seq) for seq in (5, 7, 8)]
    batch = kernels.QuoteBatch.from_records(records)
    assert batch.seqs.tolist() == [5, 7, 8] and batch.first_seq == 5 and batch.last_seq == 8
    assert batch.records() == records and batch[1:].seqs.tolist() == [7, 8] and batch[-1].seq == 8
    assert [r["seq"] for r in json.loads(batch.records_json())] == [5, 7, 8]
    assert kernels.QuoteBatch.concat([batch[:1], batch[1:]]) == batch
    assert pickle.loads(pickle.dumps(batch)) == batch
    with pytest.raises(ValueError, match="renumbered"):
        batch.first_seq = 9
    ring = kernels.QuoteRing(10)
    with pytest.raises(ValueError, match="does not follow"):
        ring.append(batch)


def test_symbols_that_are_not_str_are_written_as_the_twin_writes_them(twins: tuple[ModuleType, ModuleType]) -> None:
    """None is a key like any other to the writers' per-symbol cache (whose empty slots hold None)."""
    ones = [1.0] * 4
    compiled, pure = (k.QuoteBatch([None, "A", None, 7], [1, 2, 3, 4], ones, ones, ones, ones, first_seq=3) for k in twins)
    assert compiled.records_json() == pure.records_json()
    assert compiled.payloads_json() == pure.payloads_json()
    assert compiled.record_frames() == pure.record_frames()


def test_columns_that_differ_are_refused(kernels: ModuleType) -> None:
    with pytest.raises(ValueError, match="differ in length"):
        kernels.QuoteBatch(["A"], [1, 2], [1.0], [1.0], [1.0], [1.0])
    with pytest.raises(KeyError):
        kernels.QuoteBatch.from_records([kernels.TopicRecord(1, "A", {"bid": 1.0})])


# --- the parser -------------------------------------------------------------------

decimals = st.builds(  # every digit count either side of the point, leading zeros in the fraction: 8-digit steps
    "{}.{}{}".format,
    st.from_regex(r"0|[1-9][0-9]{0,21}", fullmatch=True),
    st.from_regex(r"0{0,12}", fullmatch=True),
    st.from_regex(r"[0-9]{1,22}", fullmatch=True),
)
numbers = st.one_of(
    floats.map(repr),
    decimals,
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["1" + "0" * 400, "-" + "9" * 320, "-0", "-0.0", "0e5", "1E-3", "1e400", "-1e400", "1.5e-310", "00", "1.", ".5", "+1", "0x10", "1e", "NaN", "true", "null", '"1"']),
)
stamps = st.one_of(
    st.integers(min_value=-5, max_value=10**20).map(str),
    st.sampled_from(["1.0", "1e3", "-0", "017", "9223372036854775807"]),
)
names = st.sampled_from(["symbol", "bid", "ask", "bid_size", "ask_size", "ts_ms", "other", "bi\\u0064", "bid_sizes", "ts_ms2", "b", "symbolic"])
spaces = st.sampled_from(["", " ", "\t", "  \r "])


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    fields = {
        "symbol": json.dumps(draw(symbols), ensure_ascii=draw(st.booleans())),
        "bid": draw(numbers),
        "ask": draw(numbers),
        "ts_ms": draw(stamps),
    }
    for name in ("bid_size", "ask_size"):
        if draw(st.booleans()):
            fields[name] = draw(numbers)
    items = list(fields.items())
    items = draw(st.permutations(items))
    if draw(st.integers(0, 9)) == 0:
        items.append((draw(names), draw(numbers)))
    sp = draw(spaces)
    text = "{" + ",".join(f'{sp}"{k}"{sp}:{sp}{v}{sp}' for k, v in items) + "}"
    return (draw(spaces) + text + draw(st.sampled_from(["", " ", "x", ",", "}"]))).encode()


def general_read(payload: bytes) -> tuple[str, int, float, float, float, float] | None:
    """What the general path reads: msgspec's untyped decode, then ``float()`` of each number."""
    try:
        data = msgspec.json.decode(payload)
        values = [float(data.get(name, 0.0)) for name in ("bid", "ask", "bid_size", "ask_size")]
    except (msgspec.DecodeError, OverflowError):  # an integer past a double: QuoteCheck refuses it the same way
        return None
    return (data["symbol"], data["ts_ms"], *values)  # type: ignore[return-value]


@settings(max_examples=400, deadline=None, suppress_health_check=FIXTURES)
@given(batch=st.lists(payloads(), max_size=8), max_key_bytes=st.sampled_from([1, 6, 64]))
def test_what_the_parser_reads_is_what_the_general_path_reads(kernels: ModuleType, batch: list[bytes], max_key_bytes: int) -> None:
    parsed, positions = kernels.JsonQuoteParser(max_key_bytes).parse(batch)
    assert len(parsed) == len(positions) and list(positions) == sorted(set(positions.tolist()))
    for record, at in zip(parsed, positions.tolist(), strict=True):
        expected = general_read(batch[at])
        got = [record.data[name] for name in ("bid", "ask", "bid_size", "ask_size")]
        if expected is None:  # msgspec refuses a number past a double; the parser reads it as one, the check refuses it
            assert not all(map(math.isfinite, got)), batch[at]
            continue
        symbol, ts, *values = expected
        assert (record.key, record.ts_ms) == (symbol, ts)
        assert 0 < len(symbol.encode()) <= max_key_bytes
        assert list(map(bits, got)) == list(map(bits, values)), batch[at]


def test_the_parser_reads_plain_quotes_and_leaves_the_rest(kernels: ModuleType) -> None:
    plain = b'{"symbol":"EURUSD","bid":1.085,"ask":1.0852,"bid_size":1000000.0,"ask_size":250000,"ts_ms":1732406400123}'
    left = [
        b'{"symbol":"EUR\\u0055SD","bid":1.0,"ask":2.0,"ts_ms":5}',  # an escape
        b'{"symbol":"EURUSD","bid":1.0,"bid":1.0,"ask":2.0,"ts_ms":5}',  # a repeated field
        b'{"symbol":"EURUSD","bid":1.0,"ask":2.0,"ts_ms":5,"venue":"x"}',  # an unknown field
        b'{"symbol":"EURUSD","bid":1.0,"ask":2.0}',  # no ts_ms
        b'{"symbol":"EURUSD","bid":1.0,"ask":2.0,"ts_ms":5.0}',  # ts_ms not an integer literal
        b'{"symbol":"EURUSD","bid":1.0,"ask":2.0,"ts_ms":5} x',  # trailing bytes
        b'{"symbol":"",  "bid":1.0,"ask":2.0,"ts_ms":5}',  # no symbol
        '{"symbol":"é","bid":1.0,"ask":2.0,"ts_ms":5}'.encode(),  # not ASCII
        bytearray(plain),  # not bytes
    ]
    batch, positions = kernels.JsonQuoteParser(64).parse([*left, plain, b' { "ts_ms" : 7 , "ask" : 2 , "bid" : -0 , "symbol" : "A" } '])
    assert positions.tolist() == [len(left), len(left) + 1]
    assert batch.records()[0].data == {
        "symbol": "EURUSD", "bid": 1.085, "ask": 1.0852, "bid_size": 1000000.0, "ask_size": 250000.0, "ts_ms": 1732406400123,
    }  # fmt: skip
    assert bits(batch.bid[1]) == bits(0.0) and batch.ask[1] == 2.0 and batch.ts_ms[1] == 7
    twice, _ = kernels.JsonQuoteParser(64).parse([plain, plain])
    assert twice.symbols[0] is twice.symbols[1]
    assert len(kernels.JsonQuoteParser(5).parse([plain])[0]) == 0  # a symbol longer than max_key_bytes


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES)
@given(batch=st.lists(payloads(), max_size=8), max_key_bytes=st.sampled_from([1, 6, 64]))
def test_both_parsers_read_the_same_payloads(twins: tuple[ModuleType, ModuleType], batch: list[bytes], max_key_bytes: int) -> None:
    (compiled, compiled_at), (pure, pure_at) = (k.JsonQuoteParser(max_key_bytes).parse(batch) for k in twins)
    assert compiled_at.tolist() == pure_at.tolist()
    assert compiled.symbols == pure.symbols and compiled.ts_ms.tolist() == pure.ts_ms.tolist()
    for name in ("bid", "ask", "bid_size", "ask_size"):
        assert list(map(bits, getattr(compiled, name).tolist())) == list(map(bits, getattr(pure, name).tolist()))


# --- csv ----------------------------------------------------------------------------


@st.composite
def csv_rows(draw: st.DrawFn) -> bytes:
    symbol = draw(st.one_of(symbols, st.sampled_from(["A B", " X", "a,b", ""])))
    fields = [symbol, *(draw(numbers) for _ in range(4)), draw(stamps)]
    if draw(st.integers(0, 9)) == 0:
        fields[draw(st.integers(1, 5))] = draw(st.sampled_from(["", " 1.5", "nan", "1_0", '"1"']))
    text = ",".join(fields) + draw(st.sampled_from(["", "", ",", "\r", " "]))
    return text.encode("utf-8", "surrogatepass")


def csv_general_read(payload: bytes) -> tuple[str, int, float, float, float, float] | None:
    """What the csv codec's general path reads from a default-column row (its own ``deserialize``)."""
    from gauss.registry import create

    try:
        data = create("codec", "csv").deserialize(payload)
        values = [float(data.get(n, 0.0)) for n in ("bid", "ask", "bid_size", "ask_size")]
    except (ValueError, OverflowError):  # an integer past a double: QuoteCheck refuses it the same way
        return None
    return (data["symbol"], data["ts_ms"], *values)  # type: ignore[return-value]


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES)
@given(batch=st.lists(csv_rows(), max_size=8), max_key_bytes=st.sampled_from([1, 6, 64]))
def test_both_csv_parsers_read_what_the_general_path_reads(
    twins: tuple[ModuleType, ModuleType], batch: list[bytes], max_key_bytes: int
) -> None:
    (compiled, compiled_at), (pure, pure_at) = (k.CsvQuoteParser(max_key_bytes).parse(batch) for k in twins)
    assert compiled_at.tolist() == pure_at.tolist()
    assert compiled.symbols == pure.symbols and compiled.ts_ms.tolist() == pure.ts_ms.tolist()
    for name in ("bid", "ask", "bid_size", "ask_size"):
        assert list(map(bits, getattr(compiled, name).tolist())) == list(map(bits, getattr(pure, name).tolist()))
    for record, at in zip(compiled, compiled_at.tolist(), strict=True):
        got = [record.data[name] for name in ("bid", "ask", "bid_size", "ask_size")]
        expected = csv_general_read(batch[at])
        if expected is None or not all(map(math.isfinite, expected[2:])):
            assert not all(map(math.isfinite, got)), batch[at]  # only a number past a double; the check refuses it
            continue
        symbol, ts, *values = expected
        assert (record.key, record.ts_ms) == (symbol, ts) and 0 < len(symbol.encode()) <= max_key_bytes
        assert list(map(bits, got)) == list(map(bits, values)), batch[at]


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURES)
@given(rows=batches)
def test_csv_rows_are_what_the_codec_writes_and_read_back_to_the_bit(kernels: ModuleType, rows: list[Any]) -> None:
    from gauss.registry import create

    batch = build(kernels, rows)
    try:
        written = kernels.encode_csv_quotes(batch)
    except UnicodeEncodeError:  # a lone surrogate: the codec's general path skips that quote
        return
    codec = create("codec", "csv")
    assert written == codec.serialize([r.data for r in batch.records()])
    for payload, (symbol, ts, *values) in zip(written, rows, strict=True):
        data = codec.deserialize(payload)
        assert (data["symbol"], data["ts_ms"]) == (symbol, ts)
        assert [bits(float(data[n])) for n in ("bid", "ask", "bid_size", "ask_size")] == list(map(bits, values))


@settings(max_examples=100, deadline=None, suppress_health_check=FIXTURES)
@given(rows=batches, first_seq=st.sampled_from([0, 5]), pick=st.integers(min_value=0, max_value=40))
def test_of_symbol_keeps_the_quotes_of_one_symbol_with_their_seqs(
    kernels: ModuleType, rows: list[Any], first_seq: int, pick: int
) -> None:
    batch = build(kernels, rows, first_seq)
    symbol = rows[pick % len(rows)][0] if rows else "EURUSD"
    picked = batch.of_symbol(symbol)
    assert picked.records() == [r for r in batch.records() if r.key == symbol]
    assert picked.records_json() == kernels.QuoteBatch.from_records(picked.records()).records_json()
    if all(r[0] == symbol for r in rows):
        assert picked is batch


rule_floats = st.one_of(floats, st.sampled_from([math.inf, -math.inf, math.nan, -1.0, 1e308, -1e308]))
rule_rows = st.lists(
    st.tuples(st.integers(min_value=-(2**40), max_value=2**42), rule_floats, rule_floats, rule_floats, rule_floats),
    max_size=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES)
@given(rows=rule_rows, positive=st.booleans(), max_ts=st.sampled_from([0, 2**41, 2**42]))
def test_both_builds_pass_the_quotes_the_scalar_check_passes(
    twins: tuple[ModuleType, ModuleType], rows: list[Any], positive: bool, max_ts: int
) -> None:
    from gauss.quotes import MIN_TS_MS, QuoteCheck

    quote = QuoteCheck(check_prices=positive).quote
    expected = []
    for ts, bid, ask, bid_size, ask_size in rows:
        try:
            quote("EURUSD", bid, ask, bid_size, ask_size, ts, max_ts)
            expected.append(True)
        except ValueError:
            expected.append(False)
    for kernels in twins:
        batch = build(kernels, [("EURUSD", *row) for row in rows])
        passing = batch.passing(MIN_TS_MS, max_ts, positive)
        if all(expected):
            assert passing is None
        else:
            assert passing is not None and passing.dtype == np.bool_
            assert passing.tolist() == expected
