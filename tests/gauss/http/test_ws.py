"""The WebSocket API of SPEC section 5 against a running server, with a real WebSocket client."""

from __future__ import annotations

import itertools
import json
import random
import struct
from typing import Any, Callable

import gevent
import gevent.event
import pytest
import websocket
from support.http import NOW_MS, Api, masked_text_frame, off_loop, quote, quotes, stalled_ws, wait_for

from gauss.http import ws as ws_module
from gauss.http.ws import push_message
from gauss.subscription import PublishedBatch


def seqs(records: list[dict[str, Any]]) -> list[int]:
    return [r["seq"] for r in records]


def test_subscribe_answers_with_epoch_and_seq_range_then_pushes(api: Api) -> None:
    api.hub.publish("quotes", quotes(3))
    ws = api.ws()
    answer = ws.request({"action": "subscribe", "topic": "quotes", "id": "s1"})
    assert answer == {
        "type": "subscribed", "topic": "quotes", "id": "s1",
        "epoch": api.hub.topic("quotes").epoch, "first_seq": 1, "last_seq": 3,
    }  # fmt: skip
    api.hub.publish("quotes", quotes(2, start=3))
    push = ws.recv()
    assert push["type"] == "records" and push["topic"] == "quotes" and set(push) == {"type", "topic", "records"}
    assert seqs(push["records"]) == [4, 5]
    assert push["records"][0] == {"ts_ms": NOW_MS + 3, "key": "EURUSD", "data": quote(3).data, "seq": 4}
    ws.close()


def test_key_filter_and_several_subscriptions_on_one_connection(api: Api) -> None:
    api.hub.publish("any.x", [quote(0, "X")])  # a template's topic exists once published to
    ws = api.ws()
    assert ws.request({"action": "subscribe", "topic": "quotes", "key": "GBPUSD"})["key"] == "GBPUSD"
    other = ws.request({"action": "subscribe", "topic": "any.x", "id": 7})
    assert other["type"] == "subscribed" and other["id"] == 7 and "key" not in other
    api.hub.publish("quotes", quotes(6, symbols=("EURUSD", "GBPUSD")))
    got = ws.recv()
    assert got["topic"] == "quotes" and seqs(got["records"]) == [2, 4, 6]
    assert {r["key"] for r in got["records"]} == {"GBPUSD"}
    api.hub.publish("any.x", [quote(1, "X")])
    assert ws.recv()["topic"] == "any.x"
    ws.close()


def test_one_push_carries_every_waiting_record(api: Api) -> None:
    ws = api.ws()
    ws.request({"action": "subscribe", "topic": "quotes"})
    for i in range(5):  # five batches published before the client's greenlet can run
        api.hub.publish("quotes", quotes(10, start=i * 10))
    push = ws.recv()
    assert seqs(push["records"]) == list(range(1, 51))
    ws.close()


def test_a_batch_message_is_encoded_once_and_shared() -> None:
    batch = PublishedBatch("t", [quote(0).with_seq(1), quote(1).with_seq(2)])
    first = push_message("t", [batch])
    assert push_message("t", [batch]) is first
    assert json.loads(first) == {"type": "records", "topic": "t", "records": [r.as_dict() for r in batch.records]}
    two = PublishedBatch("t", [quote(2).with_seq(3)])
    assert seqs(json.loads(push_message("t", [batch, two]))["records"]) == [1, 2, 3]


def test_unsubscribe_stops_pushes(api: Api) -> None:
    ws = api.ws()
    ws.request({"action": "subscribe", "topic": "quotes", "key": "EURUSD"})
    answer = ws.request({"action": "unsubscribe", "topic": "quotes", "key": "EURUSD", "id": "u"})
    assert answer == {"type": "unsubscribed", "topic": "quotes", "key": "EURUSD", "id": "u"}
    api.hub.publish("quotes", quotes(3))
    gevent.sleep(0.05)
    # Messages arrive in order: the next one is the query's result, not a push.
    assert ws.request({"action": "query", "topic": "quotes", "limit": 1})["type"] == "result"
    assert api.hub.topic("quotes").subscriptions == ()
    ws.close()


def test_query_follows_the_rest_rules(api: Api) -> None:
    api.hub.publish("quotes", quotes(10, symbols=("EURUSD", "GBPUSD")))
    ws = api.ws()
    answer = ws.request({"action": "query", "topic": "quotes", "key": "EURUSD", "limit": 2, "id": 1})
    assert answer["type"] == "result" and answer["id"] == 1 and answer["topic"] == "quotes"
    assert seqs(answer["records"]) == [7, 9] and answer["truncated"] is True
    window = ws.request({"action": "query", "topic": "quotes", "from": NOW_MS + 2, "to": NOW_MS + 4, "since_seq": 3})
    assert seqs(window["records"]) == [4] and window["truncated"] is False and "id" not in window
    ws.close()


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("not json", "malformed JSON"),
        ("[1, 2]", "JSON object"),
        ({"topic": "quotes"}, "action: missing"),
        ({"action": "dance", "id": 3}, "action: unknown action 'dance'"),
        ({"action": "subscribe", "topic": "nope"}, "unknown topic 'nope'"),
        ({"action": "subscribe"}, "topic:"),
        ({"action": "subscribe", "topic": "quotes", "key": 5}, "key:"),
        ({"action": "subscribe", "topic": "quotes", "policy": "sometimes"}, "policy:"),
        ({"action": "subscribe", "topic": "quotes", "since_seq": -1}, "since_seq:"),
        ({"action": "subscribe", "topic": "quotes", "since_seq": 1, "since_ts": 1}, "since_seq:"),
        ({"action": "subscribe", "topic": "quotes", "epoch": "abc"}, "epoch: only with since_seq"),
        ({"action": "subscribe", "topic": "quotes", "key": "EURUSD", "epoch": "abc", "id": 2}, "epoch: only with since_seq"),
        ({"action": "subscribe", "topic": "quotes", "since_seq": 1, "epoch": 5, "id": "e"}, "epoch: must be a string"),
        ({"action": "subscribe", "topic": "quotes", "sinse_seq": 1}, "sinse_seq: unknown field"),
        ({"action": "unsubscribe", "topic": "quotes"}, "not subscribed"),
        ({"action": "query", "topic": "quotes", "limit": 0}, "limit:"),
        ({"action": "query", "topic": "quotes", "from": 5, "to": 1}, "from:"),
        ({"action": "query", "topic": "quotes", "limit": "many"}, "limit:"),
        ({"action": "query", "topic": "quotes", "limit": "10"}, "limit: must be an integer"),
        ({"action": "query", "topic": "quotes", "since_seq": "5"}, "since_seq: must be an integer"),
        ({"action": "query", "topic": "quotes", "from": "1"}, "from: must be an integer"),
        ({"action": "query", "topic": "quotes", "to": "2"}, "to: must be an integer"),
        ({"action": "query", "topic": "quotes", "since_seq": -1}, "since_seq:"),
        ({"action": "query", "topic": "nope"}, "unknown topic"),
    ],
)
def test_mistakes_get_an_error_and_the_connection_stays_open(api: Api, message: Any, expected: str) -> None:
    ws = api.ws()
    answer = ws.request(message)
    assert answer["type"] == "error" and expected in answer["error"], answer
    if isinstance(message, dict) and "id" in message:
        assert answer["id"] == message["id"]
    else:
        assert "id" not in answer
    assert ws.request({"action": "query", "topic": "quotes", "id": "still"})["id"] == "still"
    ws.close()


def test_double_subscription_and_oversize_message_are_errors(make_api: Callable[..., Api]) -> None:
    api = make_api(max_ws_message_bytes=2048, max_ws_subscriptions=2)
    ws = api.ws()
    ws.request({"action": "subscribe", "topic": "quotes"})
    assert "already subscribed" in ws.request({"action": "subscribe", "topic": "quotes"})["error"]
    ws.request({"action": "subscribe", "topic": "quotes", "key": "A"})
    assert "at most 2" in ws.request({"action": "subscribe", "topic": "quotes", "key": "B"})["error"]
    big = ws.request({"action": "query", "topic": "quotes", "key": "x" * 5000})
    assert big["type"] == "error" and "too large" in big["error"]
    assert ws.request({"action": "query", "topic": "quotes"})["type"] == "result"
    ws.close()


def test_policy_is_chosen_per_subscription(api: Api) -> None:
    ws = api.ws()
    ws.request({"action": "subscribe", "topic": "quotes", "policy": "conflate"})
    ws.request({"action": "subscribe", "topic": "quotes", "key": "EURUSD", "policy": "drop_oldest"})
    ws.request({"action": "subscribe", "topic": "candles"})
    policies = sorted((s.topic, s.key or "", s.policy.value, s.kind) for t in api.hub.registry.topics() for s in t.subscriptions)
    assert policies == [
        ("candles", "", "drop", "ws"), ("quotes", "", "conflate", "ws"), ("quotes", "EURUSD", "drop_oldest", "ws"),
    ]  # fmt: skip
    ws.close()
    wait_for(lambda: all(not t.subscriptions for t in api.hub.registry.topics()), what="subscriptions closed")


def test_gap_message_comes_where_the_hole_is_under_drop(make_api: Callable[..., Api]) -> None:
    api = make_api(ws_queue_size=50)
    ws = api.ws()
    ws.request({"action": "subscribe", "topic": "quotes", "id": 1})
    # Before the client's greenlet runs: 30 fit, 20 of the next 40 fit, the rest and the next 100 are shed.
    for n, start in ((30, 0), (40, 30), (100, 70)):
        api.hub.publish("quotes", quotes(n, start=start))
    # drop sheds the newest: the records still queued come before the hole, the gap before the next push.
    assert seqs(ws.recv()["records"]) == list(range(1, 51))
    assert ws.recv() == {"type": "gap", "topic": "quotes", "dropped": 120, "from_seq": 51, "to_seq": 170}
    api.hub.publish("quotes", quotes(5, start=170))
    assert seqs(ws.recv()["records"]) == list(range(171, 176))
    ws.close()


def test_gap_message_comes_before_the_records_drop_oldest_kept(make_api: Callable[..., Api]) -> None:
    api = make_api(ws_queue_size=50)
    ws = api.ws()
    ws.request({"action": "subscribe", "topic": "quotes", "policy": "drop_oldest"})
    api.hub.publish("quotes", quotes(200))  # one batch: the oldest 150 are shed
    assert ws.recv() == {"type": "gap", "topic": "quotes", "dropped": 150, "from_seq": 1, "to_seq": 150}
    assert seqs(ws.recv()["records"]) == list(range(151, 201))
    ws.close()


def test_back_pressure_client_gets_every_record_or_a_resume_point_never_a_gap(make_api: Callable[..., Api]) -> None:
    """A client cannot make the publisher wait: an overflow ends its subscription, naming the seq to resume from."""
    api = make_api(ws_queue_size=50)
    ws = api.ws()
    epoch = api.hub.topic("quotes").epoch
    assert ws.request({"action": "subscribe", "topic": "quotes", "policy": "back_pressure", "id": "bp"})["type"] == "subscribed"
    api.hub.publish("quotes", quotes(30))
    assert seqs(ws.recv()["records"]) == list(range(1, 31))
    for n, start in ((30, 30), (40, 60), (100, 100)):  # before the client's greenlet runs: 50 fit, 120 do not
        api.hub.publish("quotes", quotes(n, start=start))
    assert seqs(ws.recv()["records"]) == list(range(31, 81))
    ended = ws.recv()
    assert ended["type"] == "error" and ended["topic"] == "quotes" and ended["id"] == "bp", ended
    assert "since_seq 80" in ended["error"] and repr(epoch) in ended["error"]
    assert api.hub.topic("quotes").subscriptions == ()
    api.hub.publish("quotes", quotes(5, start=200))  # no more pushes: the next message answers the new subscribe
    again = ws.request({"action": "subscribe", "topic": "quotes", "policy": "back_pressure", "since_seq": 80, "epoch": epoch})
    assert again["type"] == "subscribed"
    assert seqs(ws.records_until(205)) == list(range(81, 206))
    ws.close()


def test_resume_since_seq_replays_then_live_without_gap_or_duplicate(api: Api) -> None:
    epoch = api.hub.topic("quotes").epoch
    stop = gevent.event.Event()

    def publisher() -> None:
        i = 0
        while not stop.is_set():
            api.hub.publish("quotes", quotes(7, start=i))
            i += 7
            gevent.sleep(0.0005)

    worker = gevent.spawn(publisher)
    try:
        wait_for(lambda: api.hub.topic("quotes").last_seq > 2000, what="records flowing")
        ws = api.ws()
        answer = ws.request({"action": "subscribe", "topic": "quotes", "since_seq": 1000, "epoch": epoch})
        assert answer["type"] == "subscribed" and answer["last_seq"] > 2000
        target = api.hub.topic("quotes").last_seq + 3000
        got = ws.records_until(target)
    finally:
        stop.set()
        worker.join()
    assert seqs(got) == list(range(1001, got[-1]["seq"] + 1))
    ws.close()


def test_resume_replays_more_than_a_page_without_gap_or_duplicate(api: Api) -> None:
    total = 130_000  # more than one storage answer (100,000) holds
    for start in range(0, total, 10_000):
        api.hub.publish("quotes", quotes(10_000, start=start))
    ws = api.ws()
    answer = ws.request({"action": "subscribe", "topic": "quotes", "since_seq": 0, "epoch": api.hub.topic("quotes").epoch})
    assert answer["first_seq"] == 1 and answer["last_seq"] == total
    got = ws.records_until(total, timeout=60)  # fails on a gap message
    assert seqs(got) == list(range(1, total + 1))
    api.hub.publish("quotes", quotes(3, start=total))
    assert seqs(ws.recv()["records"]) == [total + 1, total + 2, total + 3]
    ws.close()


@pytest.mark.parametrize("resume", ["since_seq", "since_ts"])
def test_replay_pages_follow_ts_order_when_seqs_and_ts_disagree(
    api: Api, monkeypatch: pytest.MonkeyPatch, resume: str
) -> None:
    """Pages are ts_ms ranges sent oldest first, each in seq order; ties and out-of-order ts_ms lose nothing."""
    monkeypatch.setattr(ws_module, "REPLAY_PAGE_RECORDS", 7)
    seed = random.randrange(1 << 32)
    n = 100
    stamps = [NOW_MS + i // 3 for i in range(n)]  # ties of 3 or 4 (fewer than a page), shuffled
    random.Random(seed).shuffle(stamps)
    api.hub.publish("quotes", [quote(i, ts_ms=ts) for i, ts in enumerate(stamps)])
    ws = api.ws()
    point = {"since_seq": 0, "epoch": api.hub.topic("quotes").epoch} if resume == "since_seq" else {"since_ts": NOW_MS}
    ws.request({"action": "subscribe", "topic": "quotes", **point})
    pages: list[list[dict[str, Any]]] = []
    while sum(map(len, pages)) < n:
        message = ws.recv()
        assert message["type"] == "records", (seed, message)
        pages.append(message["records"])
    assert sorted(r["seq"] for page in pages for r in page) == list(range(1, n + 1)), seed
    for older, newer in itertools.pairwise(pages):
        assert max(r["ts_ms"] for r in older) < min(r["ts_ms"] for r in newer), seed
    assert all(seqs(page) == sorted(seqs(page)) for page in pages), seed
    api.hub.publish("quotes", quotes(1, start=n))
    assert seqs(ws.recv()["records"]) == [n + 1]
    ws.close()


def test_more_records_of_one_ts_than_a_page_holds_are_a_gap(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Storages page by time: of more records sharing one ts_ms than a page holds, only the newest page can be had."""
    monkeypatch.setattr(ws_module, "REPLAY_PAGE_RECORDS", 7)
    api.hub.publish("quotes", [quote(i, ts_ms=NOW_MS + (0 if i < 3 else 1)) for i in range(20)])
    ws = api.ws()
    ws.request({"action": "subscribe", "topic": "quotes", "since_seq": 0, "epoch": api.hub.topic("quotes").epoch})
    assert seqs(ws.recv()["records"]) == [1, 2, 3]
    assert ws.recv() == {"type": "gap", "topic": "quotes", "dropped": 10, "from_seq": 4, "to_seq": 13}
    assert seqs(ws.recv()["records"]) == list(range(14, 21))
    ws.close()


def test_records_evicted_while_replaying_are_reported_as_a_gap(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_module, "REPLAY_PAGE_RECORDS", 2)
    api.hub.publish("small", quotes(10))  # capacity 10: all held
    topic = api.hub.topic("small")
    query = topic.query
    published = False

    def query_then_publish(*args: Any, **kwargs: Any) -> Any:
        nonlocal published
        result = query(*args, **kwargs)
        if not result.truncated and not published:  # the first page (seqs 1, 2) is read: 4 more evict 1..4
            published = True
            api.hub.publish("small", quotes(4, start=10))
        return result

    monkeypatch.setattr(topic, "query", query_then_publish)
    ws = api.ws()
    ws.request({"action": "subscribe", "topic": "small", "since_seq": 0, "epoch": topic.epoch})
    assert seqs(ws.recv()["records"]) == [1, 2]
    assert ws.recv() == {"type": "gap", "topic": "small", "dropped": 2, "from_seq": 3, "to_seq": 4}
    assert seqs(ws.records_until(14)) == list(range(5, 15))  # the rest of the replay, then the live tail
    ws.close()


def test_resume_since_ts_replays_from_that_time(api: Api) -> None:
    api.hub.publish("quotes", quotes(20))
    ws = api.ws()
    ws.request({"action": "subscribe", "topic": "quotes", "since_ts": NOW_MS + 15})
    assert seqs(ws.recv()["records"]) == [16, 17, 18, 19, 20]
    api.hub.publish("quotes", quotes(1, start=20))
    assert seqs(ws.recv()["records"]) == [21]
    ws.close()


def test_wrong_epoch_resets_and_replays_from_the_oldest_record(api: Api) -> None:
    api.hub.publish("quotes", quotes(5))
    ws = api.ws()
    ws.send({"action": "subscribe", "topic": "quotes", "since_seq": 3, "epoch": "an-old-epoch", "id": "r"})
    assert ws.recv() == {"type": "reset", "topic": "quotes", "epoch": api.hub.topic("quotes").epoch}
    assert ws.recv()["type"] == "subscribed"
    assert seqs(ws.recv()["records"]) == [1, 2, 3, 4, 5]
    ws.close()


def test_records_no_longer_held_are_reported_as_a_gap(api: Api) -> None:
    api.hub.publish("small", quotes(30))  # capacity 10: seqs 21..30 are held
    ws = api.ws()
    epoch = api.hub.topic("small").epoch
    answer = ws.request({"action": "subscribe", "topic": "small", "since_seq": 5, "epoch": epoch})
    assert answer["first_seq"] == 21 and answer["last_seq"] == 30
    assert ws.recv() == {"type": "gap", "topic": "small", "dropped": 15, "from_seq": 6, "to_seq": 20}
    assert seqs(ws.recv()["records"]) == list(range(21, 31))
    ws.close()


def test_resume_ahead_of_the_topic_skips_what_the_client_had(api: Api) -> None:
    api.hub.publish("quotes", quotes(3))
    ws = api.ws()
    ws.request({"action": "subscribe", "topic": "quotes", "since_seq": 5, "epoch": api.hub.topic("quotes").epoch})
    api.hub.publish("quotes", quotes(4, start=3))  # seqs 4..7; the client says it has up to 5
    assert seqs(ws.recv()["records"]) == [6, 7]
    ws.close()


def test_slow_client_is_dropped_while_a_fast_one_keeps_every_record(make_api: Callable[..., Api]) -> None:
    api = make_api(ws_queue_size=2000, ws_overflow_grace_s=0.5)
    host, port = api.server.address
    slow = off_loop(stalled_ws, host, port)
    off_loop(slow.sendall, masked_text_frame(b'{"action":"subscribe","topic":"quotes"}'))
    fast = api.ws()
    fast.request({"action": "subscribe", "topic": "quotes"})
    wait_for(lambda: len(api.hub.topic("quotes").subscriptions) == 2, what="both subscribed")
    total = 60_000
    received: list[int] = []

    def read_all() -> None:
        fast.conn.settimeout(30)
        while not received or received[-1] < total:
            message = json.loads(fast.conn.recv())
            assert message["type"] == "records", message
            received.extend(r["seq"] for r in message["records"])

    reader = gevent.get_hub().threadpool.spawn(read_all)
    for i in range(0, total, 100):
        # Paced by the fast client, so it stays "fast" on a loaded machine: its reader thread
        # fighting for the GIL could fall 2,000 records behind for the 0.5 s grace and be cut.
        while i - len(received) > 1_000 and not reader.ready():
            gevent.sleep(0.005)
        api.hub.publish("quotes", quotes(100, start=i))
        gevent.sleep(0.001)
    reader.get(timeout=60)
    assert received == list(range(1, total + 1))
    metrics = api.hub.metrics
    wait_for(lambda: metrics.value("gauss_ws_slow_disconnects_total") == 1, what="slow client disconnected")
    assert metrics.value("gauss_subscriber_dropped_records_total", topic="quotes", kind="ws") > 0
    wait_for(lambda: len(api.hub.topic("quotes").subscriptions) == 1, what="slow subscription removed")
    assert api.server.websocket_sessions == 1
    fast.close()
    slow.close()


def test_server_stop_closes_websockets(make_api: Callable[..., Api]) -> None:
    api = make_api()
    ws = api.ws()
    ws.request({"action": "subscribe", "topic": "quotes"})
    api.hub.stop(timeout=5)
    try:
        ws.conn.settimeout(5)
        opcode, data = off_loop(ws.conn.recv_data, True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 1001
    finally:
        ws.close()


def test_a_failing_storage_answers_with_an_error_and_keeps_the_connection(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from gauss.errors import StorageError

    topic = api.hub.topic("quotes")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("disk on fire")

    ws = api.ws()
    monkeypatch.setattr(topic, "query", broken)
    answer = ws.request({"action": "query", "topic": "quotes", "id": 9})
    assert answer["type"] == "error" and answer["id"] == 9 and "disk on fire" in answer["error"]
    monkeypatch.undo()
    assert ws.request({"action": "query", "topic": "quotes"})["type"] == "result"
    rest = api.get("/api/topics/quotes")
    assert rest.status_code == 200
    ws.close()


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ({"action": "subscribe", "topic": "quotes", "since_ts": 1e30}, "since_ts"),
        ({"action": "subscribe", "topic": "quotes", "since_seq": 1 << 64}, "since_seq"),
        ({"action": "subscribe", "topic": "quotes", "since_ts": -(1 << 63) - 1}, "since_ts"),
        ({"action": "query", "topic": "quotes", "from": 1e30}, "from"),
        ({"action": "query", "topic": "quotes", "to": 1 << 63}, "to"),
        ({"action": "query", "topic": "quotes", "since_seq": 1 << 70}, "since_seq"),
        ({"action": "query", "topic": "quotes", "limit": 1 << 64}, "limit"),
    ],
)
def test_integers_beyond_int64_are_errors_and_the_connection_stays_open(
    api: Api, message: dict[str, Any], named: str
) -> None:
    api.hub.publish("quotes", quotes(2))
    ws = api.ws()
    answer = ws.request({**message, "id": 5})
    assert answer["type"] == "error" and answer["id"] == 5 and answer["error"].startswith(f"{named}:"), answer
    assert ws.request({"action": "query", "topic": "quotes"})["type"] == "result"
    ws.close()


def test_a_binary_frame_is_answered_with_an_error_and_the_connection_stays_open(api: Api) -> None:
    ws = api.ws()
    off_loop(ws.conn.send_binary, json.dumps({"action": "query", "topic": "quotes"}).encode())
    answer = ws.recv()
    assert answer["type"] == "error" and "binary" in answer["error"]
    off_loop(ws.conn.send_binary, b"\x00\xff" * 100)
    assert ws.recv()["type"] == "error"
    assert ws.request({"action": "query", "topic": "quotes"})["type"] == "result"
    ws.close()


def client_frame(first: int, payload: bytes = b"", *, masked: bool = True) -> bytes:
    """A raw client frame: ``first`` is its first byte (FIN, reserved bits, opcode), as RFC 6455 section 5.2 lays it out."""
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    head = struct.pack("!BB", first, mask_bit | n) if n < 126 else struct.pack("!BBH", first, mask_bit | 126, n)
    if not masked:
        return head + payload
    mask = b"\x5a\x13\xc7\x02"
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(client_frame(0x81, b"{}", masked=False), id="unmasked"),
        pytest.param(client_frame(0xC1, b"{}"), id="reserved-bit"),
        pytest.param(client_frame(0x83, b"{}"), id="unknown-opcode"),
        pytest.param(client_frame(0x80, b"{}"), id="orphan-continuation"),
        pytest.param(client_frame(0x89, b"x" * 126), id="control-frame-over-125-bytes"),
        pytest.param(client_frame(0x09, b"x"), id="fragmented-control-frame"),
        pytest.param(client_frame(0x01, b"{") + client_frame(0x81, b"{}"), id="data-frame-inside-a-message"),
    ],
)
def test_a_protocol_violation_is_answered_with_close_1002_then_eof(api: Api, data: bytes) -> None:
    host, port = api.server.address
    sock = off_loop(stalled_ws, host, port)
    try:
        off_loop(sock.sendall, data)
        received = b""
        while piece := off_loop(sock.recv, 4096):  # until EOF
            received += piece
        assert received[0] == 0x88 and received[1] < 126, received  # one final close frame, unmasked
        assert int.from_bytes(received[2:4], "big") == 1002, received
        assert len(received) == 2 + received[1], "nothing after the close frame"
    finally:
        sock.close()
    wait_for(lambda: api.server.websocket_sessions == 0, what="session ended")


def test_a_large_query_is_one_fragmented_message_equal_to_rest(api: Api) -> None:
    api.hub.publish("quotes", quotes(30_000))
    ws = api.ws()
    ws.send({"action": "query", "topic": "quotes", "limit": 30_000, "id": 1})
    opcode, frames = None, 0
    parts: list[bytes] = []
    while True:
        frame = off_loop(ws.conn.recv_frame)
        opcode = frame.opcode if opcode is None else opcode
        frames += 1
        parts.append(frame.data)
        if frame.fin:
            break
    assert opcode == websocket.ABNF.OPCODE_TEXT and frames > 10  # ~64 KiB frames, never one 4 MB buffer
    answer = json.loads(b"".join(parts))
    rest = api.get("/api/topics/quotes", params={"limit": 30_000}).json()
    assert answer["type"] == "result" and answer["id"] == 1 and answer["records"] == rest["records"]
    ws.close()


def test_a_client_that_stops_reading_takes_no_more_than_its_capped_socket(make_api: Callable[..., Api]) -> None:
    """``ws_send_buffer`` bounds what the socket of a stalled client takes (autotuned it took MBs here)."""
    api = make_api(ws_queue_size=500, ws_send_buffer=32_768, ws_overflow_grace_s=60)
    host, port = api.server.address
    slow = off_loop(stalled_ws, host, port, recv_buffer=0)  # the kernel's own receive buffer, as a browser's
    off_loop(slow.sendall, masked_text_frame(b'{"action":"subscribe","topic":"quotes"}'))
    topic = api.hub.topic("quotes")
    wait_for(lambda: len(topic.subscriptions) == 1, what="subscribed")
    (sub,) = topic.subscriptions
    one_record = len(json.dumps(quotes(1)[0].as_dict())) + 10
    for i in range(0, 40_000, 500):  # ~6 MB of pushes
        api.hub.publish("quotes", quotes(500, start=i))
        gevent.sleep(0.002)
    taken = topic.last_seq - sub.start_seq - sub.dropped - sub.depth
    assert sub.dropped > 0, "the client's queue overflowed"
    assert taken * one_record < 1_000_000, f"its socket took {taken:,} records"
    slow.close()
