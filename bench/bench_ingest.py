"""Ingest benchmark: quotes/s into ``quotes.raw``, peak RSS and bytes per retained quote.

Runs, in one invocation and against the same pre-generated quotes:

1. Gauss on ``bench/ingest.toml`` (source + quotes.raw + OHLC on 8 timeframes with
   file storage), in this process (gevent-patched, as ``gauss-serve`` is);
2. the raw loopback TCP ceiling, in a subprocess: a receiver that only counts the
   newlines it reads (what no server on this machine can beat);
3. a naive asyncio server as the baseline, in a subprocess: reads lines,
   ``json.loads`` each, appends it to a list, updates per-symbol OHLC dicts for
   the same 8 timeframes;
4. Gauss on the full default ``config.toml`` (adds the fan-out sink on 9300,
   with no client, the loopbacks and the tick log of ``quotes.raw``), and then whether
   each loopback topic holds every quote (waited for up to 30 s);
5. with ``--fsync`` (or ``--only fsync``): the default ``config.toml`` without its
   tick log (as before issue 10) and with it under each fsync policy, ``never``,
   ``interval`` (the default) and ``always``;
6. with ``--ws-stalled COUNT`` (or ``--only ws``): the default ``config.toml`` with
   COUNT WebSocket clients (a separate process) subscribed to ``quotes.raw`` that
   never read, in ``--pairs`` runs each right after a run without them; the
   ratio of each pair, and of the best against the best.

Quotes are sent by a separate process over one connection. The time runs from
the connection until the N-th quote is in ``quotes.raw`` (Gauss) or processed
(baseline). The machine has 2 cores shared with other work: figures are noisy,
compare the ratio measured in the same run. "CPU us/quote" is the server process
and the sender together; "server CPU us/q" the server alone, every thread, until
the last loopback topic holds every quote (steadier than wall time).

    .venv/bin/python bench/bench_ingest.py [-n 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from gauss.hub import Hub

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TIMEFRAMES_MS = [1_000, 5_000, 60_000, 300_000, 900_000, 3_600_000, 14_400_000, 86_400_000]
SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCHF", "USDCAD", "NZDUSD", "EURGBP", "EURJPY", "BTCUSD"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """VmHWM: unlike ru_maxrss it is not inherited across fork + exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def generate(path: Path, n: int, symbols: Sequence[str] = SYMBOLS) -> None:
    """N quotes as JSON lines, 1 ms apart, ending now (none in the future), round-robin over ``symbols``."""
    start = int(time.time() * 1000) - n - 1000
    with path.open("wb") as f:
        chunk = []
        for i in range(n):
            mid = 1.0 + ((i * 7919) % 2000) / 10_000
            chunk.append(
                '{"symbol":"%s","bid":%.5f,"ask":%.5f,"bid_size":1000000.0,"ask_size":500000.0,"ts_ms":%d}\n'
                % (symbols[i % len(symbols)], mid - 0.00005, mid + 0.00005, start + i)
            )
            if len(chunk) == 10_000:
                f.write("".join(chunk).encode())
                chunk.clear()
        f.write("".join(chunk).encode())


def blast(port: int, path: Path) -> subprocess.Popen[bytes]:
    """Send the file over one connection from a separate process."""
    code = (
        "import socket,sys;d=open(sys.argv[2],'rb').read();"
        "s=socket.create_connection(('127.0.0.1',int(sys.argv[1])));s.sendall(d);s.shutdown(socket.SHUT_WR);"
        "s.recv(1);s.close()"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(port), str(path)])


# --- the raw TCP ceiling -------------------------------------------------------------------


def ceiling_server(port: int, n: int) -> None:
    """Count newlines off one connection until N: the loopback's bound for any line server here."""
    with socket.create_server(("127.0.0.1", port)) as server:
        print("ready", flush=True)
        conn, _ = server.accept()
        with conn:
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            lines = 0
            started = time.perf_counter()
            while lines < n:
                got = conn.recv_into(buf)
                if not got:
                    break
                lines += view[:got].tobytes().count(b"\n")
            elapsed = time.perf_counter() - started
    print(json.dumps({"rate": lines / elapsed, "peak": peak_rss_bytes(), "per_quote": 0.0}), flush=True)


# --- the naive baseline --------------------------------------------------------------------


def naive_server(port: int, n: int) -> None:
    import asyncio

    quotes: list[dict] = []
    candles: dict[tuple[str, int], dict[int, list[float]]] = {}
    before = rss_bytes()
    result: dict[str, float] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.perf_counter()
        while len(quotes) < n:
            line = await reader.readline()
            if not line:
                break
            q = json.loads(line)
            quotes.append(q)
            mid = (q["bid"] + q["ask"]) / 2
            ts = q["ts_ms"]
            for width in TIMEFRAMES_MS:
                buckets = candles.setdefault((q["symbol"], width), {})
                start = ts - ts % width
                c = buckets.get(start)
                if c is None:
                    buckets[start] = [mid, mid, mid, mid, 1]
                else:
                    c[1] = max(c[1], mid)
                    c[2] = min(c[2], mid)
                    c[3] = mid
                    c[4] += 1
        elapsed = time.perf_counter() - started
        result.update(rate=len(quotes) / elapsed, peak=peak_rss_bytes(), per_quote=(rss_bytes() - before) / len(quotes))
        writer.close()
        done.set()

    async def main() -> None:
        global done
        server = await asyncio.start_server(handle, "127.0.0.1", port, limit=1 << 20)
        print("ready", flush=True)
        async with server:
            await done.wait()

    global done
    done = asyncio.Event()
    asyncio.run(main())
    print(json.dumps(result), flush=True)


def run_receiver(role: str, path: Path, n: int) -> dict[str, float]:
    """Run ``--naive-server`` or ``--ceiling-server`` in a subprocess and blast the quotes at it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, role, str(port), "-n", str(n)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    sender = blast(port, path)
    out = proc.stdout.readline()
    proc.wait(timeout=600)
    sender.wait(timeout=60)
    return json.loads(out)  # type: ignore[no-any-return]


# --- Gauss -----------------------------------------------------------------------------------


def run_gauss(config_file: Path, path: Path, n: int, workdir: Path, stalled: int = 0) -> dict[str, float]:
    import gevent

    hub = start_gauss(config_file, workdir)
    topic = hub.topic("quotes.raw")
    source = hub.sources[0]
    clients = subscribe_stalled(hub, stalled) if stalled else None
    gevent.sleep(0.1)
    before = rss_bytes()
    cpu_before = _own_cpu()
    sender = blast(source.address[1], path)
    while topic.last_seq < n:
        gevent.sleep(0.002)
    started = source.connected_at
    elapsed = time.perf_counter() - started
    per_quote = (rss_bytes() - before) / n
    while not all(p.idle for p in hub.processors):
        gevent.sleep(0.01)
    drained = time.perf_counter() - started
    # The loopbacks (the default config's sinks read back by its other sources): each topic must hold every quote.
    loopbacks = [hub.topic(s.topic.name) for s in hub.sources[1:]]
    deadline = time.perf_counter() + 30
    while any(t.last_seq < n for t in loopbacks) and time.perf_counter() < deadline:
        gevent.sleep(0.01)
    looped = time.perf_counter() - started
    server_cpu = _own_cpu() - cpu_before
    held = {t.name: t.last_seq for t in loopbacks}
    if clients is not None:
        clients.kill()  # so that stopping the hub does not wait on their full sockets
        clients.wait()
    hub.stop(timeout=30)
    sender.wait(timeout=60)
    result = {"rate": n / elapsed, "peak": peak_rss_bytes(), "per_quote": per_quote, "with_ohlc": n / drained, "server_cpu_us": server_cpu / n * 1e6}
    if loopbacks:
        result.update(loopbacks=held, with_loopbacks=n / looped if min(held.values()) >= n else 0.0)
    return result


def subscribe_stalled(hub: Hub, count: int) -> subprocess.Popen[bytes]:
    """``count`` WebSocket clients of quotes.raw in a subprocess that never read after subscribing (bench_scaling's)."""
    import gevent
    import gevent.subprocess

    host, port = hub._api_server.address
    clients = gevent.subprocess.Popen(
        [sys.executable, str(HERE / "bench_scaling.py"), "--stalled-clients", host, str(port), str(count)], stdout=subprocess.PIPE
    )
    assert clients.stdout is not None
    line = clients.stdout.readline()
    if not line.startswith(b"READY"):
        raise RuntimeError(f"stalled clients did not start: {line!r}")
    topic = hub.topic("quotes.raw")
    deadline = time.monotonic() + 60
    while sum(s.kind == "ws" for s in topic.subscriptions) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not all {count} stalled clients subscribed")
        gevent.sleep(0.05)
    return clients


def start_gauss(config_file: Path, workdir: Path) -> Hub:
    """A started hub on ``config_file`` (every port replaced by a free one), GC tuned as by ``gauss-serve``."""
    from gauss.cli.serve import tune_gc
    from gauss.hub import Hub

    text = config_file.read_text()
    ports = {}

    def repl(match: re.Match[str]) -> str:  # the same port twice (a loopback's sink and client) stays paired
        if match.group(1) not in ports:
            ports[match.group(1)] = free_port()
        return f"port = {ports[match.group(1)]}"

    text = re.sub(r"port = (\d+)", repl, text)
    text = text.replace("status_interval = 10.0", "status_interval = 0")
    config = workdir / config_file.name
    config.write_text(text)
    hub = Hub.from_config(config)
    hub.start()
    tune_gc()  # as gauss-serve does after start-up
    return hub


def tick_log_variant(config_file: Path, out: Path, policy: str | None) -> Path:
    """``config_file`` with the tick log's fsync set to ``policy``, or without the tick log (None)."""
    text = config_file.read_text()
    journal = re.compile(r'^journal = \{ type = "raw-file".*$', re.M)
    assert journal.search(text), f"{config_file} has no tick log to vary"
    if policy is None:
        text = journal.sub("", text)
    else:
        text = journal.sub(lambda m: re.sub(r'fsync = "\w+"', f'fsync = "{policy}"', m.group(0)), text)
    out.write_text(text)
    return out


def run_gauss_process(config_file: Path, path: Path, n: int, workdir: Path, stalled: int = 0) -> dict[str, float]:
    workdir.mkdir()
    cpu_before = _children_cpu()
    out = subprocess.run(
        [sys.executable, __file__, "--gauss-server", str(config_file), "--quotes", str(path), "--workdir", str(workdir), "-n", str(n),
         "--ws-stalled", str(stalled)],
        stdout=subprocess.PIPE, text=True, check=True, timeout=1800,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    # NOTE: CPU time (the server process and the sender it waits for) is steadier than wall time on a shared machine.
    result["cpu_us"] = (_children_cpu() - cpu_before) / n * 1e6
    return result


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _own_cpu() -> float:
    """CPU seconds of this process, every thread (the tick log's fsyncs run in a thread pool)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="quotes to send (default 1,000,000)")
    parser.add_argument("--naive-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--ceiling-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--gauss-server", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--quotes", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["ingest", "default", "naive", "ceiling", "fsync", "ws"], help="run one part only")
    parser.add_argument("--fsync", action="store_true", help="also run the default config per tick-log fsync policy")
    parser.add_argument(
        "--ws-stalled", type=int, default=0, metavar="COUNT",
        help="also run the default config with COUNT stalled WebSocket subscribers (--only ws: 200)",
    )  # fmt: skip
    parser.add_argument("--pairs", type=int, default=3, help="runs with and without the stalled subscribers (default 3)")
    args = parser.parse_args()
    if args.naive_server:
        naive_server(args.naive_server, args.n)
        return
    if args.ceiling_server:
        ceiling_server(args.ceiling_server, args.n)
        return
    if args.gauss_server:
        from gevent import monkey

        monkey.patch_all()
        import logging

        logging.basicConfig(level=logging.WARNING)
        result = run_gauss(Path(args.gauss_server), Path(args.quotes), args.n, Path(args.workdir), args.ws_stalled)
        print(json.dumps(result), flush=True)
        return
    import gauss

    stalled = args.ws_stalled or (200 if args.only == "ws" else 0)
    pairs: list[tuple[dict[str, float], dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="gauss-bench-") as tmp:
        work = Path(tmp)
        quotes = work / "quotes.jsonl"
        generate(quotes, args.n)
        print(f"{args.n:,} quotes, {quotes.stat().st_size / args.n:.0f} bytes each, kernels: {gauss.CORE}")
        rows = []
        if args.only in (None, "ceiling"):
            rows.append(("raw TCP ceiling (count lines)", run_receiver("--ceiling-server", quotes, args.n)))
        if args.only in (None, "naive"):
            rows.append(("naive asyncio + json.loads", run_receiver("--naive-server", quotes, args.n)))
        if args.only in (None, "ingest"):
            rows.append(("gauss bench/ingest.toml", run_gauss_process(HERE / "ingest.toml", quotes, args.n, work / "ingest")))
        if args.only in (None, "default"):
            rows.append(("gauss config.toml (full)", run_gauss_process(REPO / "config.toml", quotes, args.n, work / "default")))
        if args.only == "fsync" or (args.only is None and args.fsync):
            for policy in (None, "never", "interval", "always"):
                variant = tick_log_variant(REPO / "config.toml", work / f"config.{policy or 'nolog'}.toml", policy)
                label = "config.toml, no tick log" if policy is None else f"config.toml, tick log {policy}"
                rows.append((label, run_gauss_process(variant, quotes, args.n, work / f"fsync-{policy or 'nolog'}")))
        if stalled:
            for i in range(args.pairs):
                alone = run_gauss_process(REPO / "config.toml", quotes, args.n, work / f"alone-{i}")
                crowded = run_gauss_process(REPO / "config.toml", quotes, args.n, work / f"stalled-{i}", stalled)
                print(
                    f"pair {i + 1}/{args.pairs}: {alone['rate']:,.0f} quotes/s alone, {crowded['rate']:,.0f} with {stalled} stalled "
                    f"(server CPU {alone['server_cpu_us']:.2f} and {crowded['server_cpu_us']:.2f} us a quote)",
                    flush=True,
                )
                pairs.append((alone, crowded))
            rows.append(("config.toml, best alone", max((a for a, _ in pairs), key=lambda r: r["rate"])))
            rows.append((f"config.toml, {stalled} stalled WS, best", max((c for _, c in pairs), key=lambda r: r["rate"])))
    print(f"{'server':<32} {'quotes/s':>12} {'incl. OHLC drain':>17} {'peak RSS':>10} {'bytes/quote':>12} {'CPU us/quote':>13} {'server CPU us/q':>16}")
    for name, r in rows:
        drain = f"{r['with_ohlc']:>17,.0f}" if "with_ohlc" in r else f"{'-':>17}"
        cpu = f"{r['cpu_us']:>13.2f}" if "cpu_us" in r else f"{'-':>13}"
        own = f"{r['server_cpu_us']:>16.2f}" if "server_cpu_us" in r else f"{'-':>16}"
        print(f"{name:<32} {r['rate']:>12,.0f} {drain} {r['peak'] / 2**20:>8.0f}MB {r['per_quote']:>12.0f} {cpu} {own}")
    for name, r in rows:
        if "loopbacks" in r:
            held = ", ".join(f"{topic} {count:,}" for topic, count in r["loopbacks"].items())
            whole = f"all {args.n:,} in each, {r['with_loopbacks']:,.0f} quotes/s incl. the loopbacks" if r["with_loopbacks"] else "NOT every quote"
            print(f"{name}: loopback topics hold {held} ({whole})")
    if pairs:
        ratios = ", ".join(f"{c['rate'] / a['rate']:.2f}" for a, c in pairs)
        best = max(c["rate"] for _, c in pairs) / max(a["rate"] for a, _ in pairs)
        print(f"{stalled} stalled WebSocket subscribers, default config: pairs {ratios}; best against best {best:.2f}")
    by_name = dict(rows)
    base = by_name.get("naive asyncio + json.loads")
    ceiling = by_name.get("raw TCP ceiling (count lines)")
    for name in ("gauss bench/ingest.toml", "gauss config.toml (full)"):
        mine = by_name.get(name)
        if mine and base:
            print(f"{name} / naive: {mine['rate'] / base['rate']:.2f}x")
        if mine and ceiling:
            print(f"{name} / TCP ceiling: {mine['rate'] / ceiling['rate']:.1%}")


if __name__ == "__main__":
    main()
