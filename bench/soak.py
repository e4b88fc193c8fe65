"""Soak: the default configuration under steady load and churning clients, watched for unbounded growth.

Runs ``gauss-serve`` on a copy of ``config.toml`` in a temporary directory
(every port rewritten to a free one, so it never clashes with other servers
on the machine; ``data/`` lands in the temporary directory), the generator
(``gauss-quotes-gen auto --rate R``) into the JSON source, and clients that
attach, detach and stall:

- WebSocket clients (``/ws``, subscribed to ``quotes.raw`` and ``ohlc.1s``):
  some read for a few seconds and leave, some subscribe and never read
  (with a small receive buffer) until the server's watchdog or write
  timeout drops them or they give up, some connect and close at once;
- TCP clients of the 9300 sink (JSON lines): the same three behaviours;
- one REST client querying ``quotes.raw`` and ``ohlc.1m`` every second.

Every ``--interval`` seconds it samples the server's RSS
(``/proc/PID/status``), open descriptors (``/proc/PID/fd``), queued
records (``gauss_subscriber_queue_depth``, summed), records shed
(``gauss_subscriber_dropped_records_total`` and the sources' queue drops)
and ``/api/health`` latency, and prints one table row per sample.

Unbounded growth, the failure rule (exit status 1). Samples after the
warm-up (``--warmup``, default 10 % of the run) are cut into thirds. A
level (RSS, descriptors, queued records) fails when the last third's
maximum exceeds the first third's maximum by more than its tolerance
(RSS 32 MiB + 15 %, descriptors 16 + 10 %, queued records the larger of
2,000 and ``--rate`` x the longest stall, + 10 %) *and* is still rising:
the least-squares slope over the last third is positive. Shed records are a counter (stalling clients lose records by
design, policy ``drop``); what must stay bounded is their rate: it fails
when the last third's rate exceeds 1.5 times the rate of the first two
thirds plus ``--rate`` (one stalled subscription's worth) and the rate keeps
rising over the last third. The run also fails if the server or the
generator exits, if no quote is ingested between two samples, if no
reading client ever received data, or if the server logged a traceback.
``ingested`` is ``gauss_source_records_total`` over all four sources (the
generator's and the three loopbacks').

    .venv/bin/python bench/soak.py --duration 1800 --rate 1000      # the 30-minute run of bench/README.md
    .venv/bin/python bench/soak.py --duration 60                    # what CI runs (tox -e soak)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE.parent / "config.toml"

# (name, absolute slack, relative slack) per level that must stay bounded.
LEVELS = (("rss_mib", 32.0, 0.15), ("fds", 16.0, 0.10), ("queued", 2000.0, 0.10))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rewrite_ports(text: str) -> tuple[str, dict[int, int]]:
    """``text`` with every ``port = N`` (N > 0) replaced by a free port, the same N always by the same port."""
    mapping: dict[int, int] = {}

    def replace(match: re.Match[str]) -> str:
        port = int(match.group(2))
        if port == 0:
            return match.group(0)
        if port not in mapping:
            mapping[port] = free_port()
        return f"{match.group(1)}{mapping[port]}"

    return re.sub(r"(\bport\s*=\s*)(\d+)", replace, text), mapping


def _script(name: str) -> list[str]:
    script = Path(sys.executable).with_name(name)
    if script.exists():
        return [str(script)]
    module = {"gauss-serve": "gauss.cli.serve", "gauss-quotes-gen": "gauss.cli.quotes_gen"}[name]
    return [sys.executable, "-m", module]


# --- the server's figures -----------------------------------------------------------------


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


_SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> the sum of each metric's samples over all labels."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_LINE.match(line)
        if match is None:
            continue
        name, value = match.group(1), float(match.group(3))
        totals[name] = totals.get(name, 0.0) + value
    return totals


def http_get(url: str, timeout: float = 10.0) -> tuple[bytes, float]:
    start = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        body = answer.read()
    return body, time.monotonic() - start


# --- clients ------------------------------------------------------------------------------


@dataclass
class ClientStats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    cycles: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, table: str, what: str, n: int = 1) -> None:
        with self.lock:
            counts: dict[str, int] = getattr(self, table)
            counts[what] = counts.get(what, 0) + n


class Clients:
    """Threads that attach, read, stall and detach until ``stop`` is set."""

    def __init__(self, api_port: int, sink_port: int, *, ws: int, tcp: int, stall_max: float, seed: int) -> None:
        self.api_port = api_port
        self.sink_port = sink_port
        self.stall_max = stall_max
        self.stop = threading.Event()
        self.stats = ClientStats()
        self.threads = [
            threading.Thread(target=self._loop, args=(self._ws_cycle, random.Random(seed + i)), daemon=True)
            for i in range(ws)
        ]
        self.threads += [
            threading.Thread(target=self._loop, args=(self._tcp_cycle, random.Random(seed + 1000 + i)), daemon=True)
            for i in range(tcp)
        ]
        self.threads.append(threading.Thread(target=self._rest_loop, daemon=True))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)

    def _loop(self, cycle: Callable[[random.Random, str], None], rng: random.Random) -> None:
        while not self.stop.is_set():
            behaviour = rng.choices(("read", "stall", "churn"), weights=(5, 3, 2))[0]
            try:
                cycle(rng, behaviour)
            except Exception as exc:  # noqa: BLE001 - websocket-client and http.client have their own kinds
                self.stats.add("errors", f"{cycle.__name__[1:3]} {behaviour}: {type(exc).__name__}")
                self.stop.wait(0.5)

    def _hold(self, seconds: float) -> None:
        self.stop.wait(seconds)

    def _ws_cycle(self, rng: random.Random, behaviour: str) -> None:
        import websocket

        url = f"ws://127.0.0.1:{self.api_port}/ws"
        what = f"ws {behaviour}"
        options: dict[str, Any] = {"timeout": 2}
        if behaviour == "stall":
            options["sockopt"] = ((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),)
        conn = websocket.create_connection(url, **options)
        try:
            if behaviour == "churn":
                self.stats.add("cycles", what)
                return
            for topic in ("quotes.raw", "ohlc.1s"):
                conn.send(json.dumps({"action": "subscribe", "topic": topic}))
            if behaviour == "stall":
                self._hold(rng.uniform(5, self.stall_max))
            else:
                until = time.monotonic() + rng.uniform(2, 8)
                while time.monotonic() < until and not self.stop.is_set():
                    try:
                        message = conn.recv()
                    except websocket.WebSocketTimeoutException:
                        continue
                    self.stats.add("received", what, len(message))
            self.stats.add("cycles", what)
        finally:
            conn.close(timeout=1)

    def _tcp_cycle(self, rng: random.Random, behaviour: str) -> None:
        what = f"tcp {behaviour}"
        sock = socket.create_connection(("127.0.0.1", self.sink_port), timeout=2)
        try:
            if behaviour == "churn":
                self.stats.add("cycles", what)
                return
            if behaviour == "stall":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                self._hold(rng.uniform(5, self.stall_max))
            else:
                until = time.monotonic() + rng.uniform(2, 8)
                while time.monotonic() < until and not self.stop.is_set():
                    try:
                        data = sock.recv(65536)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    self.stats.add("received", what, len(data))
            self.stats.add("cycles", what)
        finally:
            sock.close()

    def _rest_loop(self) -> None:
        base = f"http://127.0.0.1:{self.api_port}/api/topics"
        while not self.stop.wait(1.0):
            for path in ("/quotes.raw?limit=1000", "/ohlc.1m?limit=100"):
                try:
                    body, _ = http_get(base + path)
                    self.stats.add("received", "rest read", len(body))
                    self.stats.add("cycles", "rest read")
                except Exception as exc:  # noqa: BLE001 - OSError, http.client.HTTPException, ...
                    self.stats.add("errors", f"rest: {type(exc).__name__}")


# --- the run ------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss_mib: float
    fds: int
    queued: float
    dropped: float
    ingested: float
    ws_open: float
    sink_clients: float
    health_ms: float


COLUMNS = ("t_s", "rss_MiB", "fds", "queued", "dropped", "ingested", "ws_open", "sink_clients", "health_ms")


def row(sample: Sample) -> str:
    return (
        f"| {sample.t:6.0f} | {sample.rss_mib:7.1f} | {sample.fds:4d} | {sample.queued:8.0f} | {sample.dropped:10.0f} "
        f"| {sample.ingested:10.0f} | {sample.ws_open:3.0f} | {sample.sink_clients:3.0f} | {sample.health_ms:7.1f} |"
    )


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(t, value)`` points (0 for fewer than two)."""
    if len(points) < 2:
        return 0.0
    ts = [t for t, _ in points]
    vs = [v for _, v in points]
    mean_t, mean_v = statistics.fmean(ts), statistics.fmean(vs)
    den = sum((t - mean_t) ** 2 for t in ts)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / den if den else 0.0


def judge(samples: list[Sample], warmup: float, rate: float, stall_max: float) -> list[str]:
    """What grew without bound (empty: nothing); the rule is the module docstring's."""
    kept = [s for s in samples if s.t >= warmup]
    if len(kept) < 6:
        return [f"too few samples after the warm-up ({len(kept)}; need 6): run longer or sample more often"]
    third = len(kept) // 3
    first, last = kept[:third], kept[-third:]
    failures = []
    for name, absolute, relative in LEVELS:
        if name == "queued":
            absolute = max(absolute, rate * stall_max)  # what one stalled subscription may pin
        first_max = max(getattr(s, name) for s in first)
        last_max = max(getattr(s, name) for s in last)
        allowed = first_max + absolute + relative * first_max
        rising = slope([(s.t, getattr(s, name)) for s in last])
        print(
            f"rule: {name}: first third's max {first_max:.1f}, last third's max {last_max:.1f} "
            f"(allowed {allowed:.1f}), last third's slope {rising:+.4f}/s"
        )
        if last_max > allowed and rising > 0:
            failures.append(
                f"{name}: last third's max {last_max:.1f} > first third's max {first_max:.1f} + tolerance "
                f"(allowed {allowed:.1f}) and still rising ({rising:+.3f}/s)"
            )
    # shed records: a rate, from consecutive samples
    rates = [(b.t, (b.dropped - a.dropped) / (b.t - a.t)) for a, b in zip(kept, kept[1:], strict=False) if b.t > a.t]
    if len(rates) >= 3:
        cut = len(rates) - len(rates) // 3
        before, tail = rates[:cut], rates[cut:]
        before_rate = (kept[cut].dropped - kept[0].dropped) / max(kept[cut].t - kept[0].t, 1e-9)
        tail_rate = statistics.fmean(r for _, r in tail)
        allowed = 1.5 * before_rate + rate
        print(f"rule: dropped: earlier rate {before_rate:.0f}/s, last third's rate {tail_rate:.0f}/s (allowed {allowed:.0f}/s)")
        if tail_rate > allowed and slope(tail) > 0 and before:
            failures.append(
                f"dropped: last third's rate {tail_rate:.0f}/s > 1.5 x earlier rate {before_rate:.0f}/s + {rate:.0f}/s "
                "and still rising"
            )
    return failures


def _stop(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--rate", type=float, default=1000.0, help="generator quotes/s (default 1000)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds left out of the rule (default 10%% of --duration)")
    parser.add_argument("--ws-clients", type=int, default=4, help="WebSocket client threads (default 4)")
    parser.add_argument("--tcp-clients", type=int, default=4, help="TCP sink client threads (default 4)")
    parser.add_argument(
        "--stall-max", type=float, default=None, help="longest stall of a stalling client, s (default --duration / 6, at most 60)"
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="configuration to copy (default config.toml)")
    parser.add_argument("--seed", type=int, default=1, help="client behaviour seed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (config, data, server log)")
    args = parser.parse_args(argv)
    # SIGTERM (and SIGINT, which a background job may have ignored) stop the run with the usual clean-up
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    warmup = args.duration * 0.1 if args.warmup is None else args.warmup
    stall_max = min(60.0, args.duration / 6) if args.stall_max is None else args.stall_max

    workdir = Path(tempfile.mkdtemp(prefix="gauss-soak-"))
    text, ports = rewrite_ports(args.config.read_text(encoding="utf-8"))
    config = workdir / "config.toml"
    config.write_text(text, encoding="utf-8")
    source_port, api_port, sink_port = ports[9100], ports[9200], ports[9300]
    log_path = workdir / "server.log"
    server_log = log_path.open("wb")
    generator_log = (workdir / "generator.log").open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [*_script("gauss-serve"), "--config", str(config)], stdout=server_log, stderr=subprocess.STDOUT, env=env,
        cwd=workdir,
    )  # fmt: skip
    generator = None
    clients = None
    failures: list[str] = []
    samples: list[Sample] = []
    print(f"soak: gauss-serve pid {server.pid} on {config} (ports {ports}), {args.duration:.0f} s at {args.rate:.0f} quotes/s")
    try:
        deadline = time.monotonic() + 60
        while "API on" not in log_path.read_text(errors="replace"):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gauss-serve did not start:\n" + log_path.read_text(errors="replace"))
            time.sleep(0.1)
        generator = subprocess.Popen(
            [*_script("gauss-quotes-gen"), "auto", "--rate", str(args.rate), "--target", f"127.0.0.1:{source_port}"],
            stdout=subprocess.DEVNULL, stderr=generator_log, env=env,
        )  # fmt: skip
        clients = Clients(
            api_port, sink_port, ws=args.ws_clients, tcp=args.tcp_clients, stall_max=stall_max, seed=args.seed
        )
        clients.start()
        print("| " + " | ".join(COLUMNS) + " |")
        print("|" + "---:|" * len(COLUMNS))
        start = time.monotonic()
        next_sample = start
        while True:
            now = time.monotonic()
            if now - start > args.duration:
                break
            if now < next_sample:
                time.sleep(min(next_sample - now, 0.5))
                continue
            next_sample += args.interval
            if server.poll() is not None:
                failures.append(f"gauss-serve exited with status {server.returncode}")
                break
            if generator.poll() is not None:
                failures.append(f"gauss-quotes-gen exited with status {generator.returncode}")
                break
            try:
                metrics_text, _ = http_get(f"http://127.0.0.1:{api_port}/metrics")
                _, health = http_get(f"http://127.0.0.1:{api_port}/api/health")
            except OSError as exc:
                failures.append(f"the API did not answer at t={now - start:.0f} s: {exc}")
                break
            m = parse_metrics(metrics_text.decode())
            sample = Sample(
                t=time.monotonic() - start,
                rss_mib=rss_mib(server.pid),
                fds=open_fds(server.pid),
                queued=m.get("gauss_subscriber_queue_depth", 0.0),
                dropped=m.get("gauss_subscriber_dropped_records_total", 0.0)
                + m.get("gauss_source_queue_dropped_records_total", 0.0),
                ingested=m.get("gauss_source_records_total", 0.0),
                ws_open=m.get("gauss_ws_open_connections", 0.0),
                sink_clients=m.get("gauss_sink_clients", 0.0),
                health_ms=health * 1000,
            )
            if samples and sample.ingested <= samples[-1].ingested:
                failures.append(f"no quote ingested between t={samples[-1].t:.0f} s and t={sample.t:.0f} s")
            samples.append(sample)
            print(row(sample), flush=True)
    except RuntimeError as exc:
        failures.append(str(exc))
    except KeyboardInterrupt as exc:
        failures.append(f"interrupted ({exc}) after {len(samples)} samples")
    finally:
        if clients is not None:
            clients.join()
        if generator is not None and generator.poll() is None:
            generator.send_signal(signal.SIGINT)
            try:
                generator.wait(timeout=10)
            except subprocess.TimeoutExpired:
                generator.kill()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                failures.append("gauss-serve did not stop within 30 s of SIGTERM")
        server_log.close()
        generator_log.close()

    if clients is not None:
        stats = clients.stats
        print("clients: cycles " + ", ".join(f"{k} {v}" for k, v in sorted(stats.cycles.items())))
        print("clients: bytes received " + ", ".join(f"{k} {v}" for k, v in sorted(stats.received.items())))
        if stats.errors:
            print("clients: errors " + ", ".join(f"{k} {v}" for k, v in sorted(stats.errors.items())))
        if not any(stats.received.get(f"{kind} read") for kind in ("ws", "tcp")):
            failures.append("no reading WebSocket or TCP client received anything")
    if samples:
        failures.extend(judge(samples, warmup, args.rate, stall_max))
    tracebacks = log_path.read_text(errors="replace").count("Traceback")
    print(f"server log: {log_path if args.keep else 'removed'}; {tracebacks} tracebacks")
    if tracebacks:
        failures.append(f"the server logged {tracebacks} tracebacks (--keep keeps its log)")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        for failure in failures:
            print(f"FAIL: {failure}")
        return 1
    print(f"soak: OK, nothing grew without bound over {len(samples)} samples (warm-up {warmup:.0f} s left out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
