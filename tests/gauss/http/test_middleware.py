"""Access control (bearer token, REST and WebSocket) and CORS, against a running server."""

from __future__ import annotations

from typing import Callable

import pytest
import websocket
from support.http import Api, WsClient, off_loop, quotes


@pytest.fixture
def locked(make_api: Callable[..., Api]) -> Api:
    return make_api(token="s3cret-token")


@pytest.mark.parametrize("path", ["/api/topics", "/api/topics/quotes", "/api/topics/quotes/keys", "/api/topics/quotes/latest", "/metrics", "/ws", "/api/nothing"])
def test_every_route_but_health_needs_the_token(locked: Api, path: str) -> None:
    response = locked.get(path)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "token" in response.json()["error"]
    assert locked.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert locked.get(path, headers={"Authorization": "Basic czNjcmV0LXRva2Vu"}).status_code == 401


def test_health_stays_open(locked: Api) -> None:
    assert locked.get("/api/health").json() == {"status": "ok"}


def test_bearer_header_or_token_parameter_opens_rest(locked: Api) -> None:
    locked.hub.publish("quotes", quotes(2))
    by_header = locked.get("/api/topics/quotes", headers={"Authorization": "Bearer s3cret-token"})
    assert by_header.status_code == 200 and len(by_header.json()["records"]) == 2
    by_param = locked.get("/api/topics/quotes", params={"token": "s3cret-token", "limit": 1})
    assert by_param.status_code == 200 and len(by_param.json()["records"]) == 1
    assert locked.get("/metrics", headers={"Authorization": "bearer s3cret-token"}).status_code == 200


def test_websocket_needs_the_token_in_header_or_query(locked: Api) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        off_loop(websocket.create_connection, locked.ws_url, timeout=10)
    assert refused.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException):
        off_loop(websocket.create_connection, locked.ws_url + "?token=nope", timeout=10)
    by_header = WsClient(locked.ws_url, header=["Authorization: Bearer s3cret-token"])
    assert by_header.request({"action": "subscribe", "topic": "quotes"})["type"] == "subscribed"
    by_header.close()
    by_query = WsClient(locked.ws_url + "?token=s3cret-token")
    assert by_query.request({"action": "query", "topic": "quotes"})["type"] == "result"
    by_query.close()


def test_without_a_token_everything_is_open(api: Api) -> None:
    assert api.get("/api/topics").status_code == 200
    assert api.get("/metrics").status_code == 200


def test_environment_token_overrides_the_config(make_api: Callable[..., Api], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAUSS_API_TOKEN", "from-env")
    api = make_api(token="from-config")
    assert api.get("/api/topics", headers={"Authorization": "Bearer from-config"}).status_code == 401
    assert api.get("/api/topics", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_token_env_naming_an_unset_variable_locks_the_api(make_api: Callable[..., Api], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GAUSS_API_TOKEN", raising=False)
    monkeypatch.delenv("GAUSS_TEST_TOKEN_UNSET", raising=False)
    api = make_api(token_env="GAUSS_TEST_TOKEN_UNSET")
    assert api.get("/api/health").status_code == 200
    assert api.get("/api/topics").status_code == 401
    assert api.get("/api/topics", headers={"Authorization": "Bearer "}).status_code == 401


def test_token_env_reads_the_named_variable(make_api: Callable[..., Api], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GAUSS_API_TOKEN", raising=False)
    monkeypatch.setenv("GAUSS_TEST_TOKEN", "abc")
    api = make_api(token_env="GAUSS_TEST_TOKEN")
    assert api.get("/api/topics", headers={"Authorization": "Bearer abc"}).status_code == 200


def test_cors_allows_the_configured_origin_with_preflight(make_api: Callable[..., Api]) -> None:
    api = make_api(cors_origins=["https://dash.example"], token="t")
    preflight = api.request(
        "OPTIONS", "/api/topics/quotes",
        headers={"Origin": "https://dash.example", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "Authorization"},
    )  # fmt: skip
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    allowed = api.get("/api/topics", headers={"Origin": "https://dash.example", "Authorization": "Bearer t"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    other = api.get("/api/topics", headers={"Origin": "https://evil.example", "Authorization": "Bearer t"})
    assert "Access-Control-Allow-Origin" not in other.headers
    # The answer depends on Origin: a shared cache must key on it.
    assert allowed.headers["Vary"] == other.headers["Vary"] == preflight.headers["Vary"] == "Origin"


def test_cors_star_and_no_cors_by_default(make_api: Callable[..., Api], api: Api) -> None:
    star = make_api(cors_origins=["*"])
    assert star.get("/api/health", headers={"Origin": "https://a.example"}).headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Origin" not in api.get("/api/health", headers={"Origin": "https://a.example"}).headers
