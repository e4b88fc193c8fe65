"""Scaling benchmark (issue 13): three Markdown tables, each figure beside a baseline of the same run.

1. Ingest: quotes/s of Gauss on ``bench/ingest.toml`` with 10, 1,000 and 100,000
   distinct symbols (N quotes, round-robin), beside the naive asyncio +
   ``json.loads`` server of ``bench_ingest.py`` on the same quotes.
2. Stalled WebSocket subscribers: quotes/s on ``bench/ingest.toml`` plus an
   ``[api]`` with 0, 100 and 1,000 clients subscribed to ``quotes.raw`` that
   never read after the ``subscribed`` answer, each beside a run with 0
   subscribers made right before it (ratio column).
3. REST: p50/p99 of ``GET /api/topics/quotes.raw?limit=L`` for L = 100, 10,000
   and 100,000 on a topic holding 120,000 quotes, beside the bare-msgspec
   baseline of ``bench_api.py`` (same storage query, one msgspec call).

Servers run in subprocesses (gevent, as ``gauss-serve``), as in ``bench_ingest.py``
and ``bench_api.py``, whose functions this script reuses. The machine has 2 cores
shared with other work: compare a row's figure with its own baseline, not runs.
One status line per measurement goes to stderr, the tables to stdout.

    .venv/bin/python bench/bench_scaling.py [--quick] [-n 300000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_api  # noqa: E402
import bench_ingest  # noqa: E402

SYMBOL_COUNTS = (10, 1_000, 100_000)
SUBSCRIBER_COUNTS = (0, 100, 1_000)
REST_LIMITS = (100, 10_000, 100_000)
REST_FILL = 120_000  # quotes in quotes.raw for the REST queries (MAX limit is 100,000)
TOPIC = "quotes.raw"


def status(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def symbols(count: int) -> list[str]:
    """``count`` symbols of 6 characters, as long as bench_ingest's (the lines stay 111 bytes)."""
    if count == len(bench_ingest.SYMBOLS):
        return list(bench_ingest.SYMBOLS)
    return [f"S{i:05d}" for i in range(count)]


def raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def api_config(out: Path) -> Path:
    """bench/ingest.toml plus an [api] on a free port (bench_ingest.start_gauss gives every port a free one)."""
    from gauss.http.options import ApiOptions

    text = (HERE / "ingest.toml").read_text()
    text += f'\n[api]\nbind = "127.0.0.1"\nport = {bench_ingest.free_port()}\n'
    if ApiOptions().max_connections < max(SUBSCRIBER_COUNTS) + 16:
        text += f"max_connections = {max(SUBSCRIBER_COUNTS) + 64}\n"
    out.write_text(text)
    return out


def ws_subscribers(topic: Any) -> list[Any]:
    return [s for s in topic.subscriptions if s.kind == "ws"]


def pct(values: list[float], p: float) -> float:
    return bench_api.pct(values, p)


# --- subprocess: stalled WebSocket clients --------------------------------------------------


def stalled_clients(host: str, port: int, count: int) -> None:
    """Connect ``count`` WebSocket clients, subscribe each to quotes.raw, then never read again."""
    raise_nofile(count + 256)
    socks = []
    for _ in range(count):
        sock = bench_api._ws_connect(host, port)
        bench_api._ws_send(sock, json.dumps({"action": "subscribe", "topic": TOPIC}))
        answer = next(bench_api._ws_frames(sock))  # the "subscribed" answer, before any quote is sent
        if b'"subscribed"' not in answer:
            raise RuntimeError(f"subscribe refused: {answer[:200]!r}")
        socks.append(sock)
    print("READY", flush=True)
    time.sleep(900)  # killed by the server process long before


# --- subprocess: Gauss, optionally with stalled WebSocket subscribers ---------------------------


def measure(hub: Any, path: Path, n: int, max_seconds: float) -> dict[str, Any]:
    """bench_ingest.run_gauss's measurement, cut at ``max_seconds`` from the connection.

    ``rate``: quotes in quotes.raw at the N-th quote (or at the cut) over the time since the
    connection; ``late_rate``: the same over the last three quarters of the run (from the
    first moment a quarter of N was in), which leaves out what happens once at the start
    (stalled clients filling their socket buffers); ``with_ohlc``: N over the time until the
    OHLC processor was idle too (None if it was not by the cut); ``cut``: the run was cut
    (the caller then exits without stopping the hub, whose queues could take minutes to drain).
    """
    import gevent

    topic = hub.topic(TOPIC)
    source = hub.sources[0]
    gevent.sleep(0.1)
    sender = bench_ingest.blast(source.address[1], path)
    try:
        deadline = time.perf_counter() + max_seconds
        quarter: tuple[float, int] | None = None
        while topic.last_seq < n and time.perf_counter() < deadline:
            gevent.sleep(0.002)
            if quarter is None and topic.last_seq >= n // 4:
                quarter = (time.perf_counter(), topic.last_seq)
        stored = topic.last_seq
        started = source.connected_at
        ended = time.perf_counter()
        elapsed = ended - started
        late_rate = (stored - quarter[1]) / (ended - quarter[0]) if quarter and stored > quarter[1] else None
        while not all(p.idle for p in hub.processors) and time.perf_counter() < deadline:
            gevent.sleep(0.01)
        drained = all(p.idle for p in hub.processors)
        with_ohlc = stored / (time.perf_counter() - started) if drained else None
        return {
            "rate": stored / elapsed, "late_rate": late_rate, "with_ohlc": with_ohlc, "stored": stored,
            "cut": stored < n or not drained,
        }  # fmt: skip
    finally:
        if sender.poll() is None:
            sender.kill()
        sender.wait()


def gauss_server(
    config: Path, quotes: Path, workdir: Path, n: int, subscribers: int, max_seconds: float
) -> dict[str, Any]:
    import gevent

    from gauss.metrics import current

    hub = bench_ingest.start_gauss(config, workdir)
    clients = None
    result: dict[str, Any] | None = None
    try:
        topic = hub.topic(TOPIC)
        if subscribers:
            clients = bench_ingest.subscribe_stalled(hub, subscribers)
        seen: dict[str, Any] = {"min_subscribed": subscribers, "shed": 0, "taken": 0.0}
        shed = hub.metrics.dropped(TOPIC, "ws")
        started = time.perf_counter()

        def watch() -> None:
            """Until the N-th quote is stored: how many stayed subscribed, what they shed, what they took."""
            subs = ws_subscribers(topic)
            while topic.last_seq < n and time.perf_counter() - started < max_seconds:
                subs = ws_subscribers(topic)  # (from the N-th quote on, the hub may be stopping)
                seen["min_subscribed"] = min(seen["min_subscribed"], len(subs))
                gevent.sleep(0.005)
            seen["shed"] = int(current(shed))
            if subs:  # records each took off its queue (into its socket's buffers), on average
                offered = sum(topic.last_seq - s.start_seq for s in subs)
                seen["taken"] = (offered - seen["shed"] - sum(s.depth for s in subs)) / len(subs)
            if clients is not None:
                clients.kill()  # so that stopping the hub does not wait on their full sockets

        watcher = gevent.spawn(watch)
        result = measure(hub, quotes, n, max_seconds)
        watcher.join(timeout=5)
        result.update(seen)
        return result
    finally:
        if clients is not None:
            clients.kill()
            clients.wait()
        if not (result or {}).get("cut"):
            hub.stop(timeout=30)


# --- subprocess: Gauss with an API for REST queries --------------------------------------------


def rest_server(
    config: Path, quotes: Path, workdir: Path, fill: int, plan: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    import gevent

    hub = bench_ingest.start_gauss(config, workdir)
    sender = None
    try:
        topic = hub.topic(TOPIC)
        sender = bench_ingest.blast(hub.sources[0].address[1], quotes)
        while topic.last_seq < fill:
            gevent.sleep(0.01)
        while not all(p.idle for p in hub.processors):
            gevent.sleep(0.01)
        host, port = hub._api_server.address
        out = []
        for limit, n in plan:
            gauss, base, floor = bench_api.rest_latency(hub, f"http://{host}:{port}", TOPIC, limit, n, nodelay=True)
            row = {
                "limit": limit, "n": n, "bytes": gauss["bytes"], "held": topic.last_seq,
                "p50": pct(gauss["ms"], 0.5), "p99": pct(gauss["ms"], 0.99),
                "base_p50": pct(base["ms"], 0.5), "base_p99": pct(base["ms"], 0.99),
                "floor_p50": pct(floor["ms"], 0.5),
            }  # fmt: skip
            status(
                f"REST limit={limit:,} ({n} requests): gauss p50/p99 {row['p50']:.1f}/{row['p99']:.1f} ms, "
                f"baseline {row['base_p50']:.1f}/{row['base_p99']:.1f} ms, floor p50 {row['floor_p50']:.1f} ms"
            )
            out.append(row)
        return out
    finally:
        hub.stop(timeout=10)
        if sender is not None:
            sender.kill()
            sender.wait()


# --- the orchestrating process ---------------------------------------------------------------


def run_json(args: list[str], timeout: float) -> Any:
    """Run this script in a server mode; its last stdout line is the JSON result."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed with status {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def descendants(root: int) -> list[int]:
    """The pids of every live process below ``root`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found


def kill_descendants() -> None:
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_gauss(
    config: Path, quotes: Path, n: int, workdir: Path, subscribers: int, max_seconds: float
) -> dict[str, Any]:
    """One Gauss run in a subprocess (gauss_server); adds its CPU time a stored quote (it and what it waited for)."""
    workdir.mkdir()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = usage.ru_utime + usage.ru_stime
    args = ["--gauss-server", str(config), "--quotes", str(quotes), "--workdir", str(workdir), "-n", str(n)]
    result: dict[str, Any] = run_json(
        [*args, "--subscribers", str(subscribers), "--max-seconds", str(max_seconds)], timeout=900
    )
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_us"] = (usage.ru_utime + usage.ru_stime - cpu_before) / max(1, result["stored"]) * 1e6
    subprocess.run(["rm", "-rf", str(workdir)], check=False)  # 100,000 symbols leave 8 candle files each
    return result


def rate_cell(r: dict[str, Any], n: int) -> str:
    return f"{r['rate']:,.0f}" + (f" ({r['stored']:,} of {n:,} in the time allowed)" if r["stored"] < n else "")


def drain_cell(r: dict[str, Any], max_seconds: float) -> str:
    return f"{r['with_ohlc']:,.0f}" if r["with_ohlc"] is not None else f"not drained in {max_seconds:g} s"


def table_ingest(work: Path, n: int, repeats: int, max_seconds: float) -> list[str]:
    rows = [
        "| symbols | Gauss quotes/s | incl. OHLC drain | Gauss CPU us/quote | naive quotes/s | Gauss / naive |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for count in SYMBOL_COUNTS:
        quotes = work / f"quotes-{count}.jsonl"
        bench_ingest.generate(quotes, n, symbols(count))
        best_gauss: dict[str, Any] = {}
        best_naive: dict[str, Any] = {}
        for r in range(repeats):
            naive = bench_ingest.run_receiver("--naive-server", quotes, n)
            status(f"ingest {count:,} symbols, run {r + 1}/{repeats}: naive {naive['rate']:,.0f} quotes/s")
            gauss = run_gauss(HERE / "ingest.toml", quotes, n, work / f"ingest-{count}-{r}", 0, max_seconds)
            status(
                f"ingest {count:,} symbols, run {r + 1}/{repeats}: gauss {rate_cell(gauss, n)} quotes/s, "
                f"incl. OHLC drain {drain_cell(gauss, max_seconds)}, {gauss['cpu_us']:.2f} CPU us/quote"
            )
            if gauss["rate"] > best_gauss.get("rate", -1):
                best_gauss = gauss
            if naive["rate"] > best_naive.get("rate", -1):
                best_naive = naive
            if gauss["stored"] < n:
                break  # bounded by the OHLC drain: another run says nothing new and costs minutes (files to delete)
        rows.append(
            f"| {count:,} | {rate_cell(best_gauss, n)} | {drain_cell(best_gauss, max_seconds)} | {best_gauss['cpu_us']:.2f} "
            f"| {best_naive['rate']:,.0f} | {best_gauss['rate'] / best_naive['rate']:.2f}x |"
        )
        quotes.unlink()
    return rows


def table_subscribers(work: Path, n: int, repeats: int, max_seconds: float, counts: tuple[int, ...]) -> list[str]:
    config = api_config(work / "ingest-api.toml")
    quotes = work / "quotes-ws.jsonl"
    bench_ingest.generate(quotes, n)
    rows = [
        "| stalled WS subscribers | quotes/s | same run, 0 subscribers | ratio | ratio of each pair "
        "| last three quarters: ratio | still subscribed | records shed | taken per client |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    runs = 0

    def one(subscribers: int) -> dict[str, Any]:
        nonlocal runs
        runs += 1
        return run_gauss(config, quotes, n, work / f"ws-{runs}", subscribers, max_seconds)

    for subscribers in counts:
        got_runs: list[dict[str, Any]] = []
        zero_runs: list[dict[str, Any]] = []
        for r in range(repeats):
            zero = one(0)
            status(
                f"ws {subscribers:,} subscribers, run {r + 1}/{repeats}: baseline (0 subscribers) {rate_cell(zero, n)} quotes/s"
            )
            got = one(subscribers)
            status(
                f"ws {subscribers:,} subscribers, run {r + 1}/{repeats}: {rate_cell(got, n)} quotes/s "
                f"({got['min_subscribed']:,} still subscribed, {got['shed']:,} records shed, {got['taken']:,.0f} taken per client)"
            )
            got_runs.append(got)
            zero_runs.append(zero)
        best = max(got_runs, key=lambda r: r["rate"])
        best_zero = max(zero_runs, key=lambda r: r["rate"])
        pairs = ", ".join(f"{g['rate'] / z['rate']:.2f}" for g, z in zip(got_runs, zero_runs, strict=True))
        late = max(r["late_rate"] or 0.0 for r in got_runs) / max(r["late_rate"] or 1.0 for r in zero_runs)
        rows.append(
            f"| {subscribers:,} | {rate_cell(best, n)} | {rate_cell(best_zero, n)} | {best['rate'] / best_zero['rate']:.2f} "
            f"| {pairs} | {late:.2f} | {best['min_subscribed']:,} of {subscribers:,} | {best['shed']:,} | {best['taken']:,.0f} |"
        )
    quotes.unlink()
    return rows


def table_rest(work: Path, plan: list[tuple[int, int]]) -> list[str]:
    config = api_config(work / "rest-api.toml")
    quotes = work / "quotes-rest.jsonl"
    bench_ingest.generate(quotes, REST_FILL)
    (work / "rest").mkdir()
    args = [
        "--rest-server",
        str(config),
        "--quotes",
        str(quotes),
        "--workdir",
        str(work / "rest"),
        "-n",
        str(REST_FILL),
    ]
    results = run_json([*args, "--plan", json.dumps(plan)], timeout=900)
    rows = [
        "| limit (records) | answer | requests | Gauss p50 / p99 ms | baseline p50 / p99 ms | Gauss / baseline p50 "
        "| floor p50 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        size = f"{r['bytes'] / 2**20:.1f} MiB" if r["bytes"] >= 2**20 else f"{r['bytes'] / 1024:.0f} KiB"
        rows.append(
            f"| {r['limit']:,} | {size} | {r['n']} | {r['p50']:.1f} / {r['p99']:.1f} | {r['base_p50']:.1f} / {r['base_p99']:.1f} "
            f"| {r['p50'] / r['base_p50']:.2f}x | {r['floor_p50']:.1f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 50,000, one repeat, fewer REST requests (~1 min)")
    parser.add_argument("-n", type=int, help="quotes a run for tables 1 and 2 (default 300,000; --quick 50,000)")
    parser.add_argument(
        "--repeats", type=int, help="runs per figure of tables 1 and 2, best kept (default 2; --quick 1)"
    )
    parser.add_argument("--only", choices=["ingest", "ws", "rest"], help="one table only")
    parser.add_argument("--stalled-clients", nargs=3, metavar=("HOST", "PORT", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--gauss-server", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--rest-server", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--quotes", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--ws-counts",
        type=lambda text: tuple(int(c) for c in text.split(",")),
        default=SUBSCRIBER_COUNTS,
        help="stalled subscriber counts of table 2 (default 0,100,1000)",
    )
    parser.add_argument(
        "--max-seconds", type=float, help="cut a Gauss ingest run after this long (default 40; --quick 8)"
    )
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_nofile(max(args.ws_counts) * 2 + 1024)
    if args.stalled_clients:
        host, port, count = args.stalled_clients
        stalled_clients(host, int(port), int(count))
        return
    if args.gauss_server or args.rest_server:
        from gevent import monkey

        monkey.patch_all()
        import logging

        logging.basicConfig(level=logging.WARNING)
        if args.gauss_server:
            config, quotes, workdir = Path(args.gauss_server), Path(args.quotes), Path(args.workdir)
            result: Any = gauss_server(config, quotes, workdir, args.n, args.subscribers, args.max_seconds)
        else:
            plan = [tuple(p) for p in json.loads(args.plan)]
            result = rest_server(Path(args.rest_server), Path(args.quotes), Path(args.workdir), args.n, plan)  # type: ignore[arg-type]
        print(json.dumps(result), flush=True)
        if args.gauss_server and result["cut"]:
            os._exit(0)  # a cut run's hub may hold minutes of queued work: no orderly stop
        return

    import gauss

    n = args.n or (50_000 if args.quick else 300_000)
    repeats = args.repeats or (1 if args.quick else 2)
    max_seconds = args.max_seconds or (8.0 if args.quick else 40.0)
    requests = (40, 20, 8) if args.quick else (200, 100, 30)
    plan = list(zip(REST_LIMITS, requests, strict=True))
    started = time.perf_counter()
    tables: list[tuple[str, list[str]]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="gauss-scaling-") as tmp:
            work = Path(tmp)
            status(
                f"N = {n:,}, {repeats} run(s) a figure, kernels: {gauss.CORE}, load average {os.getloadavg()[0]:.1f}"
            )
            if args.only in (None, "ingest"):
                title = (
                    f"Ingest, bench/ingest.toml, {n:,} quotes, best of {repeats}; baseline: naive asyncio + json.loads"
                )
                tables.append((title, table_ingest(work, n, repeats, max_seconds)))
            if args.only in (None, "ws"):
                title = (
                    f"Ingest, bench/ingest.toml + [api], {n:,} quotes, stalled WebSocket subscribers of quotes.raw, "
                    f"best of {repeats}; baseline: 0 subscribers, run right before"
                )
                tables.append((title, table_subscribers(work, n, repeats, max_seconds, args.ws_counts)))
            if args.only in (None, "rest"):
                title = f"REST GET /api/topics/quotes.raw?limit=L, topic holding {REST_FILL:,} quotes; baseline: bare msgspec WSGI app, TCP_NODELAY"
                tables.append((title, table_rest(work, plan)))
    finally:
        kill_descendants()
    status(f"done in {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f}")
    print(f"kernels: {gauss.CORE}; 2-core shared machine, noisy figures: compare each row with its baseline")
    for title, rows in tables:
        print(f"\n{title}\n")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
