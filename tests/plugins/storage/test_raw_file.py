"""The raw-file storage: frame log format, replay, durability, rotation, torn tails."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from gauss_plugins.storage.raw_file import RawFileConfig, RawFileStorage, iter_raw_log, main, segments
from support.plugins import built

from gauss import registry
from gauss.core import TopicRecord
from gauss.errors import ConfigError
from gauss.records import DataFormat, TopicQuery


def record(seq: int, key: str = "EURUSD", ts: int | None = None) -> TopicRecord:
    ts = 1_000 * seq if ts is None else ts
    return TopicRecord(ts, key, {"symbol": key, "bid": 1.0 + seq, "ask": 2.0 + seq, "ts_ms": ts}, seq)


def dicts(records: Any) -> list[dict[str, Any]]:
    return [r.as_dict() for r in records]


def opened(path: Path, fmt: DataFormat = DataFormat.QUOTE, **options: Any) -> tuple[RawFileStorage, str, int]:
    storage = RawFileStorage(path, **options)
    epoch, last_seq = storage.open("quotes.raw", fmt)
    return storage, epoch, last_seq


def test_the_log_is_length_and_checksum_prefixed_record_json_written_through(tmp_path: Path) -> None:
    storage, _, _ = opened(tmp_path)
    storage.append([record(1), record(2, "BTC/USD")])
    (segment,) = segments(tmp_path)  # on the OS side as soon as append returns: no flush
    raw = segment.read_bytes()
    frames = []
    pos = 0
    while pos < len(raw):
        size, crc = struct.unpack(">II", raw[pos : pos + 8])
        payload = raw[pos + 8 : pos + 8 + size]
        assert zlib.crc32(payload) == crc
        frames.append(json.loads(payload))
        pos += 8 + size
    assert frames == [record(1).as_dict(), record(2, "BTC/USD").as_dict()]
    storage.close()


def test_replay_returns_every_record_in_order_and_seq_epoch_persist(tmp_path: Path) -> None:
    storage, epoch, _ = opened(tmp_path)
    written = [record(i, key) for i, key in enumerate(["A", "B", "A", "C", "A"], 1)]
    storage.append(written[:2])
    storage.flush()
    storage.append(written[2:])
    storage.close()
    assert dicts(iter_raw_log(tmp_path)) == dicts(written)
    again, epoch2, last_seq = opened(tmp_path)
    assert (epoch2, last_seq) == (epoch, 5)
    assert dicts(again.query(TopicQuery(key="A")).records) == dicts([written[0], written[2], written[4]])
    assert again.bounds() == (1, 5) and again.count() == 5
    assert [(k.key, k.records) for k in again.keys()] == [("A", 3), ("B", 1), ("C", 1)]
    again.append([record(6)])
    again.close()
    assert [r.seq for r in iter_raw_log(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_rotation_by_size_and_pruning_keep_replay_ordered(tmp_path: Path) -> None:
    storage, _, _ = opened(tmp_path, max_file_bytes=300, max_files=3, tail_records=4)
    for seq in range(1, 21):
        storage.append([record(seq)])
        storage.flush()
    storage.close()
    files = segments(tmp_path)
    assert len(files) == 3
    assert all(f.stat().st_size <= 300 for f in files)
    replayed = [r.seq for r in iter_raw_log(tmp_path)]
    assert replayed == list(range(replayed[0], 21)) and replayed[0] > 1
    again, _, last_seq = opened(tmp_path, max_file_bytes=300, max_files=3, tail_records=4)
    assert last_seq == 20
    assert [r.seq for r in again.query(TopicQuery()).records] == [17, 18, 19, 20]
    again.close()


def test_a_torn_last_frame_is_cut_and_appends_continue_cleanly(tmp_path: Path) -> None:
    storage, _, _ = opened(tmp_path)
    storage.append([record(1), record(2)])
    storage.close()
    (segment,) = segments(tmp_path)
    size = segment.stat().st_size
    with open(segment, "ab") as handle:
        handle.write(b"\x00\x00\x01\x00\x00\x00\x00\x00{\"ts_ms\"")  # a write cut short
    assert [r.seq for r in iter_raw_log(tmp_path)] == [1, 2]
    again, _, last_seq = opened(tmp_path)
    assert last_seq == 2 and again.corrupt_frames == 1
    assert again.health() == {"healthy": 1.0, "dropped_records": 0.0, "write_failures": 0.0, "unreadable_records": 1.0, "dead_letter_records": 0.0}
    assert segment.stat().st_size == size
    assert (tmp_path / "00000001.glog.corrupt").read_bytes() == b"\x00\x00\x01\x00\x00\x00\x00\x00{\"ts_ms\""
    again.append([record(3)])
    again.close()
    assert [r.seq for r in iter_raw_log(tmp_path)] == [1, 2, 3]


def test_an_intact_frame_that_is_not_a_record_is_skipped_and_stays(tmp_path: Path) -> None:
    storage, _, _ = opened(tmp_path)
    storage.append([record(1)])
    storage.close()
    with open(segments(tmp_path)[0], "ab") as handle:
        handle.write(struct.pack(">II", 5, zlib.crc32(b"hello")) + b"hello")
    storage, _, _ = opened(tmp_path)
    storage.append([record(2)])
    storage.close()
    assert [r.seq for r in iter_raw_log(tmp_path)] == [1, 2]
    again, _, _ = opened(tmp_path)
    assert again.corrupt_frames == 1 and again.count() == 2
    assert not (tmp_path / "00000001.glog.corrupt").exists()
    again.close()


def test_candle_topic_tail_keeps_one_version_per_candle(tmp_path: Path) -> None:
    storage, _, _ = opened(tmp_path, DataFormat.CANDLE)
    storage.append([record(1, ts=60_000), record(2, ts=120_000), record(3, ts=60_000)])
    storage.close()
    again, _, _ = opened(tmp_path, DataFormat.CANDLE)
    assert [(r.ts_ms, r.seq) for r in again.query(TopicQuery()).records] == [(60_000, 3), (120_000, 2)]
    assert [r.seq for r in iter_raw_log(tmp_path)] == [1, 2, 3], "the log itself keeps every version"
    again.close()


def test_replay_since_seq_skips_whole_segments_and_keeps_seq_order(tmp_path: Path) -> None:
    storage, _, _ = opened(tmp_path, max_file_bytes=400)
    for seq in range(1, 31):
        storage.append([record(seq)])
    assert len(segments(tmp_path)) > 5
    assert [r.seq for r in storage.replay()] == list(range(1, 31))
    assert [r.seq for r in storage.replay(since_seq=17)] == list(range(18, 31))
    assert list(storage.replay(since_seq=30)) == []
    storage.close()


def test_age_retention_deletes_old_segments_but_never_the_current(tmp_path: Path) -> None:
    storage, _, _ = opened(tmp_path, max_file_bytes=400, max_age_s=3600)
    for seq in range(1, 11):
        storage.append([record(seq)])
    files = segments(tmp_path)
    old = time.time() - 7200
    for file in files:
        os.utime(file, (old, old))
    storage.flush()
    assert segments(tmp_path) == files[-1:]
    assert [r.seq for r in iter_raw_log(tmp_path)][-1] == 10
    storage.close()


def test_command_line_reader_prints_json_lines(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    storage, _, _ = opened(tmp_path)
    storage.append([record(1, "A"), record(2, "B")])
    storage.close()
    assert main([str(tmp_path), "--key", "B"]) == 0
    out = capsysbinary.readouterr().out.decode().splitlines()
    assert [json.loads(line) for line in out] == [record(2, "B").as_dict()]
    done = subprocess.run(
        [sys.executable, "-m", "gauss_plugins.storage.raw_file", str(segments(tmp_path)[0])],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert [json.loads(line)["seq"] for line in done.stdout.splitlines()] == [1, 2]


def create(table: dict[str, Any]) -> RawFileStorage:
    return built("storage", {"type": "raw-file", **table}, RawFileStorage)


def test_config_options(tmp_path: Path) -> None:
    table = {"type": "raw-file", "path": "raw/quotes", "max_file_bytes": 1024, "max_files": 2}
    storage = registry.create("storage", table, base_dir=tmp_path)
    assert isinstance(storage, RawFileStorage)
    assert storage.path == tmp_path / "raw/quotes" and storage.max_file_bytes == 1024 and storage.max_files == 2
    assert storage.fsync == "interval" and storage.flush_interval == 1.0
    assert RawFileStorage.from_config(RawFileConfig(path=Path("x"), max_age_s=60)).max_age_s == 60
    assert create({"path": "x", "fsync": "always"}).fsync == "always"
    assert create({"path": "x", "fsync": False, "max_buffered": 10}).fsync == "never"
    with pytest.raises(ConfigError, match="fsync: unknown value 'sometimes'; known: always, interval, never"):
        create({"path": "x", "fsync": "sometimes"})
    with pytest.raises(ConfigError, match="flush_interval: Expected float <= 1.0, got 5"):
        create({"path": "x", "flush_interval": 5})
    with pytest.raises(ConfigError, match=r"path: missing \(required\)"):
        create({})
    with pytest.raises(ConfigError, match="tail_records: Expected int >= 1, got 0"):
        create({"path": "x", "tail_records": 0})
    with pytest.raises(ConfigError, match="max_files: Expected int >= 0, got -1"):
        create({"path": "x", "max_files": -1})
    with pytest.raises(ConfigError, match="rotate: unknown option"):
        create({"path": "x", "rotate": True})


def test_unserialisable_data_is_dropped_and_counted_not_the_batch(tmp_path: Path) -> None:
    storage, _, _ = opened(tmp_path, DataFormat.ANY)
    storage.append([record(1), TopicRecord(2000, "A", {"bad": object()}, 2), record(3)])
    assert [r.seq for r in iter_raw_log(tmp_path)] == [1, 3]
    assert [r.seq for r in storage.query(TopicQuery()).records] == [1, 3]
    assert storage.health()["dropped_records"] == 1.0
    storage.close()


def test_a_batch_the_disk_refuses_is_cut_back_kept_in_dead_letter_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC 6: a failed write leaves nothing torn, keeps the batch in a bounded dead-letter file, counts it, goes on."""
    from gauss_plugins.storage import raw_file

    from gauss.errors import StorageError

    storage, _, _ = opened(tmp_path)
    storage.append([record(1)])
    real_write = raw_file.write_all

    def full_disk(fd: int, data: bytes) -> None:
        real_write(fd, data[: len(data) // 2])  # half of it reaches the file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(raw_file, "write_all", full_disk)
    with pytest.raises(StorageError, match="write failed, batch of 2 not stored") as failed:
        storage.append([record(2), record(3)])
    assert any("dead-letter" in note for note in failed.value.__notes__)
    monkeypatch.setattr(raw_file, "write_all", real_write)
    assert storage.health()["dead_letter_records"] == 2.0 and storage.health()["dropped_records"] == 2.0
    (kept,) = (tmp_path / "dead-letter").glob("*.jsonl")
    assert [json.loads(line)["data"]["bid"] for line in kept.read_text().splitlines()] == [3.0, 4.0]
    assert all("seq" not in json.loads(line) for line in kept.read_text().splitlines())
    storage.append([record(2)])  # the topic numbers the next batch from 2 again
    storage.close()
    assert [r.seq for r in iter_raw_log(tmp_path)] == [1, 2], "nothing of the failed batch is left in the log"
