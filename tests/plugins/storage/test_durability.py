"""Fault injection on the durable storages (issue 10 items 3 and 4, SPEC sections 1 and 6).

For each of ``file`` and ``raw-file``: a write failing part-way (the real
``RLIMIT_FSIZE`` in a child process), a corrupt byte in the middle of a log,
a truncated last record, a missing or stale meta file, and the issue's exact
repros. After each, reopening keeps every intact record, nothing is
duplicated, and the seq promise holds: under one epoch a seq never names
two different records.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from gauss_plugins.storage._index import RecordIndex
from gauss_plugins.storage.file import META_FILE, FileStorage
from gauss_plugins.storage.raw_file import RawFileStorage, iter_raw_log, segments

from gauss.core import TopicRecord
from gauss.records import DataFormat, TopicQuery

Storage = FileStorage | RawFileStorage


def quote(seq: int, key: str = "EURUSD") -> TopicRecord:
    ts = 1_732_406_400_000 + seq
    return TopicRecord(ts, key, {"symbol": key, "bid": 1.0 + seq / 1e6, "ask": 1.1, "bid_size": 1.0, "ask_size": 1.0, "ts_ms": ts}, seq)


def candle(seq: int, key: str, ts: int) -> TopicRecord:
    data = {"symbol": key, "timeframe": "1m", "ts_ms": ts, "open": 1.0, "high": 2.0, "low": 0.5, "close": float(seq), "ticks": 1}
    return TopicRecord(ts, key, data, seq)


def make(kind: str, path: Path, **options: Any) -> Storage:
    if kind == "file":
        return FileStorage(path, **options)
    return RawFileStorage(path, **options)


def data_files(kind: str, path: Path) -> list[Path]:
    return sorted(path.glob("*.jsonl")) if kind == "file" else segments(path)


def stored(storage: Storage, kind: str, path: Path) -> list[TopicRecord]:
    """Every record the storage holds (file: its index; raw-file: the whole log)."""
    if kind == "file":
        return list(storage.records())  # type: ignore[union-attr]
    return list(iter_raw_log(path))


def assert_promise(records: list[TopicRecord], acknowledged: dict[int, dict[str, Any]]) -> None:
    """Every acknowledged record is held with its seq and payload, and no seq twice."""
    counts = Counter(r.seq for r in records)
    assert not [seq for seq, n in counts.items() if n > 1], "a seq is stored twice"
    held = {r.seq: r.as_dict() for r in records}
    missing = [seq for seq in acknowledged if seq not in held]
    assert not missing, f"acknowledged records lost: {missing[:10]}"
    assert all(held[seq] == want for seq, want in acknowledged.items())


kinds = pytest.mark.parametrize("kind", ["file", "raw-file"])

CHILD = r"""
import json, resource, sys
from gauss.core import TopicRecord
from gauss.errors import StorageError
from gauss.records import DataFormat
from gauss_plugins.storage.file import FileStorage
from gauss_plugins.storage.raw_file import RawFileStorage

kind, path, limit, batches, raise_after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
storage = FileStorage(path, fsync="never") if kind == "file" else RawFileStorage(path, fsync="never")
epoch, seq = storage.open("t", DataFormat.ANY)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
acked, failures = {}, 0
for number in range(batches):
    if failures >= raise_after:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    keys = ["A", "B", "C"]
    batch = [TopicRecord(1000 + seq + i, keys[(seq + i) % 3], {"n": seq + i, "pad": "x" * 40}, seq + i) for i in range(1, 8)]
    try:
        storage.append(batch)
    except StorageError:
        failures += 1  # the topic numbers the next batch from the same seq again
        continue
    seq += len(batch)
    acked.update({r.seq: r.as_dict() for r in batch})
print(json.dumps({"epoch": epoch, "failures": failures, "acked": acked}))
sys.stdout.flush()
import os
os._exit(0)  # a crash: no close, no clean meta
"""


def run_child(kind: str, path: Path, limit: int, batches: int, raise_after: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(path), str(limit), str(batches), str(raise_after)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    result = json.loads(done.stdout)
    result["acked"] = {int(seq): record for seq, record in result["acked"].items()}
    return result


@kinds
def test_a_write_failing_part_way_under_rlimit_fsize_leaves_each_record_once_or_not_at_all(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "store"
    child = run_child(kind, path, limit=3000, batches=120, raise_after=5)
    assert child["failures"] >= 5, "the file size limit must have refused writes"
    assert len(child["acked"]) > 100
    storage = make(kind, path)
    epoch, last_seq = storage.open("t", DataFormat.ANY)
    assert epoch == child["epoch"], "a crash on the same boot with nothing damaged keeps the epoch"
    assert last_seq == max(child["acked"])
    records = stored(storage, kind, path)
    assert_promise(records, child["acked"])
    assert len(records) == len(child["acked"]), "nothing but the acknowledged records"
    assert not list(path.glob("*.corrupt")), "failed writes were cut back: nothing torn to move aside"
    storage.append([quote(last_seq + 1, "A")])
    storage.close()
    again = make(kind, path)
    assert again.open("t", DataFormat.ANY) == (epoch, last_seq + 1)
    again.close()


@kinds
def test_failed_writes_are_cut_back_and_the_next_batches_are_stored_after_them(kind: str, tmp_path: Path) -> None:
    """The issue's 1330-for-1000: a key query after reload returns each of the 1000 seqs once."""
    path = tmp_path / "store"
    child = run_child(kind, path, limit=4000, batches=200, raise_after=3)
    assert child["failures"] == 3
    storage = make(kind, path)
    storage.open("t", DataFormat.ANY)
    records = stored(storage, kind, path)
    assert [r.seq for r in records] == sorted(child["acked"]) and len(records) == 7 * 197
    for key in "ABC":
        got = storage.query(TopicQuery(key=key, limit=100_000)).records
        assert len(got) == len({r.seq for r in got}) == sum(1 for r in child["acked"].values() if r["key"] == key)
    storage.close()


def write_thousand(kind: str, path: Path, fmt: DataFormat = DataFormat.QUOTE) -> tuple[Storage, str]:
    storage = make(kind, path)
    epoch, _ = storage.open("t", fmt)
    for start in range(0, 1000, 100):
        storage.append([quote(seq) for seq in range(start + 1, start + 101)])
    return storage, epoch


@kinds
def test_a_thousand_good_records_then_four_bytes_of_0xff(kind: str, tmp_path: Path) -> None:
    storage, epoch = write_thousand(kind, tmp_path)
    storage.close()
    (target,) = data_files(kind, tmp_path)
    size = target.stat().st_size
    with open(target, "ab") as handle:
        handle.write(b"\xff" * 4)
    again = make(kind, tmp_path)
    assert again.open("t", DataFormat.QUOTE) == (epoch, 1000)
    assert again.count() == 1000 and again.bounds() == (1, 1000)
    assert target.stat().st_size == size
    corrupt = target.with_name(target.name + ".corrupt")
    assert corrupt.read_bytes().rstrip(b"\n") == b"\xff" * 4
    again.append([quote(1001)])
    again.close()
    assert [r.seq for r in stored(make_open(kind, tmp_path), kind, tmp_path)] == list(range(1, 1002))


def make_open(kind: str, path: Path, fmt: DataFormat = DataFormat.QUOTE) -> Storage:
    storage = make(kind, path)
    storage.open("t", fmt)
    return storage


@kinds
@pytest.mark.parametrize("clean", [True, False])
def test_a_corrupt_byte_in_the_middle_costs_one_record(kind: str, clean: bool, tmp_path: Path) -> None:
    storage, epoch = write_thousand(kind, tmp_path)
    if clean:
        storage.close()
    else:
        storage._task.stop()  # type: ignore[union-attr]  # a crash: no close
    (target,) = data_files(kind, tmp_path)
    raw = bytearray(target.read_bytes())
    at = raw.index(b'"bid":', len(raw) // 2) + 7
    raw[at] = 0xFF
    target.write_bytes(bytes(raw))
    again = make(kind, tmp_path)
    assert again.open("t", DataFormat.QUOTE) == (epoch, 1000), "damage below the last seq: the epoch and seq stand"
    held = [r.seq for r in stored(again, kind, tmp_path)]
    assert len(held) == 999 and len(set(held)) == 999 and held[-1] == 1000
    (lost,) = set(range(1, 1001)) - set(held)
    assert b'"seq":%d' % lost in target.with_name(target.name + ".corrupt").read_bytes()
    assert again.health()["unreadable_records"] == 1.0
    again.append([quote(1001)])
    again.close()
    third = make_open(kind, tmp_path)
    assert [r.seq for r in stored(third, kind, tmp_path)][-2:] == [1000, 1001]
    third.close()


@kinds
@pytest.mark.parametrize("clean", [True, False])
def test_a_record_cut_short_at_the_end_is_a_write_that_never_returned(kind: str, clean: bool, tmp_path: Path) -> None:
    storage, epoch = write_thousand(kind, tmp_path)
    if clean:
        storage.close()
    else:
        storage._task.stop()  # type: ignore[union-attr]
    (target,) = data_files(kind, tmp_path)
    with open(target, "r+b") as handle:
        handle.truncate(target.stat().st_size - 30)  # what SIGKILL in the middle of os.write leaves
    again = make(kind, tmp_path)
    epoch2, last_seq = again.open("t", DataFormat.QUOTE)
    assert [r.seq for r in stored(again, kind, tmp_path)] == list(range(1, 1000))
    assert epoch2 == epoch, "SIGKILL keeps the epoch (SPEC section 3)"
    if clean:
        assert last_seq == 1000, "the clean meta recorded seq 1000: it is not handed out again"
    else:
        assert last_seq == 999, "an unfinished write was never seen: its seq is free"
    assert target.with_name(target.name + ".corrupt").exists()
    again.close()
    third = make(kind, tmp_path)
    assert third.open("t", DataFormat.QUOTE) == (epoch2, last_seq), "a close without appends records the seq it continued from"
    third.close()


@kinds
@pytest.mark.parametrize("damage", [b'"s\xffq":', b'"seq":1\xff'], ids=["key", "digit"])
def test_a_complete_last_record_damaged_after_a_crash_starts_a_new_epoch(kind: str, damage: bytes, tmp_path: Path) -> None:
    storage, epoch = write_thousand(kind, tmp_path)
    storage._task.stop()  # type: ignore[union-attr]
    (target,) = data_files(kind, tmp_path)
    raw = target.read_bytes()
    at = raw.rindex(b'"seq":1000')
    target.write_bytes(raw[:at] + damage + raw[at + len(damage) :])
    again = make(kind, tmp_path)
    epoch2, last_seq = again.open("t", DataFormat.QUOTE)
    assert [r.seq for r in stored(again, kind, tmp_path)] == list(range(1, 1000))
    assert epoch2 != epoch and last_seq == 999, "nothing proves seq 1000 was not seen: a new epoch"
    again.close()


@kinds
def test_a_missing_meta_file_keeps_every_record_and_starts_a_new_epoch(kind: str, tmp_path: Path) -> None:
    storage, epoch = write_thousand(kind, tmp_path)
    storage.close()
    (tmp_path / META_FILE).unlink()
    again = make(kind, tmp_path)
    epoch2, last_seq = again.open("t", DataFormat.QUOTE)
    assert epoch2 != epoch and last_seq == 1000
    assert [r.seq for r in stored(again, kind, tmp_path)] == list(range(1, 1001))
    again.close()


@kinds
def test_a_stale_meta_file_after_a_crash_is_overruled_by_the_data(kind: str, tmp_path: Path) -> None:
    storage = make(kind, tmp_path)
    epoch, _ = storage.open("t", DataFormat.QUOTE)
    storage.append([quote(seq) for seq in range(1, 501)])
    storage.flush()
    stale = (tmp_path / META_FILE).read_bytes()
    assert json.loads(stale)["last_seq"] == 500
    storage.append([quote(seq) for seq in range(501, 1001)])
    storage._task.stop()  # type: ignore[union-attr]  # SIGKILL before the next flush
    (tmp_path / META_FILE).write_bytes(stale)
    again = make(kind, tmp_path)
    assert again.open("t", DataFormat.QUOTE) == (epoch, 1000)
    again.close()


@kinds
def test_a_crash_after_a_reboot_without_fsync_always_starts_a_new_epoch(kind: str, tmp_path: Path) -> None:
    storage, epoch = write_thousand(kind, tmp_path)
    storage._task.stop()  # type: ignore[union-attr]
    meta = json.loads((tmp_path / META_FILE).read_text())
    meta["boot_id"] = "another-boot"
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    again = make(kind, tmp_path)
    epoch2, last_seq = again.open("t", DataFormat.QUOTE)
    assert epoch2 != epoch and last_seq == 1000
    again.close()


def test_candle_topic_count_equals_what_queries_return_after_duplicated_lines(tmp_path: Path) -> None:
    """The issue's count() 670 vs 1000, and the KeyError in open() with max_records_per_key."""
    storage = make_open("file", tmp_path, DataFormat.CANDLE)
    records = [candle(seq, f"K{seq % 10}", 60_000 * (seq // 10)) for seq in range(1, 1001)]
    storage.append(records)
    storage.close()
    for path in tmp_path.glob("*.jsonl"):  # what the old requeue left behind: every line twice
        path.write_bytes(path.read_bytes() * 2)
    for options in ({}, {"max_records_per_key": 50}):
        again = FileStorage(tmp_path, **options)
        again.open("t", DataFormat.CANDLE)
        got = again.query(TopicQuery(limit=100_000)).records
        assert again.count() == len(got) == (1000 if not options else 500)
        assert len({r.seq for r in got}) == len(got)
        again.close()


@pytest.mark.parametrize("upsert", [False, True])
def test_adding_a_seq_again_is_a_no_op_never_a_delete(upsert: bool) -> None:
    index = RecordIndex(upsert=upsert, max_per_key=3)
    records = [candle(seq, "K", 60_000 * seq) for seq in range(1, 6)]
    index.add(records)
    index.add(records)
    index.add(records[:2])
    assert len(index) == 3 and [r.seq for r in index.query()[0]] == [3, 4, 5]
    assert index.bounds() == (3, 5)


def test_an_older_candle_version_never_replaces_a_newer_one() -> None:
    index = RecordIndex(upsert=True)
    index.add([candle(7, "K", 60_000)])
    index.add([candle(3, "K", 60_000)])
    assert [r.seq for r in index.query()[0]] == [7] and len(index) == 1


def test_records_added_out_of_seq_order_read_back_in_order() -> None:
    index = RecordIndex(upsert=False)
    index.add([quote(s, "B") for s in (5, 6)])
    index.add([quote(s, "A") for s in (1, 2)])  # a key read back from disk later
    assert [r.seq for r in index.records()] == [1, 2, 5, 6] and index.bounds() == (1, 6)
    assert [r.seq for r in index.query(since_seq=1)[0]] == [2, 5, 6]


def test_max_keys_evicts_the_longest_idle_key_and_counts_it() -> None:
    evicted: list[str] = []
    index = RecordIndex(upsert=False, max_keys=2, on_evict=evicted.append)
    index.add([quote(1, "A"), quote(2, "B")])
    index.add([quote(3, "A")])
    index.add([quote(4, "C")])
    assert evicted == ["B"] and index.evicted_keys == 1
    assert [k.key for k in index.keys()] == ["A", "C"] and len(index) == 3



KILLED_CHILD = r"""
import json, sys
from gauss.core import TopicRecord
from gauss.records import DataFormat
from gauss_plugins.storage.file import FileStorage
from gauss_plugins.storage.raw_file import RawFileStorage

kind, path = sys.argv[1], sys.argv[2]
storage = FileStorage(path) if kind == "file" else RawFileStorage(path)
epoch, seq = storage.open("t", DataFormat.ANY)
print(json.dumps({"epoch": epoch, "last_seq": seq}), flush=True)
while True:
    batch = [TopicRecord(1000 + seq + i, "ABC"[(seq + i) % 3], {"n": seq + i}, seq + i) for i in range(1, 6)]
    storage.append(batch)
    seq += len(batch)
    print(seq, flush=True)  # acknowledged: a client may have seen records up to here
"""


@kinds
def test_sigkill_at_random_moments_never_loses_an_acknowledged_record_nor_reuses_a_seq(kind: str, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    path = tmp_path / "store"
    epoch = None
    acked: set[int] = set()  # every seq whose append returned
    for _ in range(3):
        with subprocess.Popen([sys.executable, "-c", KILLED_CHILD, kind, str(path)], stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None
            start = json.loads(child.stdout.readline())
            assert start["last_seq"] >= max(acked, default=0), f"seed {seed}: seq went back below what was acknowledged"
            if epoch is not None:
                assert start["epoch"] == epoch, f"seed {seed}: a SIGKILL on the same boot keeps the epoch"
            epoch = start["epoch"]
            previous = start["last_seq"]

            def ack(line: str) -> None:
                nonlocal previous
                acked.update(range(previous + 1, int(line) + 1))
                previous = int(line)

            for _ in range(rng.randrange(5, 200)):
                ack(child.stdout.readline())
            child.send_signal(signal.SIGKILL)
            for line in child.stdout:  # acknowledged before the kill landed
                ack(line)
    storage = make(kind, path)
    got_epoch, last_seq = storage.open("t", DataFormat.ANY)
    assert got_epoch == epoch and last_seq >= max(acked), f"seed {seed}"
    held = [r.seq for r in stored(storage, kind, path)]
    assert acked <= set(held), f"seed {seed}: acknowledged records lost: {sorted(acked - set(held))[:10]}"
    # A batch in flight at a kill may survive in part (file: its keys are separate files); its
    # records are whole, never acknowledged, and their seqs are never handed out again.
    assert held == sorted(set(held)) and last_seq == held[-1], f"seed {seed}: a seq stored twice"
    storage.close()


@kinds
def test_temporary_files_of_an_interrupted_replace_are_removed_at_open(kind: str, tmp_path: Path) -> None:
    storage, epoch = write_thousand(kind, tmp_path)
    storage.close()
    (tmp_path / "_meta.json.1a2b3c4d.tmp").write_bytes(b'{"epoch":')
    (tmp_path / "EURUSD.jsonl.5e6f7a8b.tmp").write_bytes(b'{"ts_ms":1')
    again = make(kind, tmp_path)
    assert again.open("t", DataFormat.QUOTE) == (epoch, 1000)
    assert not list(tmp_path.glob("*.tmp"))
    again.close()


@kinds
@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_fsync_always_syncs_before_append_returns_and_never_does_not(
    kind: str, policy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    storage = make(kind, tmp_path, fsync=policy, flush_interval=1.0)
    storage.open("t", DataFormat.QUOTE)
    monkeypatch.setattr(os, "fsync", counting_fsync)
    storage.append([quote(1, "A"), quote(2, "B")])
    assert bool(synced) == (policy == "always"), "an fsync before append returned"
    synced.clear()
    storage.flush()
    assert bool(synced) == (policy == "interval"), "the interval flush syncs what was written since"
    storage.close()
