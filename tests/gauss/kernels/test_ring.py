"""Ring-buffer kernels (the memory topic store) against a naive list model.

The model keeps the last ``capacity`` records in a list and answers each
query by filtering and sorting everything (SPEC section 4): ascending by
``ts_ms`` then ``seq``, the most recent ``limit``, ``truncated`` when more
matched. Streams mix in-order and out-of-order timestamps so both query
paths of the compiled ring (walk back / collect and sort) are exercised.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROPERTY = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

KEYS = ["EURUSD", "GBPUSD", "BTC/USD", "X"]
PRICES = [1.0, 1.5, 0.25, 100.125, 3.0e-5]


@dataclass
class Model:
    capacity: int
    held: list[Any] = field(default_factory=list)

    def append(self, records: list[Any]) -> None:
        self.held.extend(records)
        del self.held[: max(0, len(self.held) - self.capacity)]

    def query(
        self, key: str | None, from_ms: int | None, to_ms: int | None, since_seq: int | None, limit: int
    ) -> tuple[list[Any], bool]:
        found = [
            r
            for r in self.held
            if (key is None or r.key == key)
            and (from_ms is None or r.ts_ms >= from_ms)
            and (to_ms is None or r.ts_ms < to_ms)
            and (since_seq is None or r.seq > since_seq)
        ]
        found.sort(key=lambda r: (r.ts_ms, r.seq))
        return found[len(found) - limit :] if len(found) > limit else found, len(found) > limit

    def latest(self, key: str | None) -> list[Any]:
        best: dict[str, Any] = {}
        for r in self.held:
            if key is None or r.key == key:
                old = best.get(r.key)
                if old is None or (r.ts_ms, r.seq) >= (old.ts_ms, old.seq):
                    best[r.key] = r
        return sorted(best.values(), key=lambda r: (r.ts_ms, r.seq))

    def keys(self) -> list[tuple[str, int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for r in self.held:
            count, last = out.get(r.key, (0, r.ts_ms))
            out[r.key] = (count + 1, max(last, r.ts_ms))
        return sorted((k, c, t) for k, (c, t) in out.items())


def quote(kernels: ModuleType, seq: int, key: str, ts: int) -> Any:
    data = {
        "symbol": key,
        "bid": PRICES[seq % 5],
        "ask": PRICES[(seq + 1) % 5],
        "bid_size": float(seq),
        "ask_size": 2.0,
        "ts_ms": ts,
    }
    return kernels.TopicRecord(ts, key, data, seq)


batch = st.lists(st.tuples(st.sampled_from(KEYS), st.integers(min_value=-6, max_value=12)), max_size=12)
query = st.tuples(
    st.sampled_from(KEYS + [None, None, "missing"]),
    st.one_of(st.none(), st.integers(min_value=-10, max_value=300)),
    st.one_of(st.none(), st.integers(min_value=-10, max_value=300)),
    st.one_of(st.none(), st.integers(min_value=-2, max_value=120)),
    st.integers(min_value=1, max_value=15),
)
operation = st.one_of(
    st.tuples(st.just("append"), batch, st.booleans()),
    st.tuples(st.just("query"), query),
    st.tuples(st.just("latest"), st.sampled_from(KEYS + [None, "missing"])),
)


def run_against_model(kernels: ModuleType, ring: Any, ops: list[Any], first_seq: int, monotone: bool) -> None:
    model = Model(ring.capacity)
    seq = first_seq
    clock = 100
    quotes = isinstance(ring, kernels.QuoteRing)
    for op in ops:
        if op[0] == "append":
            records = []
            for key, delta in op[1]:
                clock += abs(delta) if monotone else delta
                if quotes:
                    records.append(quote(kernels, seq, key, clock))
                else:
                    records.append(kernels.TopicRecord(clock, key, {"n": seq}, seq))
                seq += 1
            if quotes and op[2]:
                if records:
                    ring.append_columns(
                        records[0].seq,
                        [r.key for r in records],
                        [r.ts_ms for r in records],
                        [r.data["bid"] for r in records],
                        [r.data["ask"] for r in records],
                        [r.data["bid_size"] for r in records],
                        [r.data["ask_size"] for r in records],
                    )
            else:
                ring.append(records)
            model.append(records)
        elif op[0] == "query":
            key, from_ms, to_ms, since_seq, limit = op[1]
            assert ring.query(key, from_ms, to_ms, since_seq, limit) == model.query(
                key, from_ms, to_ms, since_seq, limit
            ), op
        else:
            assert ring.latest(op[1]) == model.latest(op[1])
        assert len(ring) == len(model.held)
        assert ring.keys() == model.keys()
        if model.held:
            assert (ring.first_seq, ring.last_seq) == (model.held[0].seq, model.held[-1].seq)


@PROPERTY
@given(
    capacity=st.integers(min_value=1, max_value=24),
    ops=st.lists(operation, max_size=25),
    first_seq=st.integers(min_value=1, max_value=1000),
    monotone=st.booleans(),
)
@pytest.mark.parametrize("layout", ["RecordRing", "QuoteRing"])
def test_ring_matches_model(
    kernels: ModuleType, layout: str, capacity: int, ops: list[Any], first_seq: int, monotone: bool
) -> None:
    run_against_model(kernels, getattr(kernels, layout)(capacity), ops, first_seq, monotone)


@PROPERTY
@given(
    capacity=st.integers(min_value=1, max_value=40),
    keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=200),
    deltas=st.lists(st.integers(min_value=-3, max_value=5), min_size=200, max_size=200),
    queries=st.lists(query, min_size=1, max_size=10),
)
def test_compiled_ring_agrees_with_twin(
    twins: tuple[ModuleType, ModuleType], capacity: int, keys: list[str], deltas: list[int], queries: list[Any]
) -> None:
    rings = [(m, m.QuoteRing(capacity)) for m in twins]
    clock = 100
    stream = []
    for i, key in enumerate(keys):
        clock += deltas[i]
        stream.append((key, clock, i + 1))
    for kernels, ring in rings:
        ring.append([quote(kernels, seq, key, ts) for key, ts, seq in stream])
    (_, compiled), (_, pure) = rings
    for q in queries:
        assert compiled.query(*q) == pure.query(*q)
    assert compiled.latest() == pure.latest()
    assert compiled.keys() == pure.keys()


def test_a_symbol_is_one_key_whichever_str_object_spells_it(twins: tuple[ModuleType, ModuleType]) -> None:
    """Ids are cached by object identity: equal symbols in distinct objects, and ids given up and reused, stay right."""
    rings = [m.QuoteRing(5) for m in twins]
    aggs = [m.OhlcAggregator([1_000], 1) for m in twins]
    same = [f"S{n}" for n in range(7)]  # 7 symbols through a ring of 5: ids are given up and reused
    for seq in range(1, 301):
        key = same[seq % 7] if seq % 3 else "".join(["S", str(seq % 7)])  # the same object, or a new one
        for ring, agg in zip(rings, aggs, strict=True):
            ring.append_columns(seq, [key], [seq], [1.0 + seq], [2.0], [1.0], [1.0])
            agg.update([key], [seq * 400], [1.0 + seq], [2.0 + seq])
            if seq % 50 == 0:
                agg.forget(key)
    (compiled, pure), (c_agg, p_agg) = rings, aggs
    assert compiled.keys() == pure.keys() and compiled.latest() == pure.latest()
    for n in range(7):
        assert compiled.query("S" + str(n)) == pure.query("S" + str(n))
        assert c_agg.take_open("S" + str(n)) == p_agg.take_open("S" + str(n))


def test_ring_overwrites_oldest_and_forgets_evicted_keys(kernels: ModuleType) -> None:
    ring = kernels.RecordRing(3)
    ring.append([kernels.TopicRecord(10 + i, "A" if i == 0 else "B", i, i + 1) for i in range(4)])
    assert len(ring) == 3 and ring.first_seq == 2 and ring.last_seq == 4
    assert ring.keys() == [("B", 3, 13)]
    assert ring.query("A") == ([], False)
    assert [r.seq for r in ring.query(limit=2)[0]] == [3, 4]
    assert ring.query(limit=2)[1] is True


def test_ring_refuses_gaps_and_bad_arguments(kernels: ModuleType) -> None:
    ring = kernels.RecordRing(4)
    with pytest.raises(ValueError):
        ring.append([kernels.TopicRecord(1, "k", None, 0)])
    ring.append([kernels.TopicRecord(1, "k", None, 5)])
    with pytest.raises(ValueError, match="does not follow"):
        ring.append([kernels.TopicRecord(1, "k", None, 7)])
    with pytest.raises(ValueError):
        ring.query(limit=0)
    with pytest.raises(ValueError):
        kernels.RecordRing(0)
    quotes = kernels.QuoteRing(4)
    with pytest.raises(ValueError, match="length"):
        quotes.append_columns(1, ["a"], [1, 2], [1.0], [1.0], [1.0], [1.0])
    assert len(ring) == 1 and len(quotes) == 0


def test_bad_quote_record_leaves_quote_ring_unchanged(kernels: ModuleType) -> None:
    ring = kernels.QuoteRing(4)
    ring.append([quote(kernels, 1, "A", 10)])
    with pytest.raises(KeyError):
        ring.append([kernels.TopicRecord(11, "A", {"bid": 1.0}, 2)])
    assert len(ring) == 1 and ring.last_seq == 1
    ring.append([quote(kernels, 2, "A", 11)])
    assert [r.seq for r in ring.query("A")[0]] == [1, 2]


def test_quote_ring_stores_at_most_64_bytes_a_quote(kernels: ModuleType) -> None:
    ring = kernels.QuoteRing(10_000)
    assert ring.nbytes / ring.capacity <= 64


def test_quote_ring_key_table_holds_only_the_keys_it_holds(kernels: ModuleType) -> None:
    """200,000 symbols through a ring of 100: memory follows the capacity, not the symbols seen."""
    import tracemalloc

    ring = kernels.QuoteRing(100)
    seq = 0

    def feed(first: int, n: int) -> None:
        nonlocal seq
        keys = [f"S{i:07d}" for i in range(first, first + n)]
        ring.append_columns(seq + 1, keys, list(range(n)), [1.0] * n, [1.0] * n, [1.0] * n, [1.0] * n)
        seq += n

    feed(0, 1_000)
    tracemalloc.start()
    try:
        for first in range(1_000, 201_000, 1_000):
            feed(first, 1_000)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 256 * 1024, f"{held} bytes still held after 200,000 symbols through a ring of 100"
    assert [k for k, _, _ in ring.keys()] == [f"S{i:07d}" for i in range(200_900, 201_000)]
    assert ring.query("S0200950")[0][0].data["symbol"] == "S0200950"


def test_quote_ring_returns_the_six_quote_fields(kernels: ModuleType) -> None:
    ring = kernels.QuoteRing(2)
    data = {"symbol": "EURUSD", "bid": 1.1, "ask": 1.2, "bid_size": 3.0, "ask_size": 4.0, "ts_ms": 99, "x": 1}
    ring.append([kernels.TopicRecord(99, "EURUSD", data, 1)])
    (record,), truncated = ring.query()
    assert not truncated
    assert record.data == {k: v for k, v in data.items() if k != "x"} and record.seq == 1
    assert list(record.data) == list(kernels.QUOTE_FIELDS)


def test_key_query_on_a_large_ring_finds_a_rare_key(kernels: ModuleType) -> None:
    """A key holding a small share of the ring is answered from its own chain."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    n = 50_000
    ring = kernels.QuoteRing(n)
    keys = ["RARE" if i % 997 == 0 else f"K{rng.randrange(50)}" for i in range(n)]
    ts = [1_000 + i + rng.randrange(-3, 4) for i in range(n)]
    ring.append_columns(1, keys, ts, [1.0] * n, [2.0] * n, [1.0] * n, [1.0] * n)
    records, truncated = ring.query("RARE", limit=10)
    expected = sorted((ts[i], i + 1) for i in range(n) if keys[i] == "RARE")[-10:]
    assert [(r.ts_ms, r.seq) for r in records] == expected, f"seed={seed}"
    assert truncated


def test_a_quote_ring_holds_a_quote_in_48_bytes_or_less(kernels: ModuleType) -> None:
    ring = kernels.QuoteRing(10_000)
    assert ring.nbytes <= 48 * 10_000  # issue 13: seqs are consecutive, so no slot stores one


def test_a_ring_of_large_columns_holds_what_it_was_given(twins: tuple[ModuleType, ModuleType]) -> None:
    """Columns of 4 MiB and more live in their own memory map (no huge pages): written and read like the rest."""
    n = 700_000  # 5.6 MB an int64 column
    keys = [f"K{i % 7}" for i in range(n)]
    ts = list(range(1_000, 1_000 + n))
    bids = [1.0 + i * 1e-6 for i in range(n)]
    answers = []
    for kernels in twins:
        ring = kernels.QuoteRing(n)
        ring.append_columns(1, keys, ts, bids, [2.0] * n, [1.0] * n, [3.0] * n)
        ring.append_columns(n + 1, keys[:5], ts[-5:], bids[:5], [2.0] * 5, [1.0] * 5, [3.0] * 5)  # wraps around
        records, _ = ring.query(None, limit=10)
        answers.append([(r.seq, r.ts_ms, r.key, r.data["bid"], r.data["ask_size"]) for r in records])
        assert len(ring) == n
    assert answers[0] == answers[1]
    assert answers[0][-1] == (n + 5, ts[-1], "K4", bids[4], 3.0)
