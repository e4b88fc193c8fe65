"""The API server's stop (SPEC section 3): idle keep-alive connections close at once, requests in progress drain."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any, Callable

import gevent
import gevent.event
import pytest
from support.http import Api, off_loop, quotes, wait_for

STOP_TIMEOUT = 10.0


def keepalive_client(api: Api) -> http.client.HTTPConnection:
    """A client connection that has had one answer and is kept alive, waiting for its next request."""
    host, port = api.server.address
    conn = http.client.HTTPConnection(host, port, timeout=30)
    off_loop(conn.request, "GET", "/api/health")
    response = off_loop(conn.getresponse)
    off_loop(response.read)
    assert response.status == 200 and response.getheader("Connection") is None  # HTTP/1.1: kept alive
    return conn


@pytest.mark.parametrize("served", [True, False], ids=["kept_alive", "preconnected"])
def test_stop_closes_an_idle_keepalive_connection_at_once(make_api: Callable[..., Api], served: bool) -> None:
    api = make_api(keepalive_s=60)
    if served:
        conn = keepalive_client(api)
    else:  # connected, nothing sent yet (a browser's preconnect)
        conn = http.client.HTTPConnection(*api.server.address, timeout=30)
        off_loop(conn.connect)
    try:
        wait_for(lambda: api.server.connections.idle_count == 1, what="the connection waiting for a request")
        started = time.monotonic()
        api.hub.stop(timeout=STOP_TIMEOUT)
        took = time.monotonic() - started
        assert took < 2.0, f"stop took {took:.2f} s with an idle connection (timeout {STOP_TIMEOUT:g} s)"
        assert conn.sock is not None
        conn.sock.settimeout(5)
        assert off_loop(conn.sock.recv, 1) == b""  # closed by the server, no stray bytes
    finally:
        conn.close()


def test_a_request_that_arrived_before_the_stop_is_answered_with_connection_close(make_api: Callable[..., Api]) -> None:
    api = make_api(keepalive_s=60)
    conn = keepalive_client(api)
    try:
        wait_for(lambda: api.server.connections.idle_count == 1, what="the connection waiting for a request")
        assert conn.sock is not None
        # A blocking send from this thread: the loop does not run, so the server's greenlet
        # has not read the request when the stop begins.
        conn.sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.05)  # not gevent's: the bytes reach the server's socket, the loop stays still
        started = time.monotonic()
        api.hub.stop(timeout=STOP_TIMEOUT)
        took = time.monotonic() - started
        response = http.client.HTTPResponse(conn.sock)
        off_loop(response.begin)
        assert response.status == 200 and response.getheader("Connection") == "close"
        assert json.loads(off_loop(response.read)) == {"status": "ok"}
        assert took < 2.0, f"stop took {took:.2f} s (timeout {STOP_TIMEOUT:g} s)"
    finally:
        conn.close()


@pytest.mark.parametrize("kept_alive", [False, True], ids=["first_request", "after_keepalive"])
def test_a_request_in_progress_at_stop_gets_its_whole_answer_then_the_connection_closes(
    make_api: Callable[..., Api], monkeypatch: pytest.MonkeyPatch, kept_alive: bool
) -> None:
    api = make_api(keepalive_s=60)
    api.hub.publish("quotes", quotes(500))
    topic = api.hub.topic("quotes")
    query = topic.query
    entered = gevent.event.Event()

    def slow(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        gevent.sleep(0.5)
        return query(*args, **kwargs)

    monkeypatch.setattr(topic, "query", slow)
    if kept_alive:
        conn = keepalive_client(api)
    else:
        host, port = api.server.address
        conn = http.client.HTTPConnection(host, port, timeout=30)

    def get() -> tuple[int, str | None, bytes]:
        conn.request("GET", "/api/topics/quotes?limit=500")
        response = conn.getresponse()
        return response.status, response.getheader("Connection"), response.read()

    try:
        answer = gevent.get_hub().threadpool.spawn(get)
        assert entered.wait(15), "the request never reached the storage"
        started = time.monotonic()
        api.hub.stop(timeout=STOP_TIMEOUT)
        took = time.monotonic() - started
        status, connection, body = answer.get(timeout=15)
        assert status == 200 and connection == "close"
        assert [r["seq"] for r in json.loads(body)["records"]] == list(range(1, 501))
        assert took < 2.0, f"stop took {took:.2f} s (timeout {STOP_TIMEOUT:g} s)"
        assert conn.sock is None or off_loop(conn.sock.recv, 1) == b""
    finally:
        conn.close()
