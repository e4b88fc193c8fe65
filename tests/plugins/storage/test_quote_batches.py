"""A QuoteBatch goes through every storage unchanged, and so does its answer in every format.

What a quote topic publishes is a numbered ``QuoteBatch``: memory, file and
raw-file storage must hold exactly its quotes (to the bit, seqs kept), and
what they answer must read back the same through the REST/WebSocket JSON and
every codec's writer.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from gauss_plugins.storage.file import FileStorage
from gauss_plugins.storage.memory import MemoryStorage
from gauss_plugins.storage.raw_file import RawFileStorage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gauss.core import QuoteBatch
from gauss.records import DataFormat, TopicQuery, encode_records
from gauss.registry import create

rows = st.lists(
    st.tuples(
        st.sampled_from(["EURUSD", "BTC/USD", "é", "x" * 64]),
        st.integers(min_value=1, max_value=253_402_300_799_999),
        *[st.floats(allow_nan=False, allow_infinity=False)] * 4,
    ),
    min_size=1,
    max_size=20,
)


def bits(record: Any) -> tuple[Any, ...]:
    data = record.data
    return (record.seq, record.ts_ms, record.key, data["symbol"], data["ts_ms"],
            *(struct.pack("<d", data[n]) for n in ("bid", "ask", "bid_size", "ask_size")))  # fmt: skip


def storages(tmp: Path) -> list[Any]:
    return [MemoryStorage(), FileStorage(tmp / "file"), RawFileStorage(tmp / "raw" / "quotes.raw")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(quotes=rows)
def test_every_storage_holds_a_quote_batch_to_the_bit(tmp_path_factory: pytest.TempPathFactory, quotes: list[Any]) -> None:
    symbols, ts, bid, ask, bid_size, ask_size = zip(*quotes, strict=True)
    batch = QuoteBatch(list(symbols), ts, bid, ask, bid_size, ask_size, first_seq=1)
    expected = sorted(map(bits, batch), key=lambda b: (b[1], b[0]))
    for storage in storages(tmp_path_factory.mktemp("s")):
        storage.open("quotes.raw", DataFormat.QUOTE)
        storage.append(batch)
        answer = storage.query(TopicQuery(limit=1000)).records
        assert sorted(map(bits, answer), key=lambda b: (b[1], b[0])) == expected, type(storage).__name__
        assert storage.bounds() == (1, len(batch))
        storage.close()


def test_an_answer_of_columns_reads_back_the_same_in_every_format(tmp_path: Path) -> None:
    batch = QuoteBatch(["EURUSD", "é"], [5, 6], [1.085, 5e-324], [1.0852, 1e308], [0.0, -0.0], [2.5, 1e-7], first_seq=3)
    storage = MemoryStorage()
    storage.open("quotes.raw", DataFormat.QUOTE)
    storage.append(batch)
    answer = storage.query(TopicQuery()).records
    assert type(answer) is QuoteBatch and answer == batch.records()
    assert json.loads(encode_records(answer)) == [r.as_dict() for r in batch]
    for name in ("json", "csv", "protobuf", "avro"):
        codec = create("codec", name)
        decoded, rejected = codec.decode(codec.encode(answer))
        assert not rejected, name
        assert [bits(r.with_seq(q.seq)) for r, q in zip(decoded, batch, strict=True)] == list(map(bits, batch)), name
