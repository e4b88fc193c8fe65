"""Cluster benchmark: Gauss nodes over NATS JetStream (SPEC section 7, docs/cluster.md).

Runs, on the shipped ``config.nats.toml`` / ``config.edge.toml`` (ports moved to free ones) and a
private nats-server (Debian's; JetStream in a temporary directory, the ``partition(N,1)``
mapping of ``quotes.*``):

1. **one shard node** draining ``-n`` quotes for 20 symbols from the stream ``QUOTES``;
2. **two shard nodes** draining the same quotes (each its half);
3. **TCP**: the same quotes over one TCP connection to one node (``config.nats.toml`` with
   its source changed to a ``tcp-server``), as ``bench_ingest`` does;
4. **latency**: two shards and an edge; a publisher sends single quotes at ``--rate`` per
   second to ``quotes.<SYMBOL>``; a WebSocket client of the edge subscribed to ``ohlc.1s``
   times, per quote, publish -> the first candle push whose close is that quote's mid.

For 1 and 2 the quotes are published first, by a separate process (``gauss-quotes-gen file
--speed max --target nats://...``), into the stream; then the bus is stopped, the nodes are
started (they wait for it) and the bus started again, so every node begins draining within
a second of the others. The rate is ``-n`` over the time from the first quote stored in any
node to the last: the aggregate ``quotes.raw`` rate, timed from the first node's source
connecting (its log line) to the last byte written to any node's ``quotes.raw`` tick log (a
node busy ingesting answers HTTP late, so the bench watches the files). The machine has 2 cores, shared with other work, so a
second node competes with the first, with nats-server and with everything else running:
figures are noisy; compare the ratios of one run.

    .venv/bin/python bench/bench_cluster.py [-n 200000] [--rate 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
_conftest = importlib.util.spec_from_file_location("gauss_test_conftest", REPO / "tests" / "conftest.py")
assert _conftest is not None and _conftest.loader is not None
_conftest.loader.exec_module(importlib.util.module_from_spec(_conftest))  # makes tests/support importable as ``support``

from support import free_port  # noqa: E402
from support.nats import BusClient, NatsServer  # noqa: E402
from support.serve import Server  # noqa: E402

SYMBOLS = [f"SYM{i:02d}" for i in range(20)]
MINUTE = 60_000


def node_config(directory: Path, shipped: str, ports: dict[int, int], tcp_port: int | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = (REPO / shipped).read_text()
    for old, new in ports.items():
        text = text.replace(f"port = {old}", f"port = {new}")
    if tcp_port is not None:  # the same node fed over TCP instead of JetStream
        lines = text.splitlines()
        i = next(n for n, line in enumerate(lines) if line.startswith('transport = { type = "nats"') and "quotes." in line)
        lines[i] = f'transport = {{ type = "tcp-server", bind = "127.0.0.1", port = {tcp_port} }}'
        text = "\n".join(line for line in lines if not line.startswith("name = \"quotes.raw shard")) + "\n"
    path = directory / shipped
    path.write_text(text)
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), including what the drain polls cost it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_bytes(directories: list[Path]) -> int:
    total = 0
    for directory in directories:
        try:
            total += sum(entry.stat().st_size for entry in os.scandir(directory) if entry.name.endswith(".glog"))
        except FileNotFoundError:
            pass
    return total


_CONNECTED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*nats \S+ quotes\.\d+\.\* stream QUOTES .*: connected", re.M)


def connected_at(log: str) -> float:
    """The wall-clock time a node's JetStream source connected, from its log."""
    found = _CONNECTED.search(log)
    assert found is not None, "no 'connected' line for the quotes source"
    return time.mktime(time.strptime(found.group(1), "%Y-%m-%d %H:%M:%S")) + int(found.group(2)) / 1000


def timed_by_tick_logs(directories: list[Path], done: Callable[[], bool]) -> tuple[float, float]:
    """Wall-clock times of the first and the last byte written to the nodes' quotes.raw tick logs.

    A node busy ingesting answers HTTP late, so the timing comes from the files its
    journal writes through to the OS before anything is visible (SPEC section 6).
    """
    start = log_bytes(directories)
    first = last = None
    size = start
    checked = time.monotonic()
    deadline = checked + 600
    while True:
        now = time.time()
        current = log_bytes(directories)
        if current != size:
            size = current
            last = now
            if first is None:
                first = now
        if time.monotonic() - checked > 0.5 and first is not None and last is not None and now - last > 0.5:
            checked = time.monotonic()
            if done():
                break
        assert time.monotonic() < deadline, "the nodes did not finish"
        time.sleep(0.005)
    assert first is not None and last is not None
    return first, last


def count(api: int, topic: str = "quotes.raw") -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{api}/api/topics", timeout=30) as response:
        return next((t["records"] or 0) for t in json.loads(response.read()) if t["name"] == topic)


def write_quotes(path: Path, n: int) -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
    start = now - now % MINUTE - 50 * MINUTE
    step = max(1, 45 * MINUTE // n)
    quotes = []
    with path.open("w") as out:
        for i in range(n):
            mid = 1.0 + (i * 7919 % 1000) / 10_000
            q = {"symbol": SYMBOLS[i % 20], "bid": round(mid - 0.0001, 6), "ask": round(mid + 0.0001, 6),
                 "bid_size": 1.0, "ask_size": 1.0, "ts_ms": start + i * step}  # fmt: skip
            quotes.append(q)
            out.write(json.dumps(q) + "\n")
    return quotes


def publish_file(url: str, quotes_file: Path) -> float:
    """The separate publisher process; returns its wall time."""
    script = Path(sys.executable).with_name("gauss-quotes-gen")
    started = time.perf_counter()
    subprocess.run([str(script), "file", str(quotes_file), "--speed", "max", "--target", url], check=True, capture_output=True)
    return time.perf_counter() - started


def create_stream(url: str) -> None:
    client = BusClient(url)
    try:
        client._run(client.nc.jetstream().add_stream(name="QUOTES", subjects=["quotes.*.*"]))
    finally:
        client.close()


def drain(workdir: Path, quotes_file: Path, n: int, shards: int) -> dict[str, float]:
    """Fill the stream, stop the bus, start the nodes (they wait for it), start the bus: all drain at once."""
    bus = NatsServer(workdir / f"nats{shards}", shards=shards).start()
    nodes: list[Server] = []
    try:
        create_stream(bus.url)
        publish_seconds = publish_file(bus.url, quotes_file)
        bus.stop()
        apis = [free_port() for _ in range(shards)]
        for k in range(shards):
            config = node_config(workdir / f"drain{shards}-{k}", "config.nats.toml", {9200: apis[k], 9300: free_port()})
            nodes.append(Server(config, env={"GAUSS_NATS_URL": bus.url, "GAUSS_SHARD": str(k), "GAUSS_SHARDS": str(shards)}))
        assert sum(count(api) for api in apis) == 0
        cpu_before = [cpu_seconds(node.proc.pid) for node in nodes]
        bus_cpu_before = cpu_seconds(bus.proc.pid) if bus.proc is not None else 0.0
        logs = [workdir / f"drain{shards}-{k}" / "data" / f"shard-{k}" / "ticks" / "quotes.raw" for k in range(shards)]
        bus.start()  # every node connects within reconnect_max (1 s) and drains its shard
        _, last = timed_by_tick_logs(logs, lambda: sum(count(api) for api in apis) >= n)
        # From the first node's source connecting (its log line) to the last byte of any tick log:
        # a node fetches 256 messages (64k quotes) at a time, so the logs grow in a few big writes.
        first = min(connected_at(node.output()) for node in nodes)
        seconds = last - first
        cpu = [cpu_seconds(node.proc.pid) - before for node, before in zip(nodes, cpu_before, strict=True)]
        bus_cpu = (cpu_seconds(bus.proc.pid) if bus.proc is not None else 0.0) - bus_cpu_before
        return {
            "quotes_per_s": n / seconds,
            "seconds": seconds,
            "publish_s": publish_seconds,
            "node_cpu_s": [round(c, 2) for c in cpu],
            "nats_server_cpu_s": round(bus_cpu, 2),
            "quotes_per_node_cpu_s": n / sum(cpu) if sum(cpu) else float("nan"),
        }
    finally:
        for node in nodes:
            node.terminate()
        bus.stop()


def over_tcp(workdir: Path, quotes_file: Path, n: int) -> dict[str, float]:
    bus = NatsServer(workdir / "nats-tcp", shards=1).start()  # the node's candle sinks still publish to a bus
    api, tcp = free_port(), free_port()
    config = node_config(workdir / "tcp", "config.nats.toml", {9200: api, 9300: free_port()}, tcp_port=tcp)
    node = Server(config, env={"GAUSS_NATS_URL": bus.url})
    try:
        script = Path(sys.executable).with_name("gauss-quotes-gen")
        sender = subprocess.Popen([str(script), "file", str(quotes_file), "--speed", "max", "--target", f"127.0.0.1:{tcp}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        first, last = timed_by_tick_logs([workdir / "tcp" / "data" / "shard-0" / "ticks" / "quotes.raw"], lambda: count(api) >= n)
        seconds = last - first  # the sender paces the source: the log grows from the first chunk on
        sender.wait(60)
        return {"quotes_per_s": n / seconds, "seconds": seconds}
    finally:
        node.terminate()
        bus.stop()


def latency(workdir: Path, rate: float, seconds: float) -> dict[str, float]:
    import websocket

    bus = NatsServer(workdir / "nats-lat", shards=2).start()
    nodes: list[Server] = []
    try:
        env = {"GAUSS_NATS_URL": bus.url, "GAUSS_SHARDS": "2"}
        for k in range(2):
            config = node_config(workdir / f"lat{k}", "config.nats.toml", {9200: free_port(), 9300: free_port()})
            nodes.append(Server(config, env={**env, "GAUSS_SHARD": str(k)}))
        edge_api = free_port()
        nodes.append(Server(node_config(workdir / "edge", "config.edge.toml", {9210: edge_api}), env=env))
        ws = websocket.create_connection(f"ws://127.0.0.1:{edge_api}/ws", timeout=30, suppress_origin=True)
        ws.send(json.dumps({"action": "subscribe", "topic": "ohlc.1s"}))
        sent: dict[tuple[str, float], float] = {}
        seen: dict[tuple[str, float], float] = {}
        stop = threading.Event()

        def receive() -> None:
            ws.settimeout(1.0)
            while not stop.is_set():
                try:
                    message = json.loads(ws.recv())
                except websocket.WebSocketTimeoutException:
                    continue
                except Exception:  # noqa: BLE001 - closed at the end
                    return
                now = time.perf_counter()
                for record in message.get("records", ()):
                    key = (record["key"], round(record["data"]["close"], 8))
                    seen.setdefault(key, now)

        reader = threading.Thread(target=receive, daemon=True)
        reader.start()
        client = BusClient(bus.url)
        time.sleep(2.0)  # consumers and subscriptions in place

        async def publish() -> None:
            interval = 1.0 / rate
            deadline = time.perf_counter() + seconds
            i = 0
            next_at = time.perf_counter()
            while time.perf_counter() < deadline:
                symbol = SYMBOLS[i % 20]
                mid = round(1.0 + i * 1e-5, 8)
                q = {"symbol": symbol, "bid": mid - 1e-5, "ask": mid + 1e-5, "bid_size": 1.0, "ask_size": 1.0,
                     "ts_ms": int(time.time() * 1000)}  # fmt: skip
                sent[(symbol, round((q["bid"] + q["ask"]) / 2, 8))] = time.perf_counter()
                await client.nc.publish(f"quotes.{symbol}", json.dumps(q).encode() + b"\n")
                await client.nc.flush()
                i += 1
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

        client._run(publish(), timeout=seconds + 60)
        time.sleep(3.0)
        stop.set()
        ws.close()
        client.close()
        lat = sorted((seen[k] - t) * 1000 for k, t in sent.items() if k in seen and seen[k] >= t)
        if not lat:
            return {"p50_ms": float("nan"), "p99_ms": float("nan"), "matched": 0, "sent": len(sent)}
        return {
            "p50_ms": statistics.median(lat),
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "matched": len(lat),
            "sent": len(sent),
        }
    finally:
        for node in nodes:
            node.terminate()
        bus.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200_000, help="quotes for the throughput runs (default 200000)")
    parser.add_argument("--rate", type=float, default=200.0, help="latency run: quotes per second (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency run: how long (default 10)")
    parser.add_argument("--only", choices=["one", "two", "tcp", "latency"], action="append")
    args = parser.parse_args()
    only = set(args.only or ["one", "two", "tcp", "latency"])
    results: dict[str, Any] = {"n": args.n, "cpus": os.cpu_count(), "load_1m": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="gauss-bench-cluster-") as tmp:
        workdir = Path(tmp)
        quotes_file = workdir / "quotes.jsonl"
        write_quotes(quotes_file, args.n)
        if "one" in only:
            results["nats_one_node"] = drain(workdir, quotes_file, args.n, 1)
            print("one node over NATS:", results["nats_one_node"], flush=True)
        if "two" in only:
            results["nats_two_shards"] = drain(workdir, quotes_file, args.n, 2)
            print("two shards over NATS:", results["nats_two_shards"], flush=True)
        if "one" in only and "two" in only:
            results["two_over_one"] = results["nats_two_shards"]["quotes_per_s"] / results["nats_one_node"]["quotes_per_s"]
        if "tcp" in only:
            results["tcp_one_node"] = over_tcp(workdir, quotes_file, args.n)
            print("one node over TCP:", results["tcp_one_node"], flush=True)
        if "latency" in only:
            results["latency_publish_to_edge_ws"] = latency(workdir, args.rate, args.seconds)
            print("latency:", results["latency_publish_to_edge_ws"], flush=True)
    results["load_1m_after"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
