"""API benchmark: REST latency, WebSocket fan-out, end-to-end latency (source -> WS subscriber).

One invocation measures, each beside a baseline in the same run:

1. REST: p50/p99 latency of ``GET /api/topics/bench?limit=10000`` (10,000 quotes) and of
   ``GET /api/topics/candles?limit=10000`` (10,000 one-second candles of 10 symbols), each against
   a Falcon-free baseline: a bare gevent WSGI app that runs the same storage query and
   encodes the whole answer with one ``msgspec`` call; and the floor: the bytes of one
   Gauss answer served pre-encoded (what the client and the loopback cost alone).
2. WebSocket fan-out: 100 clients subscribed to one topic while ``--fanout-rate`` records/s
   (default 20,000) are published into it; records/s delivered in total. Baseline: a naive
   server that sends each record as its own message, encoded per client (``json.dumps``).
3. End to end: quotes sent as JSON lines to a TCP source at 100,000 quotes/s, received by a
   WebSocket subscriber of the source's topic; p50/p99 of (received - sent). Baseline: a
   relay that sends each chunk its TCP connection reads, as is, in one WebSocket message
   (no parsing, topic or storage: the loopback, gevent and the framing alone). The client
   freezes and stops its own cyclic GC while it measures (the same client for both).

The server runs in this process (gevent, its GC tuned as by ``gauss-serve``); clients run in a separate
process (gevent too) and count records without full JSON parsing (fan-out counts
``"seq":`` occurrences). The machine has 2 cores shared with other engineers' jobs:
figures are noisy; compare the ratios measured in the same run.

    .venv/bin/python bench/bench_api.py [--quick] [--only rest|fanout|e2e]
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import socket
import struct
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


# --- client side (a subprocess, gevent-patched) ----------------------------------------


def _ws_connect(host: str, port: int, path: str = "/ws") -> socket.socket:
    sock = socket.create_connection((host, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    if not answer.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(answer.decode(errors="replace"))
    return sock


def _ws_send(sock: socket.socket, text: str) -> None:
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    header = bytes((0x81, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, n)
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def _ws_frames(sock: socket.socket):  # type: ignore[no-untyped-def]
    """Yield the payload of each frame the server sends (unmasked, unfragmented)."""
    buf = b""
    while True:
        while True:
            if len(buf) >= 2:
                n = buf[1] & 0x7F
                start = 2
                if n == 126 and len(buf) >= 4:
                    n, start = struct.unpack("!H", buf[2:4])[0], 4
                elif n == 127 and len(buf) >= 10:
                    n, start = struct.unpack("!Q", buf[2:10])[0], 10
                elif n >= 126:
                    n = -1
                if n >= 0 and len(buf) >= start + n:
                    yield buf[start : start + n]
                    buf = buf[start + n :]
                    continue
            break
        chunk = sock.recv(1 << 20)
        if not chunk:
            return
        buf += chunk


def client_rest(url: str, n: int, expect: int = 10_000) -> dict[str, Any]:
    import requests

    session = requests.Session()
    times = []
    size = 0
    for i in range(n + 5):
        t0 = time.perf_counter()
        response = session.get(url, timeout=60)
        body = response.content
        dt = time.perf_counter() - t0
        if i >= 5:  # warm-up
            times.append(dt * 1000)
        size = len(body)
        if response.status_code != 200 or body.count(b'"seq":') != expect:
            raise RuntimeError(f"unexpected answer {response.status_code}: {body[:200]!r}")
    return {"ms": times, "bytes": size}


def client_fanout(host: str, port: int, path: str, clients: int, seconds: float) -> dict[str, Any]:
    import gevent

    counts = [0] * clients
    first = [0.0]
    last = [0.0]

    def reader(i: int, sock: socket.socket) -> None:
        tail = b""
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return
            data = tail + chunk
            n = data.count(b'"seq":')
            if n:
                counts[i] += n
                now = time.perf_counter()
                if not first[0]:
                    first[0] = now
                last[0] = now
            tail = data[-5:]

    socks = [_ws_connect(host, port, path) for _ in range(clients)]
    for sock in socks:
        _ws_send(sock, json.dumps({"action": "subscribe", "topic": "fan"}))
        sock.settimeout(None)
    greenlets = [gevent.spawn(reader, i, s) for i, s in enumerate(socks)]
    print("READY", flush=True)
    gevent.sleep(seconds + 3)
    gevent.killall(greenlets)
    for sock in socks:
        sock.close()
    return {"records": sum(counts), "per_client_min": min(counts), "span_s": last[0] - first[0]}


def client_e2e(host: str, source_port: int, api_port: int, rate: int, seconds: float) -> dict[str, Any]:
    import gevent
    import msgspec

    decode = msgspec.json.Decoder().decode
    ws = _ws_connect(host, api_port)
    _ws_send(ws, json.dumps({"action": "subscribe", "topic": "e2e"}))
    frames = _ws_frames(ws)
    subscribed = decode(next(frames))
    assert subscribed["type"] == "subscribed", subscribed
    start_seq = subscribed["last_seq"]
    src = socket.create_connection((host, source_port))
    src.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    per_tick = max(1, rate // 1000)  # every millisecond
    total = int(rate * seconds)
    sent_at: list[float] = []
    received: list[float] = []
    ts0 = int(time.time() * 1000)
    lines = [
        (b'{"symbol":"S%d","bid":1.1,"ask":1.2,"bid_size":1.0,"ask_size":1.0,"ts_ms":%d}\n' % (i % 10, ts0 + i // 1000))
        for i in range(total)
    ]

    def sender() -> None:
        t0 = time.perf_counter()
        for i in range(0, total, per_tick):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            chunk = lines[i : i + per_tick]
            now = time.perf_counter()
            src.sendall(b"".join(chunk))
            sent_at.extend([now] * len(chunk))

    def receiver() -> None:
        for payload in frames:
            now = time.perf_counter()
            message = decode(payload)
            if message.get("type") == "records":
                received.extend([now] * len(message["records"]))
                if start_seq + len(received) >= start_seq + total:
                    return

    gc.freeze()  # the instrument's own collections are not the server's latency (the baseline's client is the same)
    gc.disable()
    r = gevent.spawn(receiver)
    s = gevent.spawn(sender)
    s.join()
    r.join(timeout=30)
    gc.enable()
    src.close()
    ws.close()
    n = min(len(sent_at), len(received))
    skip = n // 10  # warm-up
    lat = sorted((received[i] - sent_at[i]) * 1000 for i in range(skip, n))
    return {"sent": len(sent_at), "received": len(received), "ms": lat}


# --- server side (this process) -------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def run_client(*args: str) -> dict[str, Any]:
    import gevent.subprocess

    proc = gevent.subprocess.Popen([sys.executable, __file__, "--client", *args], stdout=subprocess.PIPE)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"client {args[0]} failed ({proc.returncode})")
    return json.loads(out.decode().splitlines()[-1])  # type: ignore[no-any-return]


def spawn_client(*args: str):  # type: ignore[no-untyped-def]
    import gevent.subprocess

    proc = gevent.subprocess.Popen([sys.executable, __file__, "--client", *args], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(b"READY"):
        raise RuntimeError(f"client did not start: {line!r}")
    return proc


def finish_client(proc) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    out, _ = proc.communicate()
    return json.loads(out.decode().splitlines()[-1])  # type: ignore[no-any-return]


def rest_latency(
    hub: Any, api_base: str, name: str, limit: int, n: int, nodelay: bool = False
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``n`` GETs of ``/api/topics/{name}?limit={limit}``, of the bare-msgspec baseline (same query) and of the floor.

    The floor serves the bytes of one Gauss answer, encoded beforehand, with a
    Content-Length: what the client and the loopback cost with no server work.
    ``nodelay``: the baselines set TCP_NODELAY on their connections, as the Gauss API does (else a small
    answer's last write waits for the client's delayed ACK, ~40 ms).
    """
    import gevent
    import msgspec
    from gevent.pywsgi import WSGIServer

    from gauss.records import TopicQuery

    topic = hub.topic(name)
    encode = msgspec.json.Encoder().encode

    def baseline(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        result = topic.query(TopicQuery(limit=limit))
        body = encode({"topic": name, "records": [r.as_dict() for r in result.records], "truncated": result.truncated})
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    from gauss.http.encoding import records_message_parts

    answer = topic.query(TopicQuery(limit=limit))
    floor_body = b"".join(records_message_parts({"topic": name}, answer.records, {"truncated": answer.truncated}))

    def floor(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(floor_body)))])
        return [floor_body]

    class Server(WSGIServer):  # type: ignore[misc]
        def handle(self, sock: socket.socket, address: Any) -> None:
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(sock, address)

    servers = [Server(("127.0.0.1", 0), app, log=None) for app in (baseline, floor)]
    for server in servers:
        server.start()
    try:
        gauss = run_client("rest", f"{api_base}/api/topics/{name}?limit={limit}", str(n), str(limit))
        plain, bare = (run_client("rest", f"http://127.0.0.1:{s.server_port}/", str(n), str(limit)) for s in servers)
    finally:
        for server in servers:
            server.stop()
    gevent.sleep(0)
    return gauss, plain, bare


def bench_rest(hub: Any, api_base: str, n: int) -> list[str]:
    from gauss.core import TopicRecord

    now = int(time.time() * 1000)
    records = [
        TopicRecord(
            now + i,
            "EURUSD",
            {"symbol": "EURUSD", "bid": 1.1 + i * 1e-6, "ask": 1.2, "bid_size": 1.0, "ask_size": 2.0, "ts_ms": now + i},
        )
        for i in range(20_000)
    ]
    hub.publish("bench", records)
    gauss, plain, floor = rest_latency(hub, api_base, "bench", 10_000, n)
    hub.publish("candles", candles(now, 20_000))
    c_gauss, c_plain, c_floor = rest_latency(hub, api_base, "candles", 10_000, n)
    p50_p99 = lambda r: "%.1f / %.1f" % (pct(r["ms"], 0.5), pct(r["ms"], 0.99))  # noqa: E731
    return [
        f"| REST, 10,000-record query ({gauss['bytes'] // 1024} KiB) | p50 / p99 ms | {p50_p99(gauss)} "
        f"| {p50_p99(plain)} | p50 <= 5 ms |",
        f"| REST floor: the same answer's bytes served pre-encoded | p50 / p99 ms | {p50_p99(floor)} | | |",
        f"| REST, 10,000-candle query ({c_gauss['bytes'] // 1024} KiB) | p50 / p99 ms | {p50_p99(c_gauss)} "
        f"| {p50_p99(c_plain)} | |",
        f"| REST floor: the same candles' bytes served pre-encoded | p50 / p99 ms | {p50_p99(c_floor)} | | |",
    ]


def candles(now: int, n: int) -> list[Any]:
    """``n`` one-second candles of 10 symbols, as the OHLC processor makes them (its data fields, in its order)."""
    from gauss.core import TopicRecord

    out = []
    for i in range(n):
        symbol, start = f"SYM{i % 10}", (now // 1000 - n // 10 + i // 10) * 1000
        price = round(1.1 + (i % 977) * 1e-5, 5)
        data = {
            "symbol": symbol, "timeframe": "1s", "ts_ms": start,
            "open": price, "high": round(price + 3e-5, 5), "low": round(price - 2e-5, 5), "close": round(price + 1e-5, 5),
            "ticks": 1 + i % 40,
        }  # fmt: skip
        out.append(TopicRecord(start, symbol, data))
    return out


def publish_loop(publish: Any, rate: int, seconds: float) -> tuple[int, float]:
    import gevent

    from gauss.core import TopicRecord

    per_tick = rate // 100
    ticks = int(seconds * 100)
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    seq = 0
    for tick in range(ticks):
        batch = [
            TopicRecord(
                now + seq + i,
                "S%d" % (i % 10),
                {
                    "symbol": "S%d" % (i % 10),
                    "bid": 1.1,
                    "ask": 1.2,
                    "bid_size": 1.0,
                    "ask_size": 1.0,
                    "ts_ms": now + seq + i,
                },
            )
            for i in range(per_tick)
        ]
        seq += per_tick
        publish(batch)
        delay = t0 + (tick + 1) / 100 - time.perf_counter()
        gevent.sleep(max(0.0, delay))
    return seq, time.perf_counter() - t0


def naive_fanout_server() -> tuple[Any, Any]:
    """The baseline: one message per record, JSON-encoded per client, a bounded queue per client."""
    import gevent
    import gevent.queue
    from gevent.pywsgi import WSGIServer
    from geventwebsocket.handler import WebSocketHandler

    clients: list[gevent.queue.Queue] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ws = environ["wsgi.websocket"]
        ws.receive()
        queue: gevent.queue.Queue = gevent.queue.Queue(10_000)
        clients.append(queue)
        try:
            while True:
                record = queue.get()
                ws.send(json.dumps({"type": "records", "topic": "fan", "records": [record.as_dict()]}))
        except Exception:  # noqa: BLE001 - the client went away
            return []
        finally:
            clients.remove(queue)

    seq = [0]

    def publish(batch: list[Any]) -> None:
        for record in batch:
            seq[0] += 1
            record = record.with_seq(seq[0])
            for queue in clients:
                try:
                    queue.put_nowait(record)
                except gevent.queue.Full:
                    pass

    server = WSGIServer(("127.0.0.1", 0), app, handler_class=WebSocketHandler, log=None)
    server.logger = __import__("logging").getLogger("bench.naive")
    server.start()
    return server, publish


def bench_fanout(hub: Any, host: str, port: int, clients: int, rate: int, seconds: float) -> list[str]:
    import gevent

    from gauss.core import TopicRecord

    def publish(batch: list[TopicRecord]) -> None:
        hub.publish("fan", batch)

    proc = spawn_client("fanout", host, str(port), "/ws", str(clients), str(seconds))
    while len(hub.topic("fan").subscriptions) < clients:
        gevent.sleep(0.05)
    published, elapsed = publish_loop(publish, rate, seconds)
    gauss = finish_client(proc)
    dropped = sum(s.dropped for s in hub.topic("fan").subscriptions)

    server, naive_publish = naive_fanout_server()
    proc = spawn_client("fanout", host, str(server.server_port), "/", str(clients), str(seconds))
    gevent.sleep(1.0)
    naive_published, naive_elapsed = publish_loop(naive_publish, rate, seconds)
    naive = finish_client(proc)
    server.stop(timeout=1)
    expected = published * clients
    return [
        "| WS fan-out to %d clients, %d rec/s in | records/s delivered | %s (%.1f%% of %s; min/client %s) | %s (%.1f%%) | >= 1,000,000 |"
        % (
            clients,
            rate,
            f"{gauss['records'] / elapsed:,.0f}",
            100 * gauss["records"] / expected,
            f"{expected:,}",
            f"{gauss['per_client_min']:,}",
            f"{naive['records'] / naive_elapsed:,.0f}",
            100 * naive["records"] / (naive_published * clients),
        ),
    ] + ([f"|   (Gauss shed {dropped:,} records to slow readers) | | | | |"] if dropped else [])


def naive_relay_server() -> tuple[Any, Any]:
    """The end-to-end baseline: each chunk a TCP connection delivers, its lines relayed as one WS message.

    No parsing, no topic, no storage: what the loopback, gevent and the WebSocket framing cost alone.
    """
    from gevent.pywsgi import WSGIServer
    from gevent.server import StreamServer
    from geventwebsocket.handler import WebSocketHandler

    clients: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ws = environ["wsgi.websocket"]
        ws.handler.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the Gauss API does
        ws.receive()
        ws.send(json.dumps({"type": "subscribed", "topic": "e2e", "last_seq": 0}))
        clients.append(ws)
        ws.receive()  # until the client goes
        clients.remove(ws)
        return []

    def source(sock: socket.socket, address: Any) -> None:
        pending = b""
        while chunk := sock.recv(1 << 16):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if lines:
                message = b'{"type":"records","topic":"e2e","records":[' + b",".join(lines) + b"]}"
                for ws in clients:
                    ws.send(message)  # a binary frame: the same framing, no str round trip

    ws_server = WSGIServer(("127.0.0.1", 0), app, handler_class=WebSocketHandler, log=None)
    ws_server.logger = __import__("logging").getLogger("bench.naive")
    ws_server.start()
    tcp_server = StreamServer(("127.0.0.1", 0), source)
    tcp_server.start()
    return ws_server, tcp_server


def bench_e2e(host: str, source_port: int, api_port: int, rate: int, seconds: float) -> list[str]:
    result = run_client("e2e", host, str(source_port), str(api_port), str(rate), str(seconds))
    ws_server, tcp_server = naive_relay_server()
    base = run_client("e2e", host, str(tcp_server.address[1]), str(ws_server.address[1]), str(rate), str(seconds))
    ws_server.stop()
    tcp_server.stop()
    ms, base_ms = result["ms"], base["ms"]
    if not ms or not base_ms:
        return [
            f"| end to end at {rate:,} q/s | p50 / p99 ms | no records received ({result}, {base}) | | p99 < 1 ms |"
        ]
    return [
        "| end to end, TCP source -> WS, %s q/s | p50 / p99 ms | %.2f / %.2f (%s of %s received) | %.2f / %.2f | p99 < 1 ms |"
        % (
            f"{rate:,}",
            pct(ms, 0.5),
            pct(ms, 0.99),
            f"{result['received']:,}",
            f"{result['sent']:,}",
            pct(base_ms, 0.5),
            pct(base_ms, 0.99),
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--fanout-rate", type=int, default=20_000, help="records/s published into the fan-out topic")
    parser.add_argument("--only", choices=("rest", "fanout", "e2e"), help="run one measurement")
    parser.add_argument("--client", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        from gevent import monkey

        monkey.patch_all()
        kind, rest = args.client[0], args.client[1:]
        if kind == "rest":
            result = client_rest(rest[0], int(rest[1]), *(int(x) for x in rest[2:3]))
        elif kind == "fanout":
            result = client_fanout(rest[0], int(rest[1]), rest[2], int(rest[3]), float(rest[4]))
        else:
            result = client_e2e(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), float(rest[4]))
        print(json.dumps(result))
        return

    from gevent import monkey

    monkey.patch_all()
    import logging

    import gauss
    from gauss.cli.serve import tune_gc
    from gauss.hub import Hub

    logging.basicConfig(level=logging.WARNING)
    seconds = 2.0 if args.quick else 5.0
    hub = Hub.from_config(
        {
            "hub": {"status_interval": 0},
            "api": {"port": 0, "ws_queue_size": 100_000},
            "topics": [
                {"name": "bench", "format": "quote", "storage": {"type": "memory", "capacity": 100_000}},
                {"name": "candles", "format": "candle", "storage": {"type": "memory", "capacity": 100_000}},
                {"name": "fan", "format": "quote", "storage": {"type": "memory", "capacity": 100_000}},
                {"name": "e2e", "format": "quote", "storage": {"type": "memory", "capacity": 1_000_000}},
            ],
            "sources": [{"topic": "e2e", "transport": {"type": "tcp-server", "bind": "127.0.0.1", "port": 0}}],
        }
    )
    hub.start()
    tune_gc()  # as gauss-serve does after start-up
    host, port = hub._api_server.address
    print(f"gauss kernels: {gauss.CORE}; 2-core shared machine, noisy figures\n")
    print("| measurement | unit | Gauss | baseline | target |")
    print("|---|---|---:|---:|---:|")
    if args.only in (None, "rest"):
        for row in bench_rest(hub, f"http://{host}:{port}", 50 if args.quick else 200):
            print(row, flush=True)
    if args.only in (None, "fanout"):
        for row in bench_fanout(hub, host, port, 100, args.fanout_rate, seconds):
            print(row, flush=True)
    if args.only in (None, "e2e"):
        for row in bench_e2e(host, hub.sources[0].address[1], port, 100_000, seconds):
            print(row, flush=True)
    hub.stop()


if __name__ == "__main__":
    main()
