"""write_records_json / write_record_lines: any records' JSON (candles, dead letters, ...) in both builds."""

from __future__ import annotations

import json
import math
from types import ModuleType
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FIXTURES = [HealthCheck.function_scoped_fixture]
INT64 = (-(2**63), 2**63 - 1)

floats = st.one_of(
    st.floats(),  # NaN and the infinities included: JSON null
    st.floats(min_value=0.5, max_value=2.0).map(lambda x: round(x, 5)),
    st.sampled_from([0.0, -0.0, 5e-324, 1e-7, 1e16, 1e22, 1.7976931348623157e308, 0.1, 1.085]),
)
texts = st.one_of(
    st.sampled_from(["EURUSD", "1s", "é", 'q"t', "back\\slash", "tab\t", "\x7f", "x" * 300]), st.text(max_size=12)
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=INT64[0], max_value=INT64[1]), st.integers(), floats, texts
)  # fmt: skip
payloads = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple), st.dictionaries(texts, inner, max_size=5)
    ),
    max_leaves=20,
)
"""Plain JSON data, and beyond: ints past int64 (not plain: msgspec's to write or refuse)."""


def fallback(record: Any) -> bytes:
    """What gauss.records gives the kernels, able to write str subclasses too."""
    return msgspec.json.encode(record.as_dict(), enc_hook=lambda v: str(v) if isinstance(v, str) else v.tolist())


def both(twins: tuple[ModuleType, ModuleType], records: list[Any], **kwargs: Any) -> bytes:
    """The compiled kernel's answer, once checked equal to the pure twin's for the same records."""
    compiled, pure = twins
    answer = compiled.write_records_json([compiled.TopicRecord(*r) for r in records], fallback, **kwargs)
    assert answer == pure.write_records_json([pure.TopicRecord(*r) for r in records], fallback, **kwargs)
    return answer  # type: ignore[no-any-return]


def decoded(data: bytes) -> Any:
    return json.loads(data)


def same_json(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(min_value=INT64[0], max_value=INT64[1]),
            texts,
            payloads,
            st.integers(min_value=0, max_value=2**62),
        ),
        max_size=8,
    )
)
def test_any_records_encode_alike_in_both_builds_and_as_msgspec_reads_them(
    twins: tuple[ModuleType, ModuleType], rows: list[tuple[Any, ...]]
) -> None:
    try:
        expected = [msgspec.json.decode(fallback(twins[1].TopicRecord(*r))) for r in rows]
    except (
        OverflowError,
        msgspec.EncodeError,
        TypeError,
    ):  # an int past 64 bits: msgspec refuses it, so must the kernel
        with pytest.raises((OverflowError, msgspec.EncodeError, TypeError)):
            twins[0].write_records_json([twins[0].TopicRecord(*r) for r in rows], fallback)
        return
    answer = both(twins, rows)
    assert same_json(decoded(answer), expected)
    for i in range(1, len(rows)):  # pieces of the array join into the whole (the API's chunks)
        assert both(twins, rows, stop=i, tail=b"") + both(twins, rows, start=i, lead=b",") == answer


def test_floats_are_written_as_repr_writes_them_and_not_finite_ones_as_null(
    twins: tuple[ModuleType, ModuleType],
) -> None:
    values = [1.085, 0.1, 1e16, 1e-7, 5e-324, -0.0, math.nan, math.inf, -math.inf]
    answer = both(twins, [(1, "k", {"v": values}, 3)])
    assert answer == b'[{"ts_ms":1,"key":"k","data":{"v":[1.085,0.1,1e+16,1e-07,5e-324,-0.0,null,null,null]},"seq":3}]'


def test_seq_is_written_once_numbered_and_lines_end_each_record(twins: tuple[ModuleType, ModuleType]) -> None:
    compiled, pure = twins
    for kernels in (compiled, pure):
        records = [kernels.TopicRecord(5, "k", {"a": 1}), kernels.TopicRecord(6, "k", [True, None], 9)]
        assert kernels.write_record_lines(records, fallback) == (
            b'{"ts_ms":5,"key":"k","data":{"a":1}}\n{"ts_ms":6,"key":"k","data":[true,null],"seq":9}\n'
        )
        assert (
            kernels.write_records_json(records, fallback)
            == b"[" + kernels.write_record_lines(records, fallback).strip().replace(b"\n", b",") + b"]"
        )
        assert kernels.write_records_json((), fallback) == b"[]"


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


class Text(str):
    """A ``str`` subclass: not plain (its JSON is msgspec's business)."""


@pytest.mark.parametrize(
    "record",
    [
        (1, "k", {"v": np.float64(1.5)}, 1),  # a numpy scalar (the fallback turns it into a number)
        (1, "k", {"v": np.arange(3)}, 1),
        (1, "k", {1: "int key"}, 1),
        (1, "k", {"v": 2**63}, 1),  # past int64: msgspec writes what fits uint64
        (1.5, "k", {}, 1),  # ts_ms not an int
        (True, "k", {}, 1),
        (1, Text("k"), {}, 1),
        (1, "k", {"v": Text("x")}, 1),
        (1, "k", {}, 2**63),
        (1, "k", nested(40), 1),  # deeper than a payload written by the kernel may be
    ],
)
def test_what_is_not_plain_json_goes_to_the_fallback_whole(
    twins: tuple[ModuleType, ModuleType], record: tuple[Any, ...]
) -> None:
    compiled, pure = twins
    for kernels in (compiled, pure):
        seen: list[Any] = []

        def spy(r: Any, seen: list[Any] = seen) -> bytes:
            seen.append(r)
            return fallback(r)

        plain = kernels.TopicRecord(0, "p", {"x": 1.0}, 1)
        odd = kernels.TopicRecord(*record)
        answer = kernels.write_records_json([plain, odd, plain], spy)
        assert seen == [odd]
        assert answer == b"[" + b",".join([fallback(plain), fallback(odd), fallback(plain)]) + b"]"


def test_a_record_of_the_other_build_or_no_record_at_all_goes_to_the_fallback(
    twins: tuple[ModuleType, ModuleType],
) -> None:
    compiled, pure = twins
    foreign = pure.TopicRecord(1, "k", {"a": 1}, 2)
    assert compiled.write_records_json([foreign], fallback) == b"[" + fallback(foreign) + b"]"
    with pytest.raises(AttributeError):
        compiled.write_records_json([object()], fallback)  # the fallback's own error, as msgspec's path would raise


def test_the_fallback_must_give_bytes(twins: tuple[ModuleType, ModuleType]) -> None:
    for kernels in twins:
        with pytest.raises(TypeError):
            kernels.write_records_json([kernels.TopicRecord(1, "k", {1: 2})], lambda r: "not bytes")
