"""``gauss-quotes-gen``: modes, wire formats, reconnects, against a real TCP listener."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from gauss.cli import quotes_gen
from gauss.core import DEFAULT_MAX_FRAME_BYTES
from gauss.quotes import QuoteCheck
from gauss.registry import create


class Listener:
    """A TCP server on 127.0.0.1 that records the bytes of every connection."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections: list[bytearray] = []
        self.conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            buffer = bytearray()
            with self._lock:
                self.connections.append(buffer)
                self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn, buffer), daemon=True).start()

    def _read(self, conn: socket.socket, buffer: bytearray) -> None:
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                buffer.extend(chunk)

    def data(self) -> bytes:
        with self._lock:
            return b"".join(bytes(b) for b in self.connections)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close() alone does not
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)
        with self._lock:
            for conn in self.conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def decode_wire(wire: bytes, codec: str, framing: str, compress: str | None) -> list[dict[str, Any]]:
    frames = create("framing", framing).decoder().feed(wire)
    if compress:
        frames, bad = create("middleware", compress).decode(frames, DEFAULT_MAX_FRAME_BYTES)
        assert bad == []
    records, rejected = create("codec", codec).decode(frames)
    assert rejected == []
    return [r.data for r in records]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def generate(tmp_path: Path, name: str, *extra: str) -> Path:
    out = tmp_path / name
    assert quotes_gen.main(["generate", "--out", str(out), *extra]) == 0
    return out


def test_generate_is_byte_identical_for_the_same_seed(tmp_path: Path) -> None:
    first = generate(tmp_path, "a.jsonl", "--count", "3000", "--seed", "42").read_bytes()
    second = generate(tmp_path, "b.jsonl", "--count", "3000", "--seed", "42").read_bytes()
    other = generate(tmp_path, "c.jsonl", "--count", "3000", "--seed", "43").read_bytes()
    assert first == second
    assert first != other
    assert first.count(b"\n") == 3000


def test_generated_quotes_are_realistic(tmp_path: Path) -> None:
    path = generate(tmp_path, "q.jsonl", "--count", "5000", "--seed", "7", "--symbols", "EURUSD,USDJPY,ACME")
    quotes = [json.loads(line) for line in path.read_text().splitlines()]
    assert {q["symbol"] for q in quotes} == {"EURUSD", "USDJPY", "ACME"}
    records, rejected = create("codec", "json").decode([json.dumps(q).encode() for q in quotes])
    good, bad = QuoteCheck(max_future_ms=None).check(records)
    assert rejected == [] and bad == [] and len(good) == 5000
    for q in quotes:
        assert 0 < q["bid"] < q["ask"]
        assert q["ask"] - q["bid"] < q["bid"] * 0.002  # a plausible spread
        assert q["bid_size"] > 0 and q["ask_size"] > 0
    eurusd = [q["bid"] for q in quotes if q["symbol"] == "EURUSD"]
    assert 0.9 < min(eurusd) and max(eurusd) < 1.3
    assert len(set(eurusd)) > 100  # it walks
    stamps = [q["ts_ms"] for q in quotes]
    assert stamps == sorted(stamps) and stamps[0] == quotes_gen.DEFAULT_START_MS


def test_generate_honours_start_ms_and_rate(tmp_path: Path) -> None:
    path = generate(tmp_path, "q.jsonl", "--count", "3", "--start-ms", "1000", "--rate", "10")
    assert [json.loads(line)["ts_ms"] for line in path.read_text().splitlines()] == [1000, 1100, 1200]


@pytest.mark.parametrize(
    ("codec", "framing", "compress"),
    [
        ("json", "lines", None),
        ("csv", "lines", None),
        ("protobuf", "length-prefixed", "gzip"),
        ("avro", "length-prefixed", "lz4"),
        ("json", "length-prefixed", "snappy"),
    ],
)
def test_file_at_max_speed_delivers_every_quote(
    tmp_path: Path, listener: Listener, codec: str, framing: str, compress: str | None
) -> None:
    path = generate(tmp_path, "q.jsonl", "--count", "12000", "--seed", "1")
    expected = [json.loads(line) for line in path.read_text().splitlines()]
    argv = ["file", str(path), "--speed", "max", "--target", f"127.0.0.1:{listener.port}"]
    argv += ["--codec", codec, "--framing", framing, "--compress", compress or "none"]
    assert quotes_gen.main(argv) == 0
    wait_for(lambda: len(decode_wire(listener.data(), codec, framing, compress)) >= len(expected))
    assert decode_wire(listener.data(), codec, framing, compress) == expected


def test_file_may_come_after_the_options(tmp_path: Path, listener: Listener) -> None:
    path = generate(tmp_path, "q.jsonl", "--count", "50", "--seed", "3")
    expected = [json.loads(line) for line in path.read_text().splitlines()]
    assert quotes_gen.main(["file", "--speed", "max", str(path), "--target", f"127.0.0.1:{listener.port}"]) == 0
    wait_for(lambda: len(decode_wire(listener.data(), "json", "lines", None)) >= len(expected))
    assert decode_wire(listener.data(), "json", "lines", None) == expected


def test_file_replays_at_the_recorded_pace(tmp_path: Path, listener: Listener) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(
        "\n".join(json.dumps({"symbol": "A", "bid": 1.0, "ask": 1.1, "ts_ms": 1000 + i * 400}) for i in range(4))
        + "\n"
    )
    started = time.monotonic()
    assert quotes_gen.main(["file", str(path), "--speed", "2", "--target", f"127.0.0.1:{listener.port}"]) == 0
    assert time.monotonic() - started >= 0.55  # 1200 ms of recorded time at twice the pace
    wait_for(lambda: listener.data().count(b"\n") == 4)


def test_file_skips_bad_lines_and_counts_them(
    tmp_path: Path, listener: Listener, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"symbol": "A", "bid": 1, "ask": 2, "ts_ms": 5}\nnot json\n{"bid": 1}\n')
    assert quotes_gen.main(["file", str(path), "--speed", "max", "--target", f"127.0.0.1:{listener.port}"]) == 0
    wait_for(lambda: listener.data().count(b"\n") == 1)
    err = capsys.readouterr().err
    assert "q.jsonl:2: skipped" in err and "q.jsonl:3: skipped" in err
    assert "2 errors" in err


def test_auto_sends_at_the_rate_and_prints_status(listener: Listener, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["auto", "--rate", "400", "--duration", "2.5", "--seed", "1", "--target", f"127.0.0.1:{listener.port}"]
    assert quotes_gen.main(argv) == 0
    err = capsys.readouterr().err
    status = [line for line in err.splitlines() if "quotes/s" in line and "sent" in line]
    assert len(status) >= 3  # at least one a second, and the final one
    wait_for(lambda: listener.data().count(b"\n") >= 500)
    quotes = decode_wire(listener.data(), "json", "lines", None)
    assert 500 <= len(quotes) <= 1000 + 50
    now_ms = time.time() * 1000
    assert all(now_ms - 60_000 < q["ts_ms"] <= now_ms for q in quotes)


def test_auto_stops_after_count(listener: Listener) -> None:
    argv = ["auto", "--rate", "100000", "--count", "2500", "--target", f"127.0.0.1:{listener.port}"]
    argv += ["--codec", "csv"]
    assert quotes_gen.main(argv) == 0
    wait_for(lambda: listener.data().count(b"\n") >= 2500)
    time.sleep(0.2)
    assert len(decode_wire(listener.data(), "csv", "lines", None)) == 2500


def test_manual_sends_each_line(listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("EURUSD 1.0850 1.0852\nbad line\nUSDJPY 150.1 150.2 1e6 2e6\n"))
    assert quotes_gen.main(["manual", "--target", f"127.0.0.1:{listener.port}"]) == 0
    wait_for(lambda: listener.data().count(b"\n") == 2)
    first, second = decode_wire(listener.data(), "json", "lines", None)
    assert (first["symbol"], first["bid"], first["ask"]) == ("EURUSD", 1.085, 1.0852)
    assert (second["bid_size"], second["ask_size"]) == (1e6, 2e6)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--codec", "protobuf"], "--codec: codec 'protobuf' is binary; 'lines' framing carries text codecs only"),
        (["--codec", "avro", "--framing", "lines"], "--codec: codec 'avro' is binary; 'lines' framing carries text codecs only"),
        (["--compress", "gzip"], "--compress: 'lines' framing carries uncompressed text only"),
        (["--codec", "csv", "--compress", "snappy"], "--compress: 'lines' framing carries uncompressed text only"),
        (["--codec", "yaml", "--framing", "length-prefixed"], "unknown codec 'yaml'"),
        (["--compress", "zstd", "--framing", "length-prefixed"], "unknown middleware 'zstd'"),
        (["--target", "nowhere"], "HOST:PORT"),
    ],
)
def test_invalid_combination_is_refused_with_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        quotes_gen.main(["auto", "--count", "1", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_sender_reconnects_when_the_server_closes_the_connection(listener: Listener) -> None:
    sender = quotes_gen.Sender("127.0.0.1", listener.port)
    try:
        sender.send(b"first\n")
        wait_for(lambda: len(listener.connections) == 1 and bytes(listener.connections[0]) == b"first\n")
        listener.conns[0].shutdown(socket.SHUT_RDWR)
        listener.conns[0].close()
        time.sleep(0.2)  # let the FIN arrive
        sender.send(b"second\n")
        wait_for(lambda: len(listener.connections) == 2 and bytes(listener.connections[1]) == b"second\n")
    finally:
        sender.close()


def test_sender_waits_for_a_restarted_server() -> None:
    first = Listener()
    port = first.port
    sender = quotes_gen.Sender("127.0.0.1", port, max_backoff=0.2)
    second: Listener | None = None
    try:
        sender.send(b"before\n")
        wait_for(lambda: first.data() == b"before\n")
        first.close()
        done = threading.Event()
        thread = threading.Thread(target=lambda: (sender.send(b"after\n"), done.set()), daemon=True)
        thread.start()
        time.sleep(0.5)
        assert not done.is_set()
        second = Listener(port)
        assert done.wait(30)
        wait_for(lambda: second is not None and second.data() == b"after\n")
        assert sender.errors > 0
    finally:
        sender.close()
        if second is not None:
            second.close()
