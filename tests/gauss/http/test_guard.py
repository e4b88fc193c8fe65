"""Host and Origin checks (SPEC section 4: DNS rebinding, cross-site WebSocket hijacking) on a running server."""

from __future__ import annotations

import json
import socket
from typing import Any, Callable

import pytest
import websocket
from support.http import Api, off_loop

from gauss.http.guard import host_refusal, origin_refusal
from gauss.http.options import ApiOptions


def raw_get(api: Api, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """A GET with exactly these headers (requests would fix the Host up); status and JSON body."""
    host, port = api.server.address

    def run() -> bytes:
        with socket.create_connection((host, port), timeout=10) as sock:
            lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "Connection: close", "", ""]
            sock.sendall("\r\n".join(lines).encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data

    data = off_loop(run)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"chunked" in head.lower():
        body = b"".join(body.split(b"\r\n")[1::2])
    return status, json.loads(body) if body else {}


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:9200", "localhost", "LOCALHOST:80", "[::1]", "[::1]:9200"])
def test_a_tokenless_api_answers_loopback_host_names(api: Api, host: str) -> None:
    assert raw_get(api, "/api/health", {"Host": host}) == (200, {"status": "ok"})


@pytest.mark.parametrize("host", ["evil.example", "evil.example:9200", "127.0.0.1.evil.example", "10.0.0.5:9200"])
def test_a_tokenless_api_refuses_other_host_names_with_403(api: Api, host: str) -> None:
    for path in ("/api/health", "/api/topics", "/api/topics/quotes"):
        status, body = raw_get(api, path, {"Host": host})
        assert status == 403 and "host" in body["error"] and "allowed_hosts" in body["error"], (path, body)


def test_an_absolute_form_request_target_is_served_and_its_authority_is_the_host(api: Api) -> None:
    """RFC 9112 section 3.2.2: a server accepts ``GET http://host/path`` and takes the host from it, not from Host."""
    port = api.server.address[1]
    assert raw_get(api, f"http://127.0.0.1:{port}/api/health", {"Host": f"127.0.0.1:{port}"}) == (200, {"status": "ok"})
    status, body = raw_get(api, "HTTP://localhost/api/topics/quotes?limit=1", {"Host": "evil.example"})
    assert status == 200 and body["topic"] == "quotes"
    status, body = raw_get(api, f"http://evil.example:{port}/api/health", {"Host": f"127.0.0.1:{port}"})
    assert status == 403 and "host" in body["error"]


def test_allowed_hosts_are_answered_with_or_without_port(make_api: Callable[..., Api]) -> None:
    api = make_api(allowed_hosts=["gauss.internal", "dash.internal:8080"])
    assert raw_get(api, "/api/topics", {"Host": "gauss.internal"})[0] == 200
    assert raw_get(api, "/api/topics", {"Host": "Gauss.Internal:9200"})[0] == 200
    assert raw_get(api, "/api/topics", {"Host": "dash.internal:8080"})[0] == 200
    assert raw_get(api, "/api/topics", {"Host": "dash.internal:8081"})[0] == 403
    assert raw_get(api, "/api/topics", {"Host": "evil.example"})[0] == 403


def test_with_a_token_any_host_is_answered(make_api: Callable[..., Api]) -> None:
    api = make_api(token="s3cret")
    assert raw_get(api, "/api/health", {"Host": "gauss.example.com"})[0] == 200
    assert raw_get(api, "/api/topics", {"Host": "gauss.example.com"})[0] == 401
    assert raw_get(api, "/api/topics", {"Host": "gauss.example.com", "Authorization": "Bearer s3cret"})[0] == 200


def test_dns_rebinding_page_cannot_open_a_websocket_either(api: Api) -> None:
    host, port = api.server.address
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        off_loop(websocket.create_connection, api.ws_url, timeout=10, host=f"evil.example:{port}",
                 origin=f"http://evil.example:{port}")  # fmt: skip
    assert refused.value.status_code == 403


def _ws_status(api: Api, origin: str | None, path: str = "") -> int:
    kwargs: dict[str, Any] = {"timeout": 10}
    if origin is not None:
        kwargs["origin"] = origin
    else:
        kwargs["suppress_origin"] = True
    try:
        conn = off_loop(websocket.create_connection, api.ws_url + path, **kwargs)
    except websocket.WebSocketBadStatusException as exc:
        return int(exc.status_code)
    try:
        conn.send(json.dumps({"action": "query", "topic": "quotes", "limit": 1}))
        assert json.loads(off_loop(conn.recv))["type"] == "result"
    finally:
        conn.close()
    return 101


def test_a_websocket_from_a_foreign_origin_gets_403(api: Api) -> None:
    assert _ws_status(api, "https://evil.example") == 403
    assert _ws_status(api, "null") == 403
    host, port = api.server.address
    assert _ws_status(api, f"http://{host}:{port + 1}") == 403  # same host, another port: another origin


def test_a_websocket_from_its_own_origin_or_without_origin_is_accepted(api: Api) -> None:
    host, port = api.server.address
    assert _ws_status(api, f"http://{host}:{port}") == 101
    assert _ws_status(api, None) == 101


def test_cors_origins_may_open_websockets(make_api: Callable[..., Api]) -> None:
    api = make_api(cors_origins=["https://dash.example"])
    assert _ws_status(api, "https://dash.example") == 101
    assert _ws_status(api, "https://DASH.example/") == 101
    assert _ws_status(api, "https://other.example") == 403
    anyone = make_api(cors_origins=["*"])
    assert _ws_status(anyone, "https://other.example") == 101


def test_the_origin_check_holds_with_a_token_too(make_api: Callable[..., Api]) -> None:
    api = make_api(token="s3cret")
    assert _ws_status(api, "https://evil.example", "?token=s3cret") == 403
    assert _ws_status(api, None, "?token=s3cret") == 101


def test_refused_answers_are_counted_by_status(api: Api) -> None:
    raw_get(api, "/api/topics", {"Host": "evil.example"})
    metrics = api.get("/metrics").text
    # Refused before routing: counted under route "unmatched", like any answer that never reached a route.
    assert 'gauss_http_requests_total{method="GET",route="unmatched",status="403"} 1.0' in metrics


def test_host_and_origin_rules() -> None:
    open_api, locked = ApiOptions(), ApiOptions(token="t")
    assert host_refusal(open_api, None) is None  # HTTP/1.0 without Host: not a browser
    assert host_refusal(open_api, "localhost:1") is None and host_refusal(open_api, "localhostx") is not None
    assert host_refusal(open_api, "[::1]:80") is None and host_refusal(open_api, "[::2]") is not None
    assert host_refusal(locked, "evil.example") is None
    assert host_refusal(ApiOptions(allowed_hosts=("*",)), "anything") is None
    assert origin_refusal(open_api, None, "127.0.0.1:1") is None
    assert origin_refusal(open_api, "https://127.0.0.1:1", "127.0.0.1:1") is None
    assert origin_refusal(open_api, "http://127.0.0.1:2", "127.0.0.1:1") is not None
    assert origin_refusal(open_api, "http://127.0.0.1:1", None) is not None
