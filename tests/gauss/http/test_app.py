"""The REST API of SPEC section 4 against a running server, with a real HTTP client."""

from __future__ import annotations

import json
import time
import tracemalloc
from typing import Any

import gevent
import pytest
import requests
from support.http import NOW_MS, Api, off_loop, quote, quotes

from gauss.core import TopicRecord


def error_of(response: requests.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert response.headers["Content-Type"].startswith("application/json")
    return str(body["error"])


def test_health_answers_ok(api: Api) -> None:
    response = api.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_topics_lists_name_storage_format_and_count(api: Api) -> None:
    api.hub.publish("quotes", quotes(3))
    answer = api.get("/api/topics").json()
    by_name = {t["name"]: t for t in answer}
    assert by_name["quotes"] == {"name": "quotes", "storage": "memory", "format": "quote", "records": 3}
    assert by_name["candles"] == {"name": "candles", "storage": "memory", "format": "candle", "records": 0}
    assert [t["name"] for t in answer] == sorted(by_name)


def test_records_ascend_by_time_with_seq_and_filters(api: Api) -> None:
    api.hub.publish("quotes", quotes(10, symbols=("EURUSD", "GBPUSD")))
    body = api.get("/api/topics/quotes").json()
    assert body["topic"] == "quotes" and body["truncated"] is False
    assert [r["seq"] for r in body["records"]] == list(range(1, 11))
    first = body["records"][0]
    assert set(first) == {"ts_ms", "key", "data", "seq"} and first["data"] == quote(0).data

    keyed = api.get("/api/topics/quotes", params={"key": "GBPUSD"}).json()["records"]
    assert [r["seq"] for r in keyed] == [2, 4, 6, 8, 10] and {r["key"] for r in keyed} == {"GBPUSD"}

    window = api.get("/api/topics/quotes", params={"from": NOW_MS + 2, "to": NOW_MS + 5}).json()["records"]
    assert [r["ts_ms"] for r in window] == [NOW_MS + 2, NOW_MS + 3, NOW_MS + 4]  # from <= ts_ms < to

    after = api.get("/api/topics/quotes", params={"since_seq": 7}).json()["records"]
    assert [r["seq"] for r in after] == [8, 9, 10]


def test_limit_returns_the_most_recent_and_says_truncated(api: Api) -> None:
    api.hub.publish("quotes", quotes(10))
    body = api.get("/api/topics/quotes", params={"limit": 3}).json()
    assert [r["seq"] for r in body["records"]] == [8, 9, 10]
    assert body["truncated"] is True
    exact = api.get("/api/topics/quotes", params={"limit": 10}).json()
    assert len(exact["records"]) == 10 and exact["truncated"] is False


def test_default_limit_is_1000(api: Api) -> None:
    api.hub.publish("quotes", quotes(1500))
    body = api.get("/api/topics/quotes").json()
    assert len(body["records"]) == 1000 and body["truncated"] is True
    assert body["records"][-1]["seq"] == 1500


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "100001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"from": "yesterday"}, "from"),
        ({"to": "x"}, "to"),
        ({"from": "10", "to": "5"}, "from"),
        ({"since_seq": "-1"}, "since_seq"),
        ({"since_seq": "abc"}, "since_seq"),
        ({"key": ""}, "key"),
        ({"limt": "5"}, "limt"),
        ({"limit": ["1", "2"]}, "limit"),
        # ASCII decimal digits only, and a value is needed (int() would take all of these):
        ({"limit": ""}, "limit"),
        ({"from": ""}, "from"),
        ({"limit": " 5"}, "limit"),
        ({"limit": "+5"}, "limit"),
        ({"limit": "1_0"}, "limit"),
        ({"limit": "\uff15"}, "limit"),
        ({"since_seq": "\u0665"}, "since_seq"),
        ({"since_seq": "1" * 5000}, "since_seq"),  # int() refuses more than 4,300 digits: was a 500
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(api: Api, params: dict[str, Any], named: str) -> None:
    response = api.get("/api/topics/quotes", params=params)
    assert response.status_code == 400
    assert error_of(response).startswith(f"{named}:")


def test_limit_bounds_are_accepted(api: Api) -> None:
    api.hub.publish("quotes", quotes(2))
    assert api.get("/api/topics/quotes", params={"limit": 1}).status_code == 200
    assert api.get("/api/topics/quotes", params={"limit": 100000}).status_code == 200


@pytest.mark.parametrize("suffix", ["", "/keys", "/latest"])
def test_unknown_topic_is_404(api: Api, suffix: str) -> None:
    response = api.get(f"/api/topics/no.such.topic{suffix}")
    assert response.status_code == 404
    assert "no.such.topic" in error_of(response)


def test_unknown_path_is_404_and_wrong_method_405(api: Api) -> None:
    missing = api.get("/api/nothing")
    assert missing.status_code == 404 and "/api/nothing" in error_of(missing)
    posted = api.request("POST", "/api/topics", data=b"{}")
    assert posted.status_code == 405 and error_of(posted)


def test_keys_list_records_and_last_time_per_key(api: Api) -> None:
    api.hub.publish("quotes", quotes(5, symbols=("EURUSD", "USDJPY")))
    keys = sorted(api.get("/api/topics/quotes/keys").json(), key=lambda k: k["key"])
    assert keys == [
        {"key": "EURUSD", "records": 3, "last_ts_ms": NOW_MS + 4},
        {"key": "USDJPY", "records": 2, "last_ts_ms": NOW_MS + 3},
    ]
    assert api.get("/api/topics/candles/keys").json() == []


def test_latest_gives_the_newest_record_per_key_or_of_one_key(api: Api) -> None:
    api.hub.publish("quotes", quotes(6, symbols=("EURUSD", "USDJPY", "GBPUSD")))
    body = api.get("/api/topics/quotes/latest").json()
    assert body["topic"] == "quotes"
    assert sorted((r["key"], r["seq"]) for r in body["records"]) == [("EURUSD", 4), ("GBPUSD", 6), ("USDJPY", 5)]
    one = api.get("/api/topics/quotes/latest", params={"key": "USDJPY"}).json()
    assert [(r["key"], r["seq"]) for r in one["records"]] == [("USDJPY", 5)]
    assert api.get("/api/topics/quotes/latest", params={"key": "NOPE"}).json()["records"] == []
    bad = api.get("/api/topics/quotes/latest", params={"from": "1"})
    assert bad.status_code == 400 and error_of(bad).startswith("from:")


def test_candle_topic_holds_one_record_per_key_and_time(api: Api) -> None:
    candle = {"symbol": "EURUSD", "timeframe": "1m", "ts_ms": 60_000, "open": 1, "high": 2, "low": 1, "close": 2, "ticks": 3}
    api.hub.publish("candles", [TopicRecord(60_000, "EURUSD", candle), TopicRecord(60_000, "EURUSD", {**candle, "ticks": 4})])
    records = api.get("/api/topics/candles").json()["records"]
    assert [(r["seq"], r["data"]["ticks"]) for r in records] == [(2, 4)]


def test_non_ascii_keys_and_topic_names_round_trip(api: Api) -> None:
    api.hub.publish("any.üñï", [TopicRecord(NOW_MS, "BTC/USD", {"note": "€"})])
    response = api.get("/api/topics/any.%C3%BC%C3%B1%C3%AF", params={"key": "BTC/USD"})
    body = response.json()
    assert response.status_code == 200, body
    assert body["topic"] == "any.üñï"
    assert [r["data"] for r in body["records"]] == [{"note": "€"}]


def _slow_download(url: str, params: dict[str, Any], started: list[float]) -> tuple[int, bytes]:
    """Read the answer in 256 KiB pieces with a pause between them; keep only its head and tail."""
    with requests.get(url, params=params, stream=True, timeout=60) as response:
        total = 0
        head = b""
        tail = b""
        for piece in response.iter_content(256 * 1024):
            if not started:
                started.append(time.monotonic())
            total += len(piece)
            head = (head + piece)[:200] if len(head) < 200 else head
            tail = (tail + piece)[-200:]
            time.sleep(0.02)
        return total, head + b"..." + tail


def test_large_answer_streams_while_ingest_keeps_flowing(api: Api) -> None:
    n = 100_000
    api.hub.publish("quotes", quotes(n))
    topic = api.hub.topic("quotes")
    published_at_first_byte: list[int] = []
    started: list[float] = []
    stop = gevent.event.Event()

    def publisher() -> None:
        i = n
        while not stop.is_set():
            api.hub.publish("quotes", quotes(10, start=i))
            i += 10
            if started and not published_at_first_byte:
                published_at_first_byte.append(topic.last_seq)
            gevent.sleep(0.001)

    worker = gevent.spawn(publisher)
    size, ends = off_loop(_slow_download, api.base + "/api/topics/quotes", {"limit": n, "to": NOW_MS + n}, started)
    published_at_end = topic.last_seq
    stop.set()
    worker.join()
    assert ends.startswith(b'{"topic":"quotes","records":[{"ts_ms":')
    assert ends.endswith(b'"seq":100000}],"truncated":false}')
    assert size > 10_000_000
    assert published_at_first_byte and published_at_end > published_at_first_byte[0]


def test_large_answer_memory_stays_within_a_few_times_its_json(api: Api) -> None:
    n = 100_000
    api.hub.publish("quotes", quotes(n))
    gevent.sleep(0)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        size, _ = off_loop(_slow_download, api.base + "/api/topics/quotes", {"limit": n}, [])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    used = peak - base
    # The records the storage hands out are the bulk of it; the JSON is never held whole.
    assert used < 6 * size, f"answer of {size} bytes took {used} bytes at peak"


def test_answers_are_json_with_content_type(api: Api) -> None:
    api.hub.publish("quotes", quotes(2))
    for path in ("/api/health", "/api/topics", "/api/topics/quotes", "/api/topics/quotes/keys", "/api/topics/quotes/latest"):
        response = api.get(path)
        assert response.headers["Content-Type"].startswith("application/json"), path
        json.loads(response.content)


def test_a_failing_storage_is_a_500_with_a_json_error_not_a_traceback(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from gauss.errors import StorageError

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("disk on fire")

    monkeypatch.setattr(api.hub.topic("quotes"), "query", broken)
    response = api.get("/api/topics/quotes")
    assert response.status_code == 500
    assert error_of(response) == "storage failed: disk on fire"
    assert api.get("/api/health").status_code == 200


def test_a_storage_that_cannot_answer_now_is_a_503_and_a_null_in_the_listing(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gauss.errors import StorageUnavailable

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StorageUnavailable("server away")

    topic = api.hub.topic("quotes")
    for method in ("query", "keys", "latest", "count"):
        monkeypatch.setattr(topic, method, down)
    for path in ("/api/topics/quotes", "/api/topics/quotes/keys", "/api/topics/quotes/latest"):
        response = api.get(path)
        assert response.status_code == 503, path
        assert error_of(response) == "storage unavailable: server away", path
    listing = api.get("/api/topics")
    assert listing.status_code == 200
    entry = next(t for t in listing.json() if t["name"] == "quotes")
    assert entry["records"] is None and entry["error"] == "storage unavailable: server away"
    assert all(isinstance(t["records"], int) for t in listing.json() if t["name"] != "quotes")


def test_an_unexpected_failure_is_a_500_naming_only_the_error_type(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api.hub.topic("quotes"), "query", broken)
    response = api.get("/api/topics/quotes")
    assert response.status_code == 500
    assert error_of(response) == "internal error: RuntimeError"


@pytest.mark.parametrize("name", ["from", "to", "since_seq", "limit"])
@pytest.mark.parametrize("value", [str(1 << 63), str(-(1 << 63) - 1), "1" + "0" * 30, "-" + "9" * 40])
def test_integers_beyond_int64_are_400_naming_the_parameter(api: Api, name: str, value: str) -> None:
    api.hub.publish("quotes", quotes(3))
    response = api.get("/api/topics/quotes", params={name: value})
    assert response.status_code == 400, response.text
    assert error_of(response).startswith(f"{name}:")
    assert api.get("/api/topics/quotes").json()["records"]


def test_int64_bounds_themselves_are_accepted(api: Api) -> None:
    api.hub.publish("quotes", quotes(3))
    lo, hi = str(-(1 << 63)), str((1 << 63) - 1)
    assert len(api.get("/api/topics/quotes", params={"from": lo, "to": hi}).json()["records"]) == 3
    assert api.get("/api/topics/quotes", params={"since_seq": hi}).json()["records"] == []
