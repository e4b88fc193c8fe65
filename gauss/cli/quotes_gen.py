"""``gauss-quotes-gen``: synthetic quotes and replays, over any valid wire format (SPEC section 3).

Modes:

- ``auto``: random-walk quotes for ``--symbols`` at ``--rate`` per second,
  for ``--duration`` seconds, ``--count`` quotes, or until stopped;
- ``manual``: reads lines such as ``EURUSD 1.0850 1.0852`` (optionally
  followed by bid and ask sizes) from standard input, sends each as a quote;
- ``generate``: writes ``--count`` quotes as JSON lines to ``--out`` or
  standard output, byte-identical for the same ``--seed`` and ``--start-ms``;
- ``file``: replays a JSON-lines file of quotes at ``--speed`` times the
  recorded pace, or as fast as the link allows (``--speed max``).

Quotes are encoded by the same :class:`~gauss.wire.WireFormat` (codec,
middleware and framing plugins, and the SPEC section 2 rule) the server
uses (``--codec``, ``--compress``, ``--framing``). The sender
reconnects, with capped back-off, whenever the server goes away.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import random
import select
import socket
import sys
import time
import zlib
from typing import IO, Any, Iterable, Iterator, Sequence

from gauss.core import TopicRecord
from gauss.errors import ConfigError
from gauss.registry import create, known
from gauss.wire import WireFormat

__all__ = [
    "main",
    "QuoteWalk",
    "QuoteWire",
    "Sender",
    "DEFAULT_SYMBOLS",
    "DEFAULT_START_MS",
    "parse_manual_line",
    "read_quotes",
]

log = logging.getLogger("gauss.quotes_gen")

DEFAULT_SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCHF", "USDCAD", "NZDUSD", "EURGBP")
DEFAULT_START_MS = 1_732_406_400_000
"""2024-11-24 00:00:00 UTC: ``generate``'s first timestamp, fixed so output is reproducible."""

# Plausible mid prices; other symbols start from a price derived from their name.
_START_MIDS = {
    "EURUSD": 1.0850,
    "GBPUSD": 1.2700,
    "USDJPY": 150.00,
    "AUDUSD": 0.6600,
    "USDCHF": 0.8800,
    "USDCAD": 1.3600,
    "NZDUSD": 0.6000,
    "EURGBP": 0.8550,
    "EURJPY": 162.50,
    "XAUUSD": 2650.0,
    "BTCUSD": 95000.0,
}
_SIZES = (100_000.0, 250_000.0, 500_000.0, 1_000_000.0, 2_000_000.0, 5_000_000.0)
_MAX_BATCH = 5000
_STATUS_INTERVAL = 1.0


class _SymbolWalk:
    __slots__ = ("symbol", "mid", "pip", "digits")

    def __init__(self, symbol: str, mid: float) -> None:
        self.symbol = symbol
        self.mid = mid
        # A pip is 0.0001 for FX prices below 10, and scales with larger prices (0.01 for USDJPY).
        magnitude = 10 ** math.floor(math.log10(mid)) if mid >= 1 else 1.0
        self.pip = magnitude / 10_000
        self.digits = max(0, -math.floor(math.log10(self.pip)) + 1)


class QuoteWalk:
    """Per-symbol random walk with a plausible spread and sizes; deterministic for a seed."""

    def __init__(self, symbols: Sequence[str], seed: int | None = None) -> None:
        if not symbols:
            raise ValueError("at least one symbol is needed")
        self._rng = random.Random(seed)
        self._walks = [_SymbolWalk(symbol, _start_mid(symbol)) for symbol in symbols]

    def quote(self, ts_ms: int) -> dict[str, Any]:
        """The next quote of a randomly chosen symbol."""
        rng = self._rng
        walk = self._walks[rng.randrange(len(self._walks))]
        step = rng.gauss(0.0, 0.6) * walk.pip
        # A floor keeps a long run from walking to zero or below.
        walk.mid = max(walk.mid + step, walk.pip * 100)
        half_spread = walk.pip * (0.3 + rng.random() * 1.2)
        digits = walk.digits
        bid = round(walk.mid - half_spread, digits)
        ask = round(walk.mid + half_spread, digits)
        if ask <= bid:
            ask = round(bid + walk.pip / 10, digits + 1)
        return {
            "symbol": walk.symbol,
            "bid": bid,
            "ask": ask,
            "bid_size": rng.choice(_SIZES),
            "ask_size": rng.choice(_SIZES),
            "ts_ms": ts_ms,
        }

    def quotes(self, count: int, ts_ms: Iterable[int]) -> list[dict[str, Any]]:
        return [self.quote(ts) for ts, _ in zip(ts_ms, range(count), strict=False)]


def _start_mid(symbol: str) -> float:
    if symbol in _START_MIDS:
        return _START_MIDS[symbol]
    # Deterministic across runs and machines (unlike hash()).
    return 0.5 + (zlib.crc32(symbol.encode()) % 10_000) / 1000.0


_FLAGS = {"codec": "--codec", "framing": "--framing", "middleware": "--compress"}


class QuoteWire:
    """Quotes (dicts) onto the wire through the server's own :class:`~gauss.wire.WireFormat`."""

    def __init__(self, wire: WireFormat) -> None:
        self.wire = wire

    @classmethod
    def build(cls, codec: str, framing: str, compress: str | None) -> QuoteWire:
        """Create the plugins; raises ``ConfigError`` naming the flag for a combination SPEC section 2 forbids."""
        middleware = [] if compress in (None, "", "none") else [compress]
        try:
            return cls(WireFormat.build(framing, codec, middleware))
        except ConfigError as exc:
            # "codec.type", "middleware[0].type", "codec" -> the flag that set it
            flag = _FLAGS.get(exc.key.split(".")[0].split("[")[0], exc.key)
            raise ConfigError(flag, exc.reason) from None

    def encode(self, quotes: Sequence[dict[str, Any]]) -> bytes:
        return self.wire.encode([TopicRecord(q["ts_ms"], q["symbol"], q) for q in quotes])


class Sender:
    """A TCP connection to the server that reconnects (capped back-off) when it breaks."""

    def __init__(self, host: str, port: int, *, max_backoff: float = 2.0, out: IO[str] | None = None) -> None:
        self.host = host
        self.port = port
        self.max_backoff = max_backoff
        self.errors = 0
        self._sock: socket.socket | None = None
        self._out = out if out is not None else sys.stderr
        self._next_notice = 0.0

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def _connect(self, deadline: float | None) -> socket.socket:
        backoff = 0.05
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=5.0)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Blocking sends: a server that applies back-pressure slows the generator down.
                sock.settimeout(None)
                return sock
            except OSError as exc:
                self.errors += 1
                now = time.monotonic()
                if now >= self._next_notice:
                    print(f"gauss-quotes-gen: cannot connect to {self.host}:{self.port}: {exc}; retrying", file=self._out)
                    self._next_notice = now + 5.0
                if deadline is not None and now + backoff > deadline:
                    raise
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def _peer_closed(self, sock: socket.socket) -> bool:
        """True when the server closed the connection (so a restart is noticed before sending)."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            data = sock.recv(4096)
        except OSError:
            return True
        # The server never talks to a source; what it sends is dropped so no buffer grows.
        return not data

    def send(self, wire: bytes, deadline: float | None = None) -> None:
        """Send one encoded batch, reconnecting (and resending the batch) until it is written."""
        while True:
            sock = self._sock
            if sock is not None and self._peer_closed(sock):
                self.close()
                sock = None
            if sock is None:
                sock = self._sock = self._connect(deadline)
            try:
                sock.sendall(wire)
                return
            except OSError as exc:
                self.errors += 1
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, None):
                    print(f"gauss-quotes-gen: send failed: {exc}; reconnecting", file=self._out)
                self.close()

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


class _Status:
    """One status line (rate, total, errors) at least every second."""

    def __init__(self, sender: Sender, out: IO[str], interval: float = _STATUS_INTERVAL) -> None:
        self.sender = sender
        self.out = out
        self.interval = interval
        self.sent = 0
        self.bad_input = 0
        self._started = time.monotonic()
        self._last_time = self._started
        self._last_sent = 0

    def add(self, count: int) -> None:
        self.sent += count
        self.maybe_print()

    def maybe_print(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_time < self.interval:
            return
        elapsed = max(now - self._last_time, 1e-9)
        rate = (self.sent - self._last_sent) / elapsed
        state = "connected" if self.sender.connected else "disconnected"
        print(
            f"gauss-quotes-gen: {rate:,.0f} quotes/s, {self.sent:,} sent, "
            f"{self.sender.errors + self.bad_input} errors, {state} {self.sender.host}:{self.sender.port}",
            file=self.out,
            flush=True,
        )
        self._last_time = now
        self._last_sent = self.sent

    def finish(self) -> None:
        total = max(time.monotonic() - self._started, 1e-9)
        print(
            f"gauss-quotes-gen: done: {self.sent:,} sent in {total:.1f} s ({self.sent / total:,.0f} quotes/s), "
            f"{self.sender.errors + self.bad_input} errors",
            file=self.out,
            flush=True,
        )


# --- modes ---------------------------------------------------------------


def run_auto(args: argparse.Namespace, wire: QuoteWire, sender: Sender, out: IO[str]) -> int:
    walk = QuoteWalk(args.symbols, args.seed)
    status = _Status(sender, out)
    start = time.monotonic()
    end = None if args.duration is None else start + args.duration
    limit = args.count
    try:
        while True:
            now = time.monotonic()
            if end is not None and now >= end:
                break
            due = int((now - start) * args.rate) - status.sent
            if limit is not None:
                due = min(due, limit - status.sent)
            if due > 0:
                due = min(due, _MAX_BATCH)
                ts = int(time.time() * 1000)
                sender.send(wire.encode(walk.quotes(due, _repeat(ts))), end)
                status.add(due)
                if limit is not None and status.sent >= limit:
                    break
            else:
                status.maybe_print()
                time.sleep(min(0.01, max(1.0 / args.rate, 0.001)))
    finally:
        status.finish()
    return 0


def _repeat(value: int) -> Iterator[int]:
    while True:
        yield value


def parse_manual_line(line: str, now_ms: int) -> dict[str, Any]:
    """A quote from ``SYMBOL BID ASK [BID_SIZE ASK_SIZE]``; raises ``ValueError``."""
    parts = line.split()
    if len(parts) not in (3, 5):
        raise ValueError("expected: SYMBOL BID ASK [BID_SIZE ASK_SIZE]")
    symbol = parts[0]
    bid, ask = float(parts[1]), float(parts[2])
    bid_size, ask_size = (float(parts[3]), float(parts[4])) if len(parts) == 5 else (1_000_000.0, 1_000_000.0)
    return {"symbol": symbol, "bid": bid, "ask": ask, "bid_size": bid_size, "ask_size": ask_size, "ts_ms": now_ms}


def run_manual(args: argparse.Namespace, wire: QuoteWire, sender: Sender, out: IO[str]) -> int:
    sent = 0
    for line in sys.stdin:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            quote = parse_manual_line(line, int(time.time() * 1000))
        except ValueError as exc:
            print(f"gauss-quotes-gen: ignored {line.strip()!r}: {exc}", file=out, flush=True)
            continue
        sender.send(wire.encode([quote]))
        sent += 1
        print(f"gauss-quotes-gen: sent {quote['symbol']} {quote['bid']} {quote['ask']}", file=out, flush=True)
    print(f"gauss-quotes-gen: done: {sent} sent, {sender.errors} errors", file=out, flush=True)
    return 0


def run_generate(args: argparse.Namespace, out: IO[str]) -> int:
    walk = QuoteWalk(args.symbols, 0 if args.seed is None else args.seed)
    start_ms = DEFAULT_START_MS if args.start_ms is None else args.start_ms
    interval_ms = 1000.0 / args.rate
    wire = QuoteWire.build("json", "lines", None)  # JSON lines: the wire format of the default source
    count = 1000 if args.count is None else args.count
    target = sys.stdout.buffer if args.out in (None, "-") else open(args.out, "wb")
    try:
        for first in range(0, count, _MAX_BATCH):
            size = min(_MAX_BATCH, count - first)
            ts = (start_ms + int((first + i) * interval_ms) for i in range(size))
            quotes = walk.quotes(size, ts)
            target.write(wire.encode(quotes))
    finally:
        if target is not sys.stdout.buffer:
            target.close()
        else:
            target.flush()
    if args.out not in (None, "-"):
        print(f"gauss-quotes-gen: wrote {count} quotes to {args.out}", file=out)
    return 0


def read_quotes(stream: IO[bytes], on_bad: Any) -> Iterator[dict[str, Any]]:
    """The quotes of a JSON-lines stream; ``on_bad(line_number, reason)`` for each bad line."""
    codec = create("codec", "json")
    for number, line in enumerate(stream, 1):
        line = line.strip()
        if not line:
            continue
        records, rejected = codec.decode([line])
        if rejected:
            on_bad(number, rejected[0].reason)
            continue
        yield records[0].data


def run_file(args: argparse.Namespace, wire: QuoteWire, sender: Sender, out: IO[str]) -> int:
    if args.input is None:
        print("gauss-quotes-gen: file mode needs a JSON-lines file (or - for standard input)", file=out)
        return 2
    status = _Status(sender, out)
    bad_notes = 0

    def on_bad(number: int, reason: str) -> None:
        nonlocal bad_notes
        status.bad_input += 1
        if bad_notes < 10:
            print(f"gauss-quotes-gen: {args.input}:{number}: skipped: {reason}", file=out, flush=True)
            bad_notes += 1

    try:
        stream = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")
    except OSError as exc:
        print(f"gauss-quotes-gen: cannot read {args.input}: {exc.strerror or exc}", file=out)
        return 2
    speed = args.speed
    start = time.monotonic()
    first_ts: int | None = None
    batch: list[dict[str, Any]] = []
    try:
        for quote in read_quotes(stream, on_bad):
            if speed is not None:
                ts = int(quote["ts_ms"])
                if first_ts is None:
                    first_ts = ts
                due = start + (ts - first_ts) / 1000.0 / speed
                wait = due - time.monotonic()
                if wait > 0 and batch:
                    sender.send(wire.encode(batch))
                    status.add(len(batch))
                    batch = []
                while wait > 0:
                    time.sleep(min(wait, 0.25))
                    status.maybe_print()
                    wait = due - time.monotonic()
            batch.append(quote)
            if len(batch) >= (_MAX_BATCH if speed is None else 500):
                sender.send(wire.encode(batch))
                status.add(len(batch))
                batch = []
        if batch:
            sender.send(wire.encode(batch))
            status.add(len(batch))
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
        status.finish()
    return 0


# --- command line --------------------------------------------------------


def _target(text: str) -> tuple[str, int] | str:
    if text.startswith("nats://"):  # publish to quotes.<SYMBOL> on a NATS server (SPEC section 7)
        host, sep, port = text[len("nats://") :].rpartition(":")
        if not (host and port.isdigit() and 0 < int(port) < 65536) if sep else not port:
            raise argparse.ArgumentTypeError(f"expected nats://HOST[:PORT], got {text!r}")
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _symbols(text: str) -> list[str]:
    symbols = [s.strip() for s in text.split(",") if s.strip()]
    if not symbols:
        raise argparse.ArgumentTypeError("expected a comma-separated list of symbols")
    return symbols


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    return _positive(float)(text)  # type: ignore[no-any-return]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gauss-quotes-gen",
        description="Generate, send and replay quotes for Gauss (SPEC section 3).",
    )
    parser.add_argument("mode", choices=["auto", "manual", "generate", "file"])
    parser.add_argument("input", nargs="?", help="file mode: JSON-lines file to replay (- for standard input)")
    parser.add_argument("--target", type=_target, default=("127.0.0.1", 9100), help="HOST:PORT (default 127.0.0.1:9100), or nats://HOST:PORT to publish to quotes.<SYMBOL>")
    parser.add_argument("--symbols", type=_symbols, default=list(DEFAULT_SYMBOLS), help="comma-separated symbols")
    parser.add_argument("--rate", type=_positive(float), default=1000.0, help="quotes per second (default 1000)")
    parser.add_argument("--duration", type=_positive(float), help="auto: stop after this many seconds")
    parser.add_argument("--count", type=_positive(int), help="generate: quotes to write (default 1000); auto: stop after")
    parser.add_argument("--seed", type=int, help="random seed (generate defaults to 0)")
    parser.add_argument("--start-ms", type=int, help=f"generate: first ts_ms (default {DEFAULT_START_MS})")
    parser.add_argument("--out", help="generate: output file (default standard output)")
    parser.add_argument("--speed", type=_speed, default=1.0, help="file: factor of the recorded pace, or max")
    parser.add_argument("--codec", default="json", help=f"payload codec (known: {', '.join(known('codec'))})")
    parser.add_argument("--framing", default="lines", help=f"framing (known: {', '.join(known('framing'))})")
    parser.add_argument(
        "--compress", default="none", help=f"payload compression: none, {', '.join(known('middleware'))}"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # the file may come after the options
    out = sys.stderr
    if args.mode == "generate":
        return run_generate(args, out)
    try:
        wire = QuoteWire.build(args.codec, args.framing, args.compress)
    except ConfigError as exc:
        parser.exit(2, f"gauss-quotes-gen: {exc}\n")
    sender: Any
    if isinstance(args.target, str):  # nats://: one message per symbol and batch, to quotes.<SYMBOL>
        from gauss_plugins.transport.nats import NatsSender, SubjectWire

        wire, sender = SubjectWire(wire), NatsSender(args.target, out=out)  # type: ignore[assignment]
    else:
        host, port = args.target
        sender = Sender(host, port, out=out)
    try:
        if args.mode == "auto":
            return run_auto(args, wire, sender, out)
        if args.mode == "manual":
            return run_manual(args, wire, sender, out)
        return run_file(args, wire, sender, out)
    except KeyboardInterrupt:
        return 0
    finally:
        sender.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
