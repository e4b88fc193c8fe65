"""``gauss-serve``'s API against hostile clients (issue 11), the server in its own process.

Each test samples the server's RSS before and during the attack, and checks
its log: idle and slow sockets never lock a real client out, clients that
never read are cut off at ``write_timeout_s`` with memory bounded by
``max_inflight_bytes``, and nothing a client sends leaves a traceback.
"""

from __future__ import annotations

import base64
import json
import re
import resource
import socket
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import pytest
import requests
import websocket
from support import free_port
from support.http import ServeProcess, masked_text_frame, metric_value, stalled_ws

MIB = 1 << 20
RECORDS = 100_000


def config(api_port: int, source_port: int, **api: Any) -> str:
    extra = "\n".join(f"{k} = {json.dumps(v)}" for k, v in api.items())
    return f"""
[hub]
status_interval = 0

[api]
port = {api_port}
{extra}

[[topics]]
name = "quotes.raw"
format = "quote"
storage = {{ type = "memory", capacity = 200000 }}

[[sources]]
topic = "quotes.raw"
transport = {{ type = "tcp-server", port = {source_port} }}
policy = "back_pressure"
"""


class Served:
    def __init__(self, directory: Path, **api: Any) -> None:
        self.api_port, self.source_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.process = ServeProcess(directory, config(self.api_port, self.source_port, **api))

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(self.base + path, params=params, timeout=30)

    def metric(self, series: str) -> float:
        return metric_value(self.get("/metrics").text, series)

    def feed(self, n: int) -> None:
        now = int(time.time() * 1000) - n
        lines = (
            json.dumps({"symbol": "EURUSD", "bid": 1.1 + i * 1e-7, "ask": 1.1002 + i * 1e-7,
                        "bid_size": 1.0, "ask_size": 1.0, "ts_ms": now + i}) + "\n"
            for i in range(n)
        )  # fmt: skip
        with socket.create_connection(("127.0.0.1", self.source_port), timeout=30) as sock:
            sock.sendall("".join(lines).encode())
        deadline = time.monotonic() + 60
        while self.get("/api/topics").json()[0]["records"] < n:
            assert time.monotonic() < deadline, "quotes did not arrive"
            time.sleep(0.1)

    def assert_no_traceback(self) -> None:
        output = self.process.output()
        assert "Traceback" not in output, output[-5000:]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(**api: Any) -> Served:
        directory = tmp_path / f"s{len(started)}"
        directory.mkdir()
        served = Served(directory, **api)
        started.append(served)
        return served

    yield start
    for served in started:
        assert served.process.stop() == 0, served.process.output()[-3000:]


class RssSampler(threading.Thread):
    """The server's peak RSS, sampled every 50 ms while an attack runs."""

    def __init__(self, served: Served) -> None:
        super().__init__(daemon=True)
        self.served = served
        self.base = served.process.rss_bytes()
        self.peak = self.base
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            self.peak = max(self.peak, self.served.process.rss_bytes())

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, self.served.process.rss_bytes())
        return self.peak - self.base


def timed_health(served: Served) -> float:
    start = time.monotonic()
    assert served.get("/api/health").json() == {"status": "ok"}
    return time.monotonic() - start


def test_two_thousand_idle_sockets_never_keep_a_client_waiting(serve: Callable[..., Served]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    served = serve()  # defaults: max_connections 1024, request_timeout_s 10
    sampler = RssSampler(served)
    sampler.start()
    idle = [socket.create_connection(("127.0.0.1", served.api_port), timeout=10) for _ in range(2000)]
    try:
        worst = max(timed_health(served) for _ in range(10))
        ws = websocket.create_connection(f"ws://127.0.0.1:{served.api_port}/ws", timeout=10)
        ws.send(json.dumps({"action": "subscribe", "topic": "quotes.raw"}))
        assert json.loads(ws.recv())["type"] == "subscribed"
        ws.close()
        growth = sampler.stop()
    finally:
        for sock in idle:
            sock.close()
    assert worst < 2.0, f"health took {worst:.2f} s behind 2,000 idle sockets"
    assert growth < 100 * MIB, f"RSS grew {growth / MIB:.0f} MiB"
    assert served.metric("gauss_http_connections_evicted_total") >= 2000 - 1024
    assert "soft limit" in served.process.output()  # the open-files limit was logged at start
    served.assert_no_traceback()


def test_slowloris_is_cut_at_request_timeout(serve: Callable[..., Served]) -> None:
    served = serve(request_timeout_s=3.0)
    sock = socket.create_connection(("127.0.0.1", served.api_port), timeout=10)
    sock.settimeout(0.05)
    start = time.monotonic()
    closed = None
    for byte in b"GET /api/topics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"z" * 60:
        try:
            sock.send(bytes([byte]))
            if sock.recv(1) == b"":
                closed = time.monotonic() - start
                break
        except socket.timeout:
            pass
        except OSError:
            closed = time.monotonic() - start
            break
        time.sleep(1.0)  # one byte a second
    sock.close()
    assert closed is not None and 2.5 <= closed < 6.0, closed
    assert served.metric('gauss_http_timeouts_total{kind="request_head"}') == 1.0
    assert timed_health(served) < 1.0


def _stalled_rest(port: int, path: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


@pytest.mark.parametrize("kind", ["rest", "ws"])
def test_twenty_clients_asking_for_100k_records_and_never_reading(serve: Callable[..., Served], kind: str) -> None:
    write_timeout = 2.0
    served = serve(write_timeout_s=write_timeout)
    served.feed(RECORDS)
    assert len(served.get("/api/topics/quotes.raw", limit=RECORDS).json()["records"]) == RECORDS  # warm
    sampler = RssSampler(served)
    sampler.start()
    start = time.monotonic()
    if kind == "rest":
        clients = [_stalled_rest(served.api_port, f"/api/topics/quotes.raw?limit={RECORDS}") for _ in range(20)]
    else:
        clients = [stalled_ws("127.0.0.1", served.api_port) for _ in range(20)]
        for i, sock in enumerate(clients):
            query = {"action": "query", "topic": "quotes.raw", "limit": RECORDS, "id": i}
            sock.sendall(masked_text_frame(json.dumps(query).encode()))
    try:
        time.sleep(0.5)
        # Served while the 20 hang; not at once: a storage query of 100,000 records holds the
        # loop (~0.8 s compiled, more with the pure twins, on this loaded machine) and two or
        # three are admitted at a time. Measured 0.25-2.9 s.
        health = timed_health(served)
        assert health < 8.0, health
        deadline = time.monotonic() + 30
        while served.metric("gauss_http_inflight_bytes") > 0:  # every answer gave its bytes back
            assert time.monotonic() < deadline, "answers still in flight"
            time.sleep(0.2)
        elapsed = time.monotonic() - start
        growth = sampler.stop()
    finally:
        for sock in clients:
            sock.close()
    timeouts = served.metric('gauss_http_timeouts_total{kind="%s"}' % ("write" if kind == "rest" else "ws_write"))
    refused = served.metric("gauss_http_inflight_refusals_total")
    assert timeouts >= 1 and timeouts + refused == 20, (timeouts, refused)
    assert elapsed >= write_timeout  # cut off by the write timeout, not before
    assert growth < 256 * MIB, f"RSS grew {growth / MIB:.0f} MiB"
    print(f"{kind}: 20 stalled clients: RSS +{growth / MIB:.0f} MiB, {timeouts:.0f} cut off, {refused:.0f} refused, "
          f"health {health:.2f} s, all released after {elapsed:.1f} s")  # fmt: skip
    served.assert_no_traceback()


def test_open_files_soft_limit_is_raised_to_the_hard_limit(serve: Callable[..., Served], tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 512:
        pytest.skip(f"hard open-files limit {hard} leaves nothing to raise")

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))

    process = ServeProcess(tmp_path, config(free_port(), free_port()), preexec_fn=lower)
    try:
        limits = Path(f"/proc/{process.proc.pid}/limits").read_text()
        soft_now = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits)
        assert soft_now is not None and int(soft_now.group(1)) == hard
        assert f"soft limit raised from 512 to {hard} (hard limit {hard})" in process.output()
    finally:
        assert process.stop() == 0


def test_nothing_a_client_sends_leaves_a_traceback(serve: Callable[..., Served]) -> None:
    served = serve(request_timeout_s=1.0)
    served.feed(10)
    garbage = [
        b"\x00\xff\xfe garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"GET /api/health HTTP/1.1\r\nBad header line\r\n\r\n",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
        b"POST /api/topics HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 99\r\nSec-WebSocket-Key: x\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: !!not base64!!\r\n\r\n",
        b"GET /ws HTTP/1.0\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"GET /api/topics/quotes.raw?from=99999999999999999999999&to=-99999999999999999999 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /api/topics/%ff%fe?limit=%00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ]
    for _ in range(50):  # a flood: the log must stay short too
        for payload in garbage:
            with socket.create_connection(("127.0.0.1", served.api_port), timeout=10) as sock:
                try:
                    sock.sendall(payload)
                    sock.settimeout(3)
                    sock.recv(65536)
                except OSError:
                    pass
    ws = websocket.create_connection(f"ws://127.0.0.1:{served.api_port}/ws", timeout=10)
    for message in ('{"action":"subscribe","topic":"quotes.raw","since_ts":1e30}', "[1,2", '"x"', "{}",
                    '{"action":"query","topic":"quotes.raw","since_seq":1e300}', "\x00"):
        ws.send(message)
        assert json.loads(ws.recv())["type"] == "error"
    ws.send_binary(b"\x89\x00binary")
    assert json.loads(ws.recv())["type"] == "error"
    ws.send(json.dumps({"action": "query", "topic": "quotes.raw"}))
    assert len(json.loads(ws.recv())["records"]) == 10  # the same connection, still served
    ws.close()
    assert timed_health(served) < 1.0
    served.assert_no_traceback()
    lines = served.process.output().splitlines()
    assert len(lines) < 40, "\n".join(lines[-40:])  # rate-limited: not one line per bad request


# --- SPEC section 4 on the wire: every refusal JSON, HEAD wherever GET --------------------------

Answer = tuple[str, dict[str, str], bytes]  # status line, headers (names lower-cased), body


def read_answer(reader: BinaryIO, method: str = "GET") -> Answer:
    """One HTTP answer off a raw connection (a HEAD's or a 101's has no body, whatever its headers say)."""
    status = reader.readline().decode("latin-1").rstrip("\r\n")
    headers: dict[str, str] = {}
    while line := reader.readline().decode("latin-1").rstrip("\r\n"):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if method == "HEAD" or status.startswith("HTTP/1.1 101 "):
        return status, headers, b""
    if "content-length" in headers:
        return status, headers, reader.read(int(headers["content-length"]))
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int(reader.readline(), 16):
            body += reader.read(size)
            reader.readline()
        reader.readline()
        return status, headers, body
    return status, headers, reader.read()


def raw_answer(port: int, request: bytes) -> Answer:
    """Send exactly ``request`` on a new connection; its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, sock.makefile("rb") as reader:
        sock.sendall(request)
        return read_answer(reader)


def assert_json_error(answer: Answer, status: int, message: str = "") -> dict[str, str]:
    line, headers, body = answer
    assert line.startswith(f"HTTP/1.1 {status} "), answer
    assert headers.get("content-type") == "application/json", answer
    error = json.loads(body)["error"]
    assert message in error, answer
    return headers


def upgrade(*lines: str, version: str = "HTTP/1.1") -> bytes:
    head = [f"GET /ws {version}", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: keep-alive, Upgrade", *lines]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def test_every_bad_websocket_upgrade_is_a_json_400(serve: Callable[..., Served]) -> None:
    served = serve()
    port = served.api_port
    key = "Sec-WebSocket-Key: " + base64.b64encode(b"k" * 16).decode()
    bad_versions = [upgrade(key), upgrade("Sec-WebSocket-Version: 99", key), upgrade("Sec-WebSocket-Version: 8", key)]
    for request in bad_versions:
        headers = assert_json_error(raw_answer(port, request), 400, "/ws: Sec-WebSocket-Version")
        assert headers["sec-websocket-version"] == "13"  # RFC 6455 section 4.2.2
    bad = {
        upgrade("Sec-WebSocket-Version: 13", key, version="HTTP/1.0"): "/ws: a WebSocket upgrade needs HTTP/1.1",
        upgrade("Sec-WebSocket-Version: 13"): "/ws: Sec-WebSocket-Key is missing",
        upgrade("Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: !!not base64!!"): "base64 of 16 bytes",
        upgrade("Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: YWJj"): "base64 of 16 bytes",  # 3 bytes
        upgrade("Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: " + base64.b64encode(b"k" * 17).decode()): "16 bytes",
    }
    for request, message in bad.items():
        headers = assert_json_error(raw_answer(port, request), 400, message)
        assert "sec-websocket-version" not in headers
    plain = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\r\n"  # no Connection: upgrade
    assert_json_error(raw_answer(port, plain), 400, "a WebSocket upgrade is required")
    assert raw_answer(port, upgrade("Sec-WebSocket-Version: 13", key))[0] == "HTTP/1.1 101 Switching Protocols"
    served.assert_no_traceback()


def test_an_overlong_request_line_is_a_json_414_and_an_oversized_head_a_json_400(serve: Callable[..., Served]) -> None:
    served = serve()
    port = served.api_port
    long_line = b"GET /api/health?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    assert_json_error(raw_answer(port, long_line), 414, "request line too long (limit 8192 bytes)")
    many_headers = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-a: b\r\n" * 101 + b"\r\n"
    assert_json_error(raw_answer(port, many_headers), 400, "malformed HTTP request")
    long_header = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: " + b"b" * 70_000 + b"\r\n\r\n"
    assert_json_error(raw_answer(port, long_header), 400, "malformed HTTP request")
    assert served.metric("gauss_http_bad_requests_total") == 3.0
    served.assert_no_traceback()


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_http11_without_a_host_header_is_a_json_400(serve: Callable[..., Served], token: str | None) -> None:
    served = serve(**({"token": token} if token else {}))
    port = served.api_port
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    for head in (b"", b"Host : evil.com\r\n"):  # a space before the colon: gevent sees no Host
        request = b"GET /api/topics HTTP/1.1\r\n" + head + auth + b"\r\n"
        assert_json_error(raw_answer(port, request), 400, "missing Host header (HTTP/1.1 requires one)")
    ws = b"GET /ws HTTP/1.1\r\n" + auth + b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    ws += b"Sec-WebSocket-Key: " + base64.b64encode(b"k" * 16) + b"\r\n\r\n"
    assert_json_error(raw_answer(port, ws), 400, "missing Host header")
    twice = b"GET /api/topics HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n" + auth + b"\r\n"
    assert_json_error(raw_answer(port, twice), 400, "more than one Host header")
    status, _, body = raw_answer(port, b"GET /api/topics HTTP/1.0\r\n" + auth + b"\r\n")  # 1.0 may omit it
    assert status == "HTTP/1.1 200 OK" and json.loads(body)[0]["name"] == "quotes.raw"


def test_connections_evicted_mid_head_end_quietly(serve: Callable[..., Served]) -> None:
    limit = 8
    served = serve(max_connections=limit, request_timeout_s=60.0)  # only an eviction ends a half-open head
    health = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for _ in range(5):
        half_open = [socket.create_connection(("127.0.0.1", served.api_port), timeout=10) for _ in range(limit)]
        for sock in half_open:
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ")
        time.sleep(0.3)  # every head is being read when the newcomers arrive
        newcomers = [socket.create_connection(("127.0.0.1", served.api_port), timeout=10) for _ in range(limit)]
        try:
            for sock in newcomers:  # each takes the slot of the longest idle: a half-open head
                sock.sendall(health)
                with sock.makefile("rb") as reader:
                    status, _, body = read_answer(reader)
                assert status == "HTTP/1.1 200 OK" and json.loads(body) == {"status": "ok"}
            for sock in half_open:
                assert sock.recv(1) == b""  # evicted: closed without an answer
        finally:
            for sock in half_open + newcomers:
                sock.close()
    assert served.metric("gauss_http_connections_evicted_total") >= 5 * limit
    time.sleep(0.5)
    served.assert_no_traceback()


def test_head_answers_like_get_without_a_body(serve: Callable[..., Served]) -> None:
    served = serve()
    served.feed(10)
    paths = ["/api/health", "/api/topics", "/api/topics/quotes.raw", "/api/topics/quotes.raw/keys",
             "/api/topics/quotes.raw/latest", "/metrics", "/api/topics/nothing"]  # fmt: skip
    with socket.create_connection(("127.0.0.1", served.api_port), timeout=10) as sock, sock.makefile("rb") as reader:
        for path in paths:  # one keep-alive connection: a HEAD's answer must end at its head
            answers = {}
            for method in ("HEAD", "GET"):
                sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                answers[method] = read_answer(reader, method)
            (head_status, head, _), (get_status, get, body) = answers["HEAD"], answers["GET"]
            assert head_status == get_status and head["content-type"] == get["content-type"], (path, answers)
            if "content-length" in get and path != "/metrics":  # the exposition changes between the two
                assert head["content-length"] == get["content-length"] == str(len(body)), (path, answers)
            if "content-length" not in get:  # streamed: the length is not known without the body
                assert "content-length" not in head and "transfer-encoding" not in head, (path, answers)
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_answer(reader)[2] == b'{"status":"ok"}'
    served.assert_no_traceback()


def test_a_request_body_is_bounded_in_size_and_in_time(serve: Callable[..., Served]) -> None:
    """No route takes a body: a large one is a 413 before it is read; one sent slowly is cut at request_timeout_s."""
    served = serve(request_timeout_s=1.0)
    port = served.api_port
    started = time.monotonic()
    answer = raw_answer(port, b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n\r\n")
    assert_json_error(answer, 413, "request body over 65536 bytes")
    assert answer[1].get("connection") == "close" and time.monotonic() - started < 0.5
    served_long = serve(request_timeout_s=10.0)
    with socket.create_connection(("127.0.0.1", served_long.api_port), timeout=20) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999\r\n\r\n")
        assert read_answer(reader)[0].startswith("HTTP/1.1 413 ")
        started = time.monotonic()
        assert reader.read() == b""  # the 413 says Connection: close, and it closes: not after request_timeout_s (10 s)
        assert time.monotonic() - started < 3.0
    small = b"POST /api/topics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"
    assert_json_error(raw_answer(port, small), 405)  # a small body is read and thrown away, as before
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nabc")  # 997 bytes never come
        assert read_answer(reader)[0].startswith("HTTP/1.1 200 ")
        started = time.monotonic()
        assert reader.read() == b""  # closed by the server
        assert 0.5 < time.monotonic() - started < 5.0
    assert served.metric('gauss_http_timeouts_total{kind="request_body"}') == 1.0
    assert timed_health(served) < 1.0
    served.assert_no_traceback()
