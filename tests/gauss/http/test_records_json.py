"""One record encoder (gauss.records): a record holding numpy values is the same JSON bytes everywhere.

REST, WebSocket pushes, the file storage and the raw-file storage of a
running hub are compared byte for byte; a second encoder (one without the
numpy hook, say) in any of them fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gauss_plugins.storage._keys import key_file_name
from gauss_plugins.storage.clickhouse.rowbinary import layout_for
from gauss_plugins.storage.raw_file import iter_raw_log, segments
from support.http import NOW_MS, Api, hub_config, off_loop

from gauss.core import TopicRecord
from gauss.hub import Hub
from gauss.records import DataFormat, encode_json, encode_record, encode_record_lines, encode_records

NUMPY_DATA = {
    "price": np.float64(1.25),
    "size": np.int64(7),
    "live": np.bool_(True),
    "f32": np.float32(0.5),
    "levels": np.array([1.5, 2.5]),
    "nan": np.float64("nan"),
    "plain": [1, "a", None],
}
PLAIN_DATA = {"price": 1.25, "size": 7, "live": True, "f32": 0.5, "levels": [1.5, 2.5], "nan": None, "plain": [1, "a", None]}


def test_numpy_values_encode_as_their_plain_python_twins() -> None:
    record = TopicRecord(NOW_MS, "K", NUMPY_DATA, 3)
    plain = TopicRecord(NOW_MS, "K", PLAIN_DATA, 3)
    assert encode_record(record) == encode_record(plain)
    assert json.loads(encode_record(record)) == {"ts_ms": NOW_MS, "key": "K", "data": PLAIN_DATA, "seq": 3}
    assert encode_records([record, plain]) == b"[" + encode_record(plain) + b"," + encode_record(plain) + b"]"
    assert encode_record_lines([record, plain]) == (encode_record(plain) + b"\n") * 2
    assert encode_json(np.int64(5)) == b"5"
    # seq only once numbered (SPEC section 1)
    assert json.loads(encode_record(TopicRecord(1, "K", {"a": np.int64(1)}))) == {"ts_ms": 1, "key": "K", "data": {"a": 1}}


def test_what_cannot_be_json_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="object"):
        encode_record(TopicRecord(1, "K", {"x": object()}, 1))


def test_clickhouse_payload_column_is_the_same_json() -> None:
    layout = layout_for(DataFormat.ANY)
    row = layout.encode("np", [TopicRecord(NOW_MS, "K", NUMPY_DATA, 1)])
    assert encode_json(PLAIN_DATA) in row


def test_rest_websocket_file_and_raw_file_give_the_same_bytes(tmp_path: Path) -> None:
    config = hub_config()
    config["topics"] = [
        {"name": "np.file", "format": "any", "storage": {"type": "file", "dir": str(tmp_path / "file")}},
        {"name": "np.raw", "format": "any", "storage": {"type": "raw-file", "path": str(tmp_path / "raw")}},
    ]
    hub = Hub.from_config(config)
    hub.start()
    try:
        api = Api(hub)
        ws = api.ws()
        for topic in ("np.file", "np.raw"):
            assert ws.request({"action": "subscribe", "topic": topic})["type"] == "subscribed"
        record = TopicRecord(NOW_MS, "K", NUMPY_DATA)
        hub.publish("np.file", [record])
        hub.publish("np.raw", [record])
        expected = encode_record(TopicRecord(NOW_MS, "K", PLAIN_DATA, 1))

        ws.conn.settimeout(15)
        pushed: list[str] = [off_loop(ws.conn.recv) for _ in range(2)]
        ws.close()
        assert sorted(json.loads(text)["topic"] for text in pushed) == ["np.file", "np.raw"]
        for text in pushed:
            topic = json.loads(text)["topic"].encode()
            assert text.encode() == b'{"type":"records","topic":"' + topic + b'","records":[' + expected + b"]}"

        for topic in ("np.file", "np.raw"):
            body = api.get(f"/api/topics/{topic}").content
            assert b'"records":[' + expected + b"]" in body, body

        hub.topic("np.file").storage.flush()
        hub.topic("np.raw").storage.flush()
        line = (tmp_path / "file" / key_file_name("K")).read_bytes()
        assert line == expected + b"\n"
        raw = b"".join(p.read_bytes() for p in segments(tmp_path / "raw"))
        assert raw.endswith(expected)
        assert [r.data for r in iter_raw_log(tmp_path / "raw")] == [json.loads(expected)["data"]]
    finally:
        hub.stop(timeout=5)
