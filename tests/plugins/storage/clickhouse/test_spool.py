"""The ClickHouse storage's spool on its own (no server): frames in, frames out, what survives a reopen."""

from __future__ import annotations

from pathlib import Path

import pytest
from gauss_plugins.storage.clickhouse import spool as spool_module
from gauss_plugins.storage.clickhouse.spool import DeadLetter, DiskSpool, Frame, MemorySpool, SpoolFull


def frame(first: int, count: int = 3, size: int = 40) -> Frame:
    return Frame(first, first + count - 1, count, bytes([first % 251]) * size)


def opened(directory: Path, acked_seq: int = 0, max_bytes: int = 1 << 20) -> DiskSpool:
    spool = DiskSpool(directory, max_bytes)
    spool.load(acked_seq)
    return spool


def test_frames_come_back_in_order_and_delivered_segments_leave_the_disk(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    frames = [frame(1 + 3 * i) for i in range(5)]
    for f in frames:
        spool.append(f)
    assert spool.pending_records == 15 and spool.last_seq == 15
    assert spool.read(7) == frames[:2], "up to max_records, whole frames only"
    assert spool.read(1) == frames[:1], "at least one frame"
    spool.ack(2)
    assert spool.read(100) == frames[2:]
    spool.ack(3)
    assert spool.pending_records == 0 and spool.pending_bytes == 0 and spool.disk_bytes == 0
    assert not list(tmp_path.glob("*.spool"))
    spool.append(frame(16))  # a new segment after everything was delivered
    assert spool.read(100) == [frame(16)]


def test_segments_roll_over_and_each_goes_once_delivered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 100)
    spool = opened(tmp_path)
    frames = [frame(1 + 3 * i) for i in range(6)]  # 72 bytes each: two per segment
    for f in frames:
        spool.append(f)
    assert len(list(tmp_path.glob("*.spool"))) == 3
    assert spool.read(1000) == frames
    spool.ack(3)
    assert len(list(tmp_path.glob("*.spool"))) == 2
    assert spool.read(1000) == frames[3:]


def test_reopen_keeps_what_was_not_delivered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 100)  # two frames per segment
    first = opened(tmp_path)
    frames = [frame(1 + 3 * i) for i in range(6)]
    for f in frames:
        first.append(f)
    first.ack(1)
    first.close()
    again = opened(tmp_path, acked_seq=3)  # acked_seq as the state file records it
    assert again.read(1000) == frames[1:]
    assert again.pending_records == 15 and again.last_seq == 18
    again.close()
    # Without a state file every frame still on disk goes again (inserts are idempotent): a segment
    # is deleted only once all of it was delivered.
    assert opened(tmp_path).read(1000) == frames
    later = opened(tmp_path, acked_seq=6)
    assert later.read(1000) == frames[2:]
    assert len(list(tmp_path.glob("*.spool"))) == 2, "the delivered first segment is gone"


def written(directory: Path, frames: list[Frame]) -> Path:
    """The segment a spool wrote ``frames`` to, closed."""
    spool = opened(directory)
    for f in frames:
        spool.append(f)
    spool.close()
    return next(directory.glob("*.spool"))


def test_damage_in_the_middle_keeps_the_intact_frames_after_it(tmp_path: Path) -> None:
    frames = [frame(1 + 3 * i) for i in range(4)]
    segment = written(tmp_path, frames)
    data = bytearray(segment.read_bytes())
    data[72 + 40] ^= 0xFF  # inside the second frame's body
    segment.write_bytes(bytes(data))
    again = opened(tmp_path)
    assert again.read(1000) == [frames[0], frames[2], frames[3]]
    assert again.corrupt_bytes == 72
    assert segment.with_name(segment.name + ".corrupt").read_bytes() == bytes(data[72:144])
    assert again.hidden_damage, "a damaged complete frame may have held a seq someone saw"


@pytest.mark.parametrize("cut", [3, 40, 60, 71])
def test_a_last_frame_cut_short_is_an_unfinished_write_not_hidden_damage(tmp_path: Path, cut: int) -> None:
    frames = [frame(1 + 3 * i) for i in range(3)]
    segment = written(tmp_path, frames)
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) - cut])  # what SIGKILL in the middle of os.write leaves
    again = opened(tmp_path)
    assert again.read(1000) == frames[:2]
    assert again.corrupt_bytes == 72 - cut and not again.hidden_damage


def test_a_complete_last_frame_damaged_is_hidden_damage(tmp_path: Path) -> None:
    segment = written(tmp_path, [frame(1), frame(4)])
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))
    again = opened(tmp_path)
    assert again.read(1000) == [frame(1)] and again.hidden_damage


def test_a_full_spool_refuses_and_nothing_is_written(tmp_path: Path) -> None:
    spool = opened(tmp_path, max_bytes=150)
    spool.append(frame(1))
    spool.append(frame(4))
    with pytest.raises(SpoolFull):
        spool.append(frame(7))
    assert spool.pending_records == 6 and next(tmp_path.glob("*.spool")).stat().st_size == 144
    memory = MemorySpool(max_bytes=80)
    memory.append(frame(1))
    memory.append(frame(4))
    with pytest.raises(SpoolFull):
        memory.append(frame(7))
    assert memory.read(100) == [frame(1), frame(4)]


def test_dead_letters_are_counted_again_at_load_and_bounded(tmp_path: Path) -> None:
    letters = DeadLetter(tmp_path / "dead-letter", max_bytes=100)
    assert letters.put([frame(5)], {"error": "refused"}) is not None
    assert letters.put([frame(8, size=80)], {"error": "refused"}) is None, "past max_bytes: not kept"
    assert letters.last_seq == 10, "a dropped batch's seqs stay taken"
    again = DeadLetter(tmp_path / "dead-letter", max_bytes=100)
    again.load()
    assert (again.batches, again.records, again.bytes, again.last_seq) == (1, 3, 40, 7)
