"""SIGKILL the default configuration under load: nothing a client saw is lost (SPEC §3, §6).

The shipped ``config.toml`` (ports moved to free ones, data in a temporary
directory) is fed a steady stream of quotes while a WebSocket subscriber, a
TCP client of the 9300 sink and REST queries watch ``quotes.raw``. At
random moments the server is killed with SIGKILL and restarted. After every
restart each record any client saw is there with its seq, under the same
epoch, and the candles equal an independent computation from the quotes
the topic holds.

Long (a few seconds per kill): runs where ``GAUSS_LONG_CHECKS=1`` (one tox env).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket
from support.serve import default_config_on_free_ports, expected_candles, serve_command

pytestmark = pytest.mark.skipif(
    os.environ.get("GAUSS_LONG_CHECKS") != "1", reason="long check: set GAUSS_LONG_CHECKS=1 (tox env cython does)"
)

SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "AUDUSD"]
MINUTE = 60_000


class Watchers:
    """What clients saw of quotes.raw: WebSocket pushes and REST answers (with seq), 9300 payloads."""

    def __init__(self) -> None:
        self.by_seq: dict[int, dict[str, Any]] = {}
        self.sink_payloads: list[dict[str, Any]] = []
        self.epochs: set[str] = set()
        self.lock = threading.Lock()

    def saw(self, record: dict[str, Any]) -> None:
        with self.lock:
            known = self.by_seq.setdefault(record["seq"], record)
        assert known == record, f"seq {record['seq']} shown as two records: {known} and {record}"


def watch_ws(url: str, watchers: Watchers, stop: threading.Event) -> None:
    try:
        conn = websocket.create_connection(url, timeout=5)
    except OSError:
        return
    try:
        conn.send(json.dumps({"action": "subscribe", "topic": "quotes.raw"}))
        while not stop.is_set():
            message = json.loads(conn.recv())
            if message.get("type") == "subscribed":
                with watchers.lock:
                    watchers.epochs.add(message["epoch"])
            for record in message.get("records", ()):
                watchers.saw(record)
    except (OSError, websocket.WebSocketException, ValueError):
        return
    finally:
        conn.close()


def watch_sink(port: int, watchers: Watchers, stop: threading.Event) -> None:
    try:
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return
    buffer = b""
    try:
        while not stop.is_set():
            chunk = conn.recv(65536)
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            with watchers.lock:
                watchers.sink_payloads.extend(json.loads(line) for line in lines if line)
    except OSError:
        return
    finally:
        conn.close()


def watch_rest(base: str, watchers: Watchers, stop: threading.Event) -> None:
    while not stop.wait(0.2):
        try:
            answer = requests.get(f"{base}/api/topics/quotes.raw", params={"limit": 100000}, timeout=5).json()
        except (OSError, ValueError, requests.RequestException):
            return
        for record in answer.get("records", ()):
            watchers.saw(record)


class Feeder(threading.Thread):
    """Quotes with rising timestamps into the source port, one connection per server life."""

    def __init__(self, port: int, start_ms: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.clock = start_ms
        self.n = 0
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            conn = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            return
        with conn:
            while not self.stop.is_set():
                lines = []
                for _ in range(50):
                    self.n += 1
                    self.clock += 7
                    mid = 1.0 + (self.n * 7919 % 1000) / 10_000
                    quote = {"symbol": SYMBOLS[self.n % len(SYMBOLS)], "bid": mid - 0.0001, "ask": mid + 0.0001,
                             "bid_size": 1.0, "ask_size": 2.0, "ts_ms": self.clock}  # fmt: skip
                    lines.append(json.dumps(quote))
                try:
                    conn.sendall(("\n".join(lines) + "\n").encode())
                except OSError:
                    return
                time.sleep(0.005)


def start(config: Path, api_port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen([*serve_command(), "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            if requests.get(f"http://127.0.0.1:{api_port}/api/health", timeout=1).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.05)
    raise AssertionError("gauss-serve did not answer in time")


def held(base: str, topic: str, key: str | None = None) -> list[dict[str, Any]]:
    """Every record the topic holds (of ``key``), ascending, paged back with ``to`` past the answers' limit.

    Twenty server lives can feed quotes.raw more than one answer's 100,000
    records (the runs' lengths are random): a truncated answer is the most
    recent part, so the next page asks for what is older than its first
    record, that record's ``ts_ms`` included (ties), and repeats drop by seq.
    """
    by_seq: dict[int, dict[str, Any]] = {}
    params: dict[str, Any] = {"limit": 100000}
    if key is not None:
        params["key"] = key
    while True:
        answer = requests.get(f"{base}/api/topics/{topic}", params=params, timeout=30).json()
        page = answer["records"]
        known = len(by_seq)
        by_seq.update((r["seq"], r) for r in page)
        if not answer["truncated"] or len(by_seq) == known:
            return sorted(by_seq.values(), key=lambda r: (r["ts_ms"], r["seq"]))
        params["to"] = page[0]["ts_ms"] + 1


def epoch_of(ws_url: str) -> str:
    conn = websocket.create_connection(ws_url, timeout=5)
    try:
        conn.send(json.dumps({"action": "subscribe", "topic": "quotes.raw"}))
        return str(json.loads(conn.recv())["epoch"])
    finally:
        conn.close()


def check_restart(base: str, ws_url: str, watchers: Watchers, epoch: str) -> None:
    assert epoch_of(ws_url) == epoch, "the tick log must keep quotes.raw's epoch across SIGKILL"
    records = held(base, "quotes.raw")
    by_seq = {r["seq"]: r for r in records}
    seqs = sorted(by_seq)
    assert seqs == list(range(1, len(seqs) + 1)), "seqs of quotes.raw are not contiguous from 1"
    missing = [seq for seq in watchers.by_seq if by_seq.get(seq) != watchers.by_seq[seq]]
    assert not missing, f"{len(missing)} records a client saw are lost or changed, e.g. seq {missing[:5]}"
    payloads = {json.dumps(r["data"], sort_keys=True) for r in records}
    lost = [p for p in watchers.sink_payloads if json.dumps(p, sort_keys=True) not in payloads]
    assert not lost, f"{len(lost)} quotes sent on the 9300 sink are gone, e.g. {lost[:2]}"
    quotes = [r["data"] for r in records]
    for symbol in SYMBOLS:
        want = {k[1]: v for k, v in expected_candles(quotes, MINUTE).items() if k[0] == symbol}
        deadline = time.monotonic() + 10
        while True:
            got = {
                c["ts_ms"]: (c["data"]["open"], c["data"]["high"], c["data"]["low"], c["data"]["close"], c["data"]["ticks"])
                for c in held(base, "ohlc.1m", symbol)
            }
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert got == want, f"{symbol} 1m candles differ from the quotes held: {set(got.items()) ^ set(want.items())}"


@pytest.mark.parametrize("fsync", [None, "always"], ids=["default-fsync", "fsync-always"])
def test_sigkill_loses_nothing_a_client_saw(tmp_path: Path, fsync: str | None) -> None:
    seed = int(os.environ.get("GAUSS_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    # 20 kills under the default policy; 6 under "always" (each kill costs a restart: CI time).
    kills = int(os.environ.get("GAUSS_CRASH_KILLS", "20" if fsync is None else "6"))
    config, ports = default_config_on_free_ports(tmp_path, fsync=fsync)
    base, ws_url = f"http://127.0.0.1:{ports[9200]}", f"ws://127.0.0.1:{ports[9200]}/ws"
    log = tmp_path / "serve.log"
    watchers = Watchers()
    clock = 1_732_406_400_000
    proc = start(config, ports[9200], log)
    epoch = epoch_of(ws_url)
    try:
        for kill in range(kills):
            stop = threading.Event()
            threads = [
                threading.Thread(target=watch_ws, args=(ws_url, watchers, stop), daemon=True),
                threading.Thread(target=watch_sink, args=(ports[9300], watchers, stop), daemon=True),
                threading.Thread(target=watch_rest, args=(base, watchers, stop), daemon=True),
            ]
            for thread in threads:
                thread.start()
            time.sleep(0.2)
            feeder = Feeder(ports[9100], clock)
            feeder.start()
            time.sleep(rng.uniform(0.2, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            feeder.stop.set()
            stop.set()
            feeder.join(timeout=10)
            for thread in threads:
                thread.join(timeout=10)
            clock = feeder.clock
            proc = start(config, ports[9200], log)
            try:
                check_restart(base, ws_url, watchers, epoch)
            except AssertionError as exc:
                raise AssertionError(f"after kill {kill + 1} (seed {seed}, GAUSS_CRASH_SEED to replay): {exc}") from None
        assert watchers.by_seq, "no client saw any record: the test proved nothing"
        assert watchers.epochs <= {epoch}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
