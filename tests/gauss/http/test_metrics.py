"""``/metrics``: the Prometheus text exposition of the whole hub, read by a real HTTP client."""

from __future__ import annotations

import socket
import time
from typing import Callable

from prometheus_client.parser import text_string_to_metric_families
from support.http import Api, off_loop, quotes, wait_for


def samples(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def send_lines(host: str, port: int, payload: bytes) -> None:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(payload)


def test_metrics_cover_topics_sources_subscribers_and_http(make_api: Callable[..., Api]) -> None:
    api = make_api(sources=[{"topic": "quotes", "transport": {"type": "tcp-server", "bind": "127.0.0.1", "port": 0}}])
    source = api.hub.sources[0]
    host, port = source.address
    good = b'{"symbol":"EURUSD","bid":1.1,"ask":1.2,"bid_size":1,"ask_size":1,"ts_ms":%d}\n'
    now = int(time.time() * 1000)
    off_loop(send_lines, host, port, (good % now) + b"not json\n" + (good % (now + 1)))
    wait_for(lambda: api.hub.topic("quotes").last_seq == 2, what="two quotes ingested")
    ws = api.ws()
    ws.request({"action": "subscribe", "topic": "quotes"})
    api.get("/api/topics/quotes")
    api.get("/api/topics/nope")
    got = samples(api)

    def total(metric: str) -> float:
        return sum(v for (n, _), v in got.items() if n == metric)

    assert got[("gauss_topic_records_published_total", (("topic", "quotes"),))] == 2
    assert got[("gauss_topic_records_stored_total", (("topic", "quotes"),))] == 2
    assert total("gauss_source_connections_total") == 1
    assert total("gauss_source_frames_total") == 3
    assert total("gauss_source_bytes_total") > 100
    assert total("gauss_source_decode_errors_total") == 1
    assert got[("gauss_subscribers", (("kind", "ws"), ("topic", "quotes")))] == 1
    assert ("gauss_subscriber_queue_depth", (("kind", "ws"), ("topic", "quotes"))) in got
    assert got[("gauss_http_requests_total", (("method", "GET"), ("route", "/api/topics/{name}"), ("status", "200")))] == 1
    assert got[("gauss_http_requests_total", (("method", "GET"), ("route", "/api/topics/{name}"), ("status", "404")))] == 1
    assert got[("gauss_http_requests_total", (("method", "GET"), ("route", "/ws"), ("status", "101")))] == 1
    assert got[("gauss_ws_open_connections", ())] == 1
    ws.close()


def test_short_lived_clients_leave_no_series_behind(api: Api) -> None:
    api.hub.publish("quotes", quotes(1))
    for _ in range(2):
        ws = api.ws()
        ws.request({"action": "subscribe", "topic": "quotes", "key": "EURUSD"})
        ws.close()
    wait_for(lambda: not api.hub.topic("quotes").subscriptions, what="subscriptions closed")
    before = {k for k in samples(api) if not k[0].startswith("gauss_http")}
    for _ in range(5):
        ws = api.ws()
        ws.request({"action": "subscribe", "topic": "quotes", "key": "EURUSD"})
        api.hub.publish("quotes", quotes(1))
        ws.recv()
        ws.close()
    wait_for(lambda: not api.hub.topic("quotes").subscriptions, what="subscriptions closed")
    after = {k for k in samples(api) if not k[0].startswith("gauss_http")}
    assert after == before
    got = samples(api)
    assert got[("gauss_ws_connections_total", ())] == 7
    assert got[("gauss_ws_open_connections", ())] == 0
