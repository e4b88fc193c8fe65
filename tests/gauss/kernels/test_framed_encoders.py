"""The quote writers framing in place: ``encode_*_quotes(batch, framing)`` is the framing's encoder of the list, in both builds."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

WRITERS: dict[str, Callable[[ModuleType], Callable[..., Any]]] = {
    "json": lambda k: k.QuoteBatch.payloads_json,
    "csv": lambda k: k.encode_csv_quotes,
    "avro": lambda k: k.encode_avro_quotes,
    "protobuf": lambda k: k.encode_protobuf_quotes,
}
FRAMERS = {"lines": "encode_lines", "length-prefixed": "encode_length_prefixed"}

rows = st.lists(
    st.tuples(
        st.sampled_from(["EURUSD", "", "a,b", 'q"uote', "new\nline", "É", "X" * 300]),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(),
        st.floats(width=32),
        st.sampled_from([0.0, -0.0, 1e6, 5e-324]),
    ),
    max_size=10,
)


def batch_of(kernels: ModuleType, quotes: list[Any]) -> Any:
    return kernels.QuoteBatch(
        [q[0] for q in quotes], np.array([q[1] for q in quotes], dtype=np.int64),
        np.array([q[2] for q in quotes]), np.array([q[3] for q in quotes]),
        np.array([q[4] for q in quotes]), np.ones(len(quotes)),
    )  # fmt: skip


def outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except ValueError as exc:
        return type(exc)


@PROPERTY
@given(writer=st.sampled_from(sorted(WRITERS)), framing=st.sampled_from(sorted(FRAMERS)), quotes=rows)
def test_a_framed_write_is_the_framing_of_the_payloads(
    twins: tuple[ModuleType, ModuleType], writer: str, framing: str, quotes: list[Any]
) -> None:
    results = []
    for kernels in twins:
        write, frame = WRITERS[writer](kernels), getattr(kernels, FRAMERS[framing])
        batch = batch_of(kernels, quotes)
        expected = outcome(lambda: frame(write(batch)))  # noqa: B023 - called at once
        assert outcome(lambda: write(batch, framing)) == expected  # noqa: B023
        results.append(expected)
    assert results[0] == results[1], "both builds frame the same bytes (or both refuse a newline in a line)"


def test_an_unknown_framing_is_refused(kernels: ModuleType) -> None:
    batch = batch_of(kernels, [("EURUSD", 1, 1.0, 1.0, 1.0)])
    for write in WRITERS.values():
        with pytest.raises(ValueError, match="framing must be"):
            write(kernels)(batch, "zmq")
