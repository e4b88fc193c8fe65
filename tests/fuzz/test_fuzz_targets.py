"""The fuzz targets and their runner: seeds pass, broken code is caught, crashes are reported.

The long, coverage-guided runs are ``python tests/fuzz --seconds N`` (tox
env ``fuzz``); these tests only prove that each target's invariants hold on
its seeds and can fail, and that the runner reports a crash.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import fuzz_codecs
import fuzz_framing
import fuzz_middleware
import fuzz_rest
import fuzz_ws
import pytest

from gauss import _pycore

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("fuzz_runner", HERE / "__main__.py")
assert _spec is not None and _spec.loader is not None
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)


@pytest.mark.parametrize("name", sorted(runner.TARGETS))
def test_seeds_pass(name: str) -> None:
    check, seeds, max_len = runner.load(name)
    assert seeds
    for seed in seeds:
        assert len(seed) <= max_len
        check(seed)


def test_framing_targets_compare_the_compiled_kernel_with_its_twin() -> None:
    names = [build.__name__ for build in fuzz_framing.BUILDS]
    assert names[-1] == "gauss._pycore"
    if os.environ.get("GAUSS_EXPECT_COMPILED") == "1":
        assert names == ["gauss._core", "gauss._pycore"]


class _DropsLastFrame:
    """A twin with a planted defect: each feed loses its last frame."""

    __name__ = "broken_twin"

    def __init__(self) -> None:
        self.encode_lines = _pycore.encode_lines
        self.encode_length_prefixed = _pycore.encode_length_prefixed

    def LineDecoder(self, limit: int) -> object:  # noqa: N802 - the kernel's name
        return _Dropping(_pycore.LineDecoder(limit))

    def LengthPrefixedDecoder(self, limit: int) -> object:  # noqa: N802
        return _Dropping(_pycore.LengthPrefixedDecoder(limit))


class _Dropping:
    def __init__(self, inner: object) -> None:
        self.inner = inner

    @property
    def buffered(self) -> int:
        return self.inner.buffered  # type: ignore[attr-defined, no-any-return]

    def feed(self, chunk: bytes) -> list[bytes]:
        return self.inner.feed(chunk)[:-1]  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("check, seeds", [
    (fuzz_framing.check_lines, fuzz_framing.seeds_lines()),
    (fuzz_framing.check_length_prefixed, fuzz_framing.seeds_length_prefixed()),
])  # fmt: skip
def test_framing_invariants_catch_a_lost_frame(monkeypatch: pytest.MonkeyPatch, check, seeds) -> None:  # type: ignore[no-untyped-def]
    # alone (no compiled build to disagree with), the re-encoding invariant must catch it
    monkeypatch.setattr(fuzz_framing, "BUILDS", [_DropsLastFrame()])
    with pytest.raises(AssertionError):
        for seed in seeds:
            check(seed)


def test_middleware_invariant_catches_an_open_bomb_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    gzip = fuzz_middleware.MIDDLEWARE["gzip"]
    real = type(gzip).decode

    def no_limit(self, payloads, max_bytes, *rest):  # type: ignore[no-untyped-def]
        return real(self, payloads, 1 << 30)

    monkeypatch.setattr(type(gzip), "decode", no_limit)
    check = fuzz_middleware.check_middleware("gzip")
    with pytest.raises(AssertionError):
        for seed in fuzz_middleware.seeds("gzip"):
            check(seed)


def test_ws_messages_invariant_catches_an_unanswered_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fuzz_ws.WebSocketSession, "_error", lambda self, ident, text: None)
    with pytest.raises(AssertionError, match="answers"):
        for seed in fuzz_ws.seeds_ws_messages():
            fuzz_ws.check_ws_messages(seed)


def test_ws_messages_invariant_catches_a_record_pushed_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    from gauss.http import ws

    real = ws._Pusher._deliver

    def twice(self, delivery):  # type: ignore[no-untyped-def]
        real(self, delivery)
        real(self, delivery)

    monkeypatch.setattr(ws._Pusher, "_deliver", twice)
    with pytest.raises(AssertionError, match="repeat or go back"):
        for seed in fuzz_ws.seeds_ws_messages():
            fuzz_ws.check_ws_messages(seed)


def test_ws_frames_invariant_catches_a_corrupted_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    import gauss.http.frames as frames

    monkeypatch.setattr(frames, "unmask", lambda payload, mask: payload)  # forgets to unmask
    with pytest.raises(AssertionError):
        for seed in fuzz_ws.seeds_ws_frames():
            fuzz_ws.check_ws_frames(seed)


def test_rest_invariant_catches_an_answer_missing_a_record(monkeypatch: pytest.MonkeyPatch) -> None:
    from gauss.records import MAX_QUERY_LIMIT
    from gauss.topics import Topic

    real = Topic.query

    def loses_the_oldest(self, query):  # type: ignore[no-untyped-def]
        result = real(self, query)
        if query.limit != MAX_QUERY_LIMIT and result.records:  # the target's own full read stays right
            result.records = result.records[1:]
        return result

    monkeypatch.setattr(Topic, "query", loses_the_oldest)
    with pytest.raises(AssertionError, match="records"):
        for seed in fuzz_rest.seeds_rest():
            fuzz_rest.check_rest(seed)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HERE), *args], capture_output=True, text=True, timeout=240, env={**os.environ, **(env or {})}
    )


def test_runner_reports_executions_and_no_crash(tmp_path: Path) -> None:
    done = _run("--target", "length-prefixed", "--seconds", "2", "--engine", "random", "--artifacts", str(tmp_path / "a"))
    assert done.returncode == 0, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("| length-prefixed"))
    executions = int(row.split("|")[2].replace(",", ""))
    assert executions > 100
    assert "0 crashes" in done.stdout


def test_runner_reports_a_crash_and_how_to_replay_it(tmp_path: Path) -> None:
    artifacts = tmp_path / "crashes"
    done = _run("--target", "selftest", "--seconds", "2", "--artifacts", str(artifacts), env={"GAUSS_FUZZ_SELFTEST": "1"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the planted defect" in done.stdout
    crash = next(artifacts.glob("crash-*"))
    assert crash.read_bytes().startswith(b"FUZZ")
    assert f"replay: python tests/fuzz --replay {crash} --target selftest" in done.stdout
    replay = _run("--replay", str(crash), "--target", "selftest", env={"GAUSS_FUZZ_SELFTEST": "1"})
    assert replay.returncode != 0 and "the planted defect" in replay.stderr


# --- defects the fuzzers found, fixed: their inputs stay as regression tests ------------------


def test_found_a_ping_between_fragments_keeps_the_message() -> None:
    """gauss/http/frames.py forgot a fragmented message when a ping came between its fragments."""
    stream = (
        fuzz_ws.client_frame(fuzz_ws.OP_TEXT, b'{"action":', fin=False)
        + fuzz_ws.client_frame(fuzz_ws.OP_PING, b"p")
        + fuzz_ws.client_frame(fuzz_ws.OP_CONTINUATION, b'"query"}')
    )
    assert fuzz_ws._read_all(fuzz_ws._reader(stream, 1000)) == [
        (fuzz_ws.OP_PING, b"p", False),
        (fuzz_ws.OP_TEXT, b'{"action":"query"}', False),
    ]


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
def test_found_a_reserved_opcode_fails_the_connection(opcode: int) -> None:
    """RFC 6455 section 5.2: an unknown opcode fails the connection; 0xB..0xF came back as messages."""
    stream = fuzz_ws.client_frame(opcode, b"x") + fuzz_ws.client_frame(fuzz_ws.OP_TEXT, b"{}")
    assert fuzz_ws._read_all(fuzz_ws._reader(stream, 1000)) == []


def test_found_json_quotes_with_invalid_utf8_are_bad_on_both_paths() -> None:
    """The json codec's fused quote path accepted invalid UTF-8 in a field it does not know; decode() did not."""
    check = fuzz_codecs.check_codec("json")
    check(b'\x00{"symbol":"X","bid":0.5,"ask":0.25,"bid_size":0.0,"ask_si\xa9e":0.0,"ts_ms":1}')
    check(b'\x00{"symbol":"X","bid":0.5,"ask":0.25,"ts_ms":1,"x":"\xff"}')
