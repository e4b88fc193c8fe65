"""Time and memory limits of the API against clients that stall, idle or never read (SPEC section 4, issue 11).

Every test runs a real server (in this process, gevent) and real sockets;
the blocking client work runs in gevent's thread pool (``off_loop``).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Callable

import gevent
import pytest
import websocket
from support.http import Api, metric_value, off_loop, quotes, stalled_ws, wait_for

from gauss.http.limits import ConnectionTable, InflightBudget, InflightLimit, Share


def metric(api: Api, series: str) -> float:
    return metric_value(api.get("/metrics").text, series)


def closed_after(sock: socket.socket, send: Callable[[], bool] | None = None, limit: float = 30.0) -> float:
    """Seconds until the server closes ``sock`` (EOF or reset); ``send()`` is called between reads."""
    start = time.monotonic()
    sock.settimeout(0.05)
    while time.monotonic() - start < limit:
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except socket.timeout:
            pass
        except OSError:
            return time.monotonic() - start
        if send is not None:
            try:
                send()
            except OSError:
                return time.monotonic() - start
    raise AssertionError(f"server kept the connection open for {limit} s")


def health_over(sock: socket.socket) -> bytes:
    """Ask for /api/health on a kept-alive raw connection; the whole answer."""
    sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while not data.endswith(b'{"status":"ok"}'):
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"closed after {data!r}")
        data += piece
    return data


_opened: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Any:
    """Every raw socket a test opens is closed after it, even when an assertion failed first."""
    yield
    while _opened:
        _opened.pop().close()


def connect(api: Api) -> socket.socket:
    sock = socket.create_connection(api.server.address, timeout=10)
    _opened.append(sock)
    return sock


def health_seconds(api: Api) -> float:
    start = time.monotonic()
    assert api.get("/api/health", timeout=10).json() == {"status": "ok"}
    return time.monotonic() - start


# --- time limits --------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed_at_request_timeout(make_api: Callable[..., Api]) -> None:
    api = make_api(request_timeout_s=0.5)
    with connect(api) as sock:
        elapsed = off_loop(closed_after, sock)
    assert 0.4 <= elapsed < 3.0, elapsed
    assert metric(api, 'gauss_http_timeouts_total{kind="request_head"}') == 1.0


def test_slowloris_one_byte_at_a_time_is_cut_at_request_timeout(make_api: Callable[..., Api]) -> None:
    api = make_api(request_timeout_s=1.0)
    sock = connect(api)
    head = iter(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 1000)
    last = [0.0]

    def drip() -> bool:
        if time.monotonic() - last[0] >= 0.2:  # one byte every 0.2 s: each read "makes progress"
            sock.send(bytes([next(head)]))
            last[0] = time.monotonic()
        return True

    elapsed = off_loop(closed_after, sock, drip)
    sock.close()
    assert 0.9 <= elapsed < 3.0, elapsed
    assert health_seconds(api) < 1.0  # and nobody else noticed


def test_an_idle_keep_alive_connection_is_closed_at_keepalive(make_api: Callable[..., Api]) -> None:
    api = make_api(keepalive_s=0.5, request_timeout_s=20)
    sock = connect(api)
    assert off_loop(health_over, sock).startswith(b"HTTP/1.1 200")
    elapsed = off_loop(closed_after, sock)
    sock.close()
    assert 0.4 <= elapsed < 3.0, elapsed  # keepalive_s, well before request_timeout_s
    assert metric(api, 'gauss_http_timeouts_total{kind="keepalive"}') == 1.0


def test_keep_alive_connections_are_served_request_after_request(make_api: Callable[..., Api]) -> None:
    api = make_api(keepalive_s=2.0, request_timeout_s=0.5)
    sock = connect(api)
    for _ in range(3):  # each pause is longer than request_timeout_s but shorter than keepalive_s
        assert off_loop(health_over, sock).startswith(b"HTTP/1.1 200")
        gevent.sleep(0.8)
    sock.close()


def test_idle_sockets_beyond_max_connections_never_lock_out_a_client(make_api: Callable[..., Api]) -> None:
    api = make_api(max_connections=50, request_timeout_s=60)
    idle = off_loop(lambda: [connect(api) for _ in range(200)])  # off the loop: the server accepts meanwhile
    try:
        wait_for(lambda: api.server.connections.open == 50, what="50 connections admitted")
        for _ in range(5):
            assert health_seconds(api) < 1.0
        assert api.server.connections.open <= 50
        assert metric(api, "gauss_http_connections_evicted_total") >= 150
        # the longest idle went first: the oldest sockets are closed, the newest still open
        assert off_loop(closed_after, idle[0], None, 5.0) < 5.0
    finally:
        for sock in idle:
            sock.close()


def test_at_max_connections_with_none_idle_a_newcomer_gets_503_at_once(make_api: Callable[..., Api]) -> None:
    api = make_api(max_connections=3)
    sockets = [api.ws() for _ in range(3)]
    for ws in sockets:  # a WebSocket with a subscription is never idle: never evicted
        assert ws.request({"action": "subscribe", "topic": "quotes"})["type"] == "subscribed"
    try:
        start = time.monotonic()
        response = api.get("/api/health")
        assert response.status_code == 503 and "max_connections" in response.json()["error"]
        assert time.monotonic() - start < 1.0
        sockets.pop().close()
        wait_for(lambda: api.server.connections.open < 3, what="a slot to free")
        assert api.get("/api/health").status_code == 200
        assert metric(api, "gauss_http_connections_refused_total") == 1.0
    finally:
        for ws in sockets:
            ws.close()


def _never_reading(api: Api, path: str) -> socket.socket:
    sock = socket.socket()
    _opened.append(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(api.server.address)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def test_a_rest_client_that_never_reads_is_cut_off_at_write_timeout(make_api: Callable[..., Api]) -> None:
    api = make_api(write_timeout_s=1.0)
    api.hub.publish("quotes", quotes(100_000))
    sock = _never_reading(api, "/api/topics/quotes?limit=100000")
    try:
        wait_for(lambda: api.server.budget.held > 0, what="the answer to be in flight")
        start = time.monotonic()  # the query is done: from here the answer is written, then blocks
        wait_for(lambda: api.server.budget.held == 0, timeout=20, what="the answer's bytes to come back")
        elapsed = time.monotonic() - start
    finally:
        sock.close()
    assert 0.9 <= elapsed < 10.0, elapsed  # the write timeout, plus encoding on a loaded machine
    assert metric(api, 'gauss_http_timeouts_total{kind="write"}') == 1.0


def test_a_websocket_that_never_reads_pushes_is_cut_off_at_write_timeout(make_api: Callable[..., Api]) -> None:
    api = make_api(write_timeout_s=1.0, ws_overflow_grace_s=60.0)
    host, port = api.server.address
    sock = off_loop(stalled_ws, host, port)
    _opened.append(sock)
    try:
        sock.sendall(_masked({"action": "subscribe", "topic": "quotes"}))
        wait_for(lambda: api.server.websocket_sessions == 1, what="the session")
        for i in range(40):  # far more than the socket buffers take; the queue never overflows (10,000 a take)
            api.hub.publish("quotes", quotes(2_000, start=i * 2_000))
            gevent.sleep(0.02)
            if not api.server.websocket_sessions:
                break
        wait_for(lambda: api.server.websocket_sessions == 0, timeout=20, what="the stalled session to be cut")
    finally:
        sock.close()
    assert metric(api, 'gauss_http_timeouts_total{kind="ws_write"}') == 1.0
    assert metric(api, "gauss_ws_slow_disconnects_total") == 0.0  # the write timeout, not the overflow watchdog


def _masked(message: dict[str, Any]) -> bytes:
    from support.http import masked_text_frame

    return masked_text_frame(json.dumps(message).encode())


# --- bytes in flight ------------------------------------------------------------------------


def test_beyond_max_inflight_bytes_a_request_waits_then_gets_503(make_api: Callable[..., Api]) -> None:
    api = make_api(max_inflight_bytes=1 << 20, inflight_wait_s=0.3, write_timeout_s=2.0)
    api.hub.publish("quotes", quotes(100_000))
    _never_reading(api, "/api/topics/quotes?limit=100000")  # admitted alone, larger than the budget
    wait_for(lambda: api.server.budget.held > 1 << 20, what="the hog's answer in flight")
    start = time.monotonic()
    refused = api.get("/api/topics/quotes", params={"limit": 10})
    assert refused.status_code == 503 and "in flight" in refused.json()["error"]
    assert refused.headers.get("Retry-After") == "1"
    assert 0.25 <= time.monotonic() - start < 2.0
    assert health_seconds(api) < 1.0  # health and the listing hold no records: never refused
    assert api.get("/api/topics").status_code == 200
    ws = api.ws()
    answer = ws.request({"action": "query", "topic": "quotes", "limit": 10, "id": 3})
    assert answer["type"] == "error" and answer["id"] == 3 and "in flight" in answer["error"]
    wait_for(lambda: api.server.budget.held == 0, timeout=10, what="the hog to be cut off")
    assert len(api.get("/api/topics/quotes", params={"limit": 10}).json()["records"]) == 10
    assert ws.request({"action": "query", "topic": "quotes", "limit": 10})["type"] == "result"  # same connection
    assert metric(api, "gauss_http_inflight_refusals_total") == 2.0
    ws.close()


def test_a_keys_answer_holds_its_bytes_of_the_budget_and_a_second_one_waits_then_gets_503(make_api: Callable[..., Api]) -> None:
    """/keys of a topic with many keys was built whole, outside the budget: 20 clients that never read stalled the loop 12 s."""
    from gauss.http.app import KEY_ENTRY_BYTES

    api = make_api(max_inflight_bytes=1 << 20, inflight_wait_s=0.3, write_timeout_s=2.0)
    api.hub.publish("quotes", quotes(200_000, symbols=tuple(f"S{i:06d}" for i in range(200_000))))
    _never_reading(api, "/api/topics/quotes/keys")  # 200,000 keys, ~11 MB: admitted alone, larger than the budget
    wait_for(lambda: api.server.budget.held >= 200_000 * KEY_ENTRY_BYTES, what="the keys answer in flight")
    refused = api.get("/api/topics/quotes/keys")
    assert refused.status_code == 503 and "in flight" in refused.json()["error"]
    assert health_seconds(api) < 1.0
    wait_for(lambda: api.server.budget.held == 0, timeout=15, what="the hog to be cut off")
    keys = api.get("/api/topics/quotes/keys").json()
    assert len(keys) == 200_000 and keys[0] == {"key": "S000000", "records": 1, "last_ts_ms": keys[0]["last_ts_ms"]}
    assert [k["key"] for k in keys] == sorted(k["key"] for k in keys)


def test_a_client_that_never_reads_a_columnar_answer_keeps_no_one_else_from_the_same_answer(make_api: Callable[..., Api]) -> None:
    """Quotes answered from the ring hold ~64 bytes each (no record objects): charged 4x their JSON, one hog held 67 MB."""
    from gauss.http.limits import InflightBudget

    api = make_api(write_timeout_s=30.0)  # the default budget: 128 MiB, 32 MiB a connection
    api.hub.publish("quotes", quotes(100_000))
    assert len(api.get("/api/topics/quotes", params={"limit": 100_000}).json()["records"]) == 100_000  # measured once
    _never_reading(api, "/api/topics/quotes?limit=100000")
    wait_for(lambda: api.server.budget.held > 0, what="the hog's answer in flight")
    assert api.server.budget.held <= 100_000 * InflightBudget.COLUMN_HOLD_BYTES
    for _ in range(3):  # while the hog holds its answer, others get theirs at once
        started = time.monotonic()
        answer = api.get("/api/topics/quotes", params={"limit": 100_000})
        assert answer.status_code == 200 and len(answer.json()["records"]) == 100_000
        assert time.monotonic() - started < 10.0
    assert metric(api, "gauss_http_inflight_refusals_total") == 0.0


def test_a_waiting_request_is_served_when_room_comes_back_in_time(make_api: Callable[..., Api]) -> None:
    api = make_api(max_inflight_bytes=1 << 20, inflight_wait_s=10.0)
    api.hub.publish("quotes", quotes(20_000))
    results: list[int] = []

    def download() -> None:
        results.append(len(api.get("/api/topics/quotes", params={"limit": 20_000}).json()["records"]))

    clients = [gevent.spawn(download) for _ in range(3)]  # each over the budget alone: they take turns
    gevent.joinall(clients, timeout=60, raise_error=True)
    assert results == [20_000] * 3
    assert metric(api, "gauss_http_inflight_refusals_total") == 0.0
    assert api.server.budget.held == 0


def test_budget_rules() -> None:
    budget = InflightBudget(1000, 400, 0.0)
    a, b = Share(), Share()
    first = budget.admit(a, 5000)  # alone: always admitted, however large
    with pytest.raises(InflightLimit):
        budget.admit(b, 10)
    first.close()
    first.close()  # idempotent
    assert budget.held == 0 and a.held == 0
    one = budget.admit(a, 300)
    with pytest.raises(InflightLimit):
        budget.admit(a, 200)  # over this connection's share
    two = budget.admit(b, 400)
    with pytest.raises(InflightLimit):
        budget.admit(b, 400)
    one.resize(100)
    assert budget.held == 500 and a.held == 100
    one.close()
    two.close()
    assert budget.held == 0


def test_connection_table_evicts_the_longest_idle_first() -> None:
    class Conn:
        def __init__(self) -> None:
            self.evicted = False
            self.closed = False

        def evict(self) -> None:
            self.closed = True

    table = ConnectionTable(2)
    a, b = Conn(), Conn()
    assert table.admit() and table.admit()
    table.idle(a)
    table.idle(b)
    table.busy(b)
    table.idle(b)
    table.idle(a)  # a was idle first, but became idle again last
    assert table.admit() and b.closed and not a.closed
    table.release(b)
    assert table.open == 2
    table.busy(a)
    assert not table.admit() and table.refusals == 1
    table.release(a)
    assert table.open == 1 and table.admit()


def test_a_replay_refused_for_room_ends_its_subscription_with_an_error(make_api: Callable[..., Api]) -> None:
    api = make_api(max_inflight_bytes=1 << 20, inflight_wait_s=0.2, write_timeout_s=2.0)
    api.hub.publish("quotes", quotes(100_000))
    _never_reading(api, "/api/topics/quotes?limit=100000")
    wait_for(lambda: api.server.budget.held > 1 << 20, what="the hog's answer in flight")
    ws = api.ws()
    subscribed = ws.request({"action": "subscribe", "topic": "quotes", "since_seq": 0, "id": "r"})
    assert subscribed["type"] == "subscribed"
    refused = ws.recv()
    assert refused["type"] == "error" and refused["id"] == "r" and refused["topic"] == "quotes"
    assert "replay" in refused["error"] and "in flight" in refused["error"]
    wait_for(lambda: len(api.hub.topic("quotes").subscriptions) == 0, what="the subscription to end")
    wait_for(lambda: api.server.budget.held == 0, timeout=10, what="the hog to be cut off")
    again = ws.request({"action": "subscribe", "topic": "quotes", "since_seq": 99_990, "id": "r2"})
    assert again["type"] == "subscribed"  # the same connection subscribes again, and is replayed
    assert [r["seq"] for r in ws.recv()["records"]] == list(range(99_991, 100_001))
    ws.close()


def test_a_websocket_without_subscriptions_gives_its_slot_to_a_newcomer(make_api: Callable[..., Api]) -> None:
    api = make_api(max_connections=3)
    subscriber, idle_one, idle_two = api.ws(), api.ws(), api.ws()
    assert subscriber.request({"action": "subscribe", "topic": "quotes"})["type"] == "subscribed"
    assert idle_two.request({"action": "query", "topic": "quotes"})["type"] == "result"  # idle again after it
    wait_for(lambda: api.server.connections.idle_count == 2, what="two idle WebSockets")
    assert api.get("/api/health").status_code == 200  # takes idle_one's slot: the longest idle
    with pytest.raises((websocket.WebSocketException, OSError)):  # closed: EOF or reset, whichever comes first
        idle_one.request({"action": "query", "topic": "quotes"})
    api.hub.publish("quotes", quotes(1))
    assert subscriber.recv()["type"] == "records"  # the subscriber was never a candidate
    for ws in (subscriber, idle_one, idle_two):
        ws.close()


def test_a_charged_answer_gives_its_bytes_back_when_sent_cut_or_dropped() -> None:
    import gc

    from gauss.http.limits import ChargedStream

    budget = InflightBudget(1 << 20, 1 << 20, 0.0)
    sent = ChargedStream(iter([b"a", b"b"]), budget.admit(Share(), 100))
    assert b"".join(sent) == b"ab" and budget.held == 0  # exhausted
    cut = ChargedStream(iter([b"a", b"b"]), budget.admit(Share(), 100))
    next(cut)
    cut.close()  # the server closes a body it could not finish writing
    assert budget.held == 0
    dropped = ChargedStream(iter([b"a"]), budget.admit(Share(), 100))
    assert budget.held == 100
    del dropped  # a body nobody iterates nor closes (a HEAD, an error after the resource)
    gc.collect()
    assert budget.held == 0
