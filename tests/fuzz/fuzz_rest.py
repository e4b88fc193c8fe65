"""Fuzz target of the REST API (SPEC section 4): the Falcon app on a real hub, requests built from the input.

Each input is a path (the API's routes, a topic name, or raw bytes), a
query string (parameters of the route with plausible or hostile values,
repeated or unknown ones, or raw bytes, percent-encoded or not) and a
``Host`` header. Invariants: never a 5xx, and nothing logged at ERROR (no
traceback for anything a client sends); every answer under ``/api`` is a
JSON body, an error one ``{"error": "..."}`` that names the parameter for a
400; a tokenless API answers a foreign ``Host`` 403 and a loopback one
never; and a 200 of ``/api/topics/{name}`` is exactly what SPEC section 4
says, computed here from every record the topic holds: the records with
``from <= ts_ms < to``, the key, ``seq > since_seq``, ascending by
``ts_ms`` then ``seq``, the most recent ``limit``, ``truncated`` when more
matched.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import falcon.testing
import fuzz_hub
import msgspec
from fuzz_hub import ErrorLog
from fuzz_input import FuzzInput

from gauss.http.app import create_app
from gauss.http.metrics import ApiMetrics
from gauss.http.options import ApiOptions
from gauss.records import MAX_QUERY_LIMIT, TopicQuery

__all__ = ["check_rest", "seeds_rest"]

T0 = fuzz_hub.T0
_APP: Any = None
PATHS = (
    "/api/topics/quotes.raw", "/api/topics/ohlc.1m", "/api/topics/quotes.raw/keys", "/api/topics/ohlc.1m/latest",
    "/api/topics", "/api/health", "/api/topics/nope", "/api/topics/", "/metrics", "/api/topics/quotes.raw/x",
)  # fmt: skip
PARAMS = ("key", "from", "to", "since_seq", "limit", "token", "bogus")
PLAUSIBLE: dict[str, tuple[str, ...]] = {
    "key": ("EURUSD", "USDJPY", "X", "nope"),
    "from": (str(T0), str(T0 + 5_000), str(T0 + 20_000), "0"),
    "to": (str(T0 + 10_000), str(T0 + 30_000), str(T0 + 10**9)),
    "since_seq": ("0", "3", "10", "19"),
    "limit": ("1", "2", "5", "1000", "100000"),
    "token": ("x",),
    "bogus": ("1",),
}
HOSTILE = (
    "", " ", "-1", "1.5", "1e3", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
    "1" * 30, "1" * 5000, "nan", "inf", "0x10", "١٢", "1_000", " 7 ", "%00", "\x00", "é", "true",
)  # fmt: skip
HOSTS = ("127.0.0.1:9200", "localhost", "[::1]:9200", "LOCALHOST:9200", "evil.example", "evil.example:9200")  # (falcon.testing always sends a Host)


def _app() -> Any:
    global _APP
    if _APP is None:
        _APP = create_app(fuzz_hub.hub(), ApiOptions(), ApiMetrics(None))
    return _APP


def _request(inp: FuzzInput) -> tuple[str, str, str | None, dict[str, list[str]]]:
    """``(path, query string, Host, the parameters as given)``."""
    mode = inp.int(0, 7)
    path = inp.choice(PATHS) if mode else "/" + urllib.parse.quote(inp.take(inp.int(0, 40)), safe="/")
    given: dict[str, list[str]] = {}
    if inp.int(0, 7) == 7:  # raw bytes, as a client may send them
        query = inp.take(inp.int(0, 60)).decode("latin-1").lstrip("?")  # (falcon.testing takes it without "?")
        if inp.bool():
            query = urllib.parse.quote(query, safe="=&")
    else:
        pairs = []
        for _ in range(inp.int(0, 4)):
            name = inp.choice(PARAMS)
            value = inp.choice(PLAUSIBLE[name]) if inp.int(0, 3) != 3 else inp.choice(HOSTILE)
            pairs.append((name, value))
            given.setdefault(name, []).append(value)
        query = urllib.parse.urlencode(pairs)
    host = inp.choice(HOSTS) if inp.int(0, 3) == 3 else HOSTS[0]
    return path, query, host, given


def check_rest(data: bytes) -> None:
    app = _app()
    hub = fuzz_hub.hub()
    inp = FuzzInput(data)
    if inp.int(0, 15) == 15:
        fuzz_hub.publish(hub, inp.int(1, 50))
    path, query, host, given = _request(inp)
    headers = {"Host": host} if host is not None else {}
    with ErrorLog() as capture:
        result = falcon.testing.simulate_request(app, "GET", path, query_string=query, headers=headers)
    status = result.status_code
    assert status < 500, f"GET {path}?{query} (Host {host}): {result.status} {result.text[:300]}"
    assert not capture.records, f"logged at ERROR: {[r.getMessage()[:300] for r in capture.records]}"
    foreign = host is not None and host.startswith("evil.")
    if foreign:
        assert status == 403, f"a foreign Host {host!r} got {result.status}"
        return
    assert status != 403, f"a loopback Host {host!r} got 403: {result.text[:200]}"
    if not path.startswith("/api/"):
        return
    body = msgspec.json.decode(result.content)
    if status >= 400:
        assert type(body) is dict and type(body.get("error")) is str and body["error"], f"error body {body!r}"
        if status == 400 and given:
            named = body["error"].split(":", 1)[0]
            assert named in given or named in PARAMS, f"a 400 naming {named!r}, given {sorted(given)}"
        return
    name = path.removeprefix("/api/topics/")
    if status == 200 and name in ("quotes.raw", "ohlc.1m") and "/" not in name and query == urllib.parse.urlencode(
        [(k, v) for k, vs in given.items() for v in vs]
    ):
        _check_answer(hub, name, {k: vs[0] for k, vs in given.items() if k != "token"}, body)


def _check_answer(hub: Any, name: str, params: dict[str, str], body: Any) -> None:
    query = TopicQuery.from_params(params)
    held = hub.registry.get(name).query(TopicQuery(limit=MAX_QUERY_LIMIT)).records
    assert len(held) < MAX_QUERY_LIMIT
    matching = sorted((r for r in held if query.matches(r)), key=lambda r: (r.ts_ms, r.seq))
    expected = [r.as_dict() for r in matching[-query.limit :]]
    assert body["topic"] == name
    got = body["records"]
    assert got == msgspec.json.decode(msgspec.json.encode(expected)), (
        f"{name}?{params}: {len(got)} records {[(r['ts_ms'], r['seq']) for r in got][:10]}, expected "
        f"{[(r['ts_ms'], r['seq']) for r in expected][:10]}"
    )
    assert body["truncated"] == (len(matching) > query.limit), f"truncated {body['truncated']}, {len(matching)} matched"


def seeds_rest() -> list[bytes]:
    return [
        b"\x00\x01\x00\x04\x00\x00\x00\x02",  # quotes.raw?key=EURUSD&limit=...
        b"\x00\x01\x00\x03\x01\x00\x01\x01\x03\x00\x04\x02",
        b"\x00\x02\x00\x02\x02\x00\x04\x03",
        b"\x00\x05\x07\x03\x09",
        b"\x00\x00\x07\x10key=1&limit=1e999",
    ]
