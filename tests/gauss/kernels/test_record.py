"""TopicRecord: the one record type of the data path, in both builds."""

from __future__ import annotations

import copy
import pickle
from types import ModuleType

import pytest


def test_record_holds_its_fields_and_seq_defaults_to_zero(kernels: ModuleType) -> None:
    record = kernels.TopicRecord(1732406400123, "EURUSD", {"bid": 1.0})
    assert (record.ts_ms, record.key, record.data, record.seq) == (1732406400123, "EURUSD", {"bid": 1.0}, 0)
    record.seq = 7
    assert record.seq == 7
    assert kernels.TopicRecord(ts_ms=1, key="k", data=None, seq=3).seq == 3


def test_with_seq_returns_a_numbered_copy(kernels: ModuleType) -> None:
    record = kernels.TopicRecord(5, "k", [1])
    numbered = record.with_seq(9)
    assert numbered.seq == 9 and record.seq == 0
    assert numbered.data is record.data


def test_as_dict_is_the_json_form(kernels: ModuleType) -> None:
    assert kernels.TopicRecord(5, "k", {"a": 1}).as_dict() == {"ts_ms": 5, "key": "k", "data": {"a": 1}}
    assert kernels.TopicRecord(5, "k", 2, 4).as_dict() == {"ts_ms": 5, "key": "k", "data": 2, "seq": 4}


def test_equality_compares_all_fields(kernels: ModuleType) -> None:
    a = kernels.TopicRecord(1, "k", {"x": 1}, 2)
    assert a == kernels.TopicRecord(1, "k", {"x": 1}, 2)
    assert a != kernels.TopicRecord(1, "k", {"x": 1}, 3)
    assert a != kernels.TopicRecord(1, "j", {"x": 1}, 2)
    assert a != kernels.TopicRecord(1, "k", {"x": 2}, 2)
    assert a != (1, "k", {"x": 1}, 2)


def test_records_are_unhashable_like_their_mutable_data(kernels: ModuleType) -> None:
    with pytest.raises(TypeError):
        hash(kernels.TopicRecord(1, "k", None))


def test_pickle_and_copy_round_trip(kernels: ModuleType) -> None:
    record = kernels.TopicRecord(1, "k", {"x": [1, 2]}, 5)
    assert pickle.loads(pickle.dumps(record)) == record
    assert copy.deepcopy(record) == record
    assert type(pickle.loads(pickle.dumps(record))) is kernels.TopicRecord


def test_repr_names_every_field(kernels: ModuleType) -> None:
    assert repr(kernels.TopicRecord(1, "k", None, 2)) == "TopicRecord(ts_ms=1, key='k', data=None, seq=2)"


def test_compiled_and_pure_records_compare_equal(twins: tuple[ModuleType, ModuleType]) -> None:
    compiled, pure = twins
    assert compiled.TopicRecord(1, "k", {"a": 1}, 2) == pure.TopicRecord(1, "k", {"a": 1}, 2)
    assert pure.TopicRecord(1, "k", {"a": 1}, 2) == compiled.TopicRecord(1, "k", {"a": 1}, 2)
    assert compiled.TopicRecord(1, "k", None) != pure.TopicRecord(2, "k", None)


def test_record_has_no_instance_dict(kernels: ModuleType) -> None:
    """Records are created once per quote: slots, no per-instance dict."""
    with pytest.raises(AttributeError):
        kernels.TopicRecord(1, "k", None).extra = 1  # type: ignore[attr-defined]
