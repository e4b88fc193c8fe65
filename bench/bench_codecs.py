"""Codec throughput: quotes/s decoded and encoded by each codec plugin, per batch.

Baselines measured in the same run: the standard library's ``json.loads`` /
``json.dumps`` per quote, and ujson, which the design first named. Each
figure is the best of ``--repeat`` runs over a batch of ``--batch`` quotes
(so other load on the machine shows up as noise, not as a slow codec).
Middleware rows are the whole chain: codec + compression per payload.

    .venv/bin/python bench/bench_codecs.py [--batch 1000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any, Callable

import msgspec
import ujson
from gauss_plugins.format._payload import QuotePath

from gauss.cli.quotes_gen import QuoteWalk
from gauss.core import CORE, DEFAULT_MAX_FRAME_BYTES, QuoteBatch, TopicRecord
from gauss.quotes import QuoteCheck
from gauss.registry import create


def best_rate(fn: Callable[[], Any], items: int, repeat: int, min_time: float = 0.2) -> float:
    """Items per second of the best of ``repeat`` timed runs (each at least ``min_time`` s)."""
    loops = 1
    while True:
        started = time.perf_counter()
        for _ in range(loops):
            fn()
        if time.perf_counter() - started >= min_time / 4:
            break
        loops *= 2
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - started) / loops)
    return items / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    n = args.batch

    quotes = QuoteWalk(["EURUSD", "GBPUSD", "USDJPY", "AUDUSD"], seed=1).quotes(
        n, iter(range(1_732_406_400_000, 1_732_406_400_000 + n))
    )
    records = [TopicRecord(q["ts_ms"], q["symbol"], q) for q in quotes]
    json_lines = [json.dumps(q, separators=(",", ":")).encode() for q in quotes]

    rows: list[tuple[str, float, float]] = []

    def row(name: str, decode: Callable[[], Any], encode: Callable[[], Any]) -> None:
        rows.append((name, best_rate(decode, n, args.repeat), best_rate(encode, n, args.repeat)))

    row(
        "baseline json.loads/dumps",
        lambda: [json.loads(p) for p in json_lines],
        lambda: [json.dumps(q).encode() for q in quotes],
    )
    row(
        "baseline ujson.loads/dumps",
        lambda: [ujson.loads(p) for p in json_lines],
        lambda: [ujson.dumps(q).encode() for q in quotes],
    )
    msgspec_decode = msgspec.json.Decoder().decode
    msgspec_encode = msgspec.json.Encoder().encode
    row(
        "baseline msgspec (no records)",
        lambda: [msgspec_decode(p) for p in json_lines],
        lambda: [msgspec_encode(q) for q in quotes],
    )

    for name in ("json", "csv", "protobuf", "avro"):
        codec = create("codec", name)
        payloads = codec.encode(records)
        decoded, rejected = codec.decode(payloads)
        assert len(decoded) == n and not rejected, name
        def decode_codec(c: Any = codec, p: list[bytes] = payloads) -> Any:
            return c.decode(p)

        def encode_codec(c: Any = codec) -> Any:
            return c.encode(records)

        row(f"codec {name}", decode_codec, encode_codec)

    # The quote paths of the binary codecs: the records path (each codec's read_quote and a dict a
    # quote, what decode_quotes and encode did before) against the compiled columns (Avro/ProtobufQuoteParser
    # into a QuoteBatch, encode_avro/protobuf_quotes from one).
    check = QuoteCheck(None)
    batch = QuoteBatch.from_records(records)
    for name in ("protobuf", "avro"):
        codec = create("codec", name)
        payloads = codec.encode(batch)
        assert payloads == codec.encode(records), name
        columns, bad, refused = codec.decode_quotes(payloads, check)
        assert isinstance(columns, QuoteBatch) and len(columns) == n and not bad and not refused, name

        def decode_records(c: Any = codec, p: list[bytes] = payloads) -> Any:
            return QuotePath.decode_quotes(c, p, check)

        def encode_records(c: Any = codec) -> Any:
            return c.serialize([record.data for record in batch])

        def decode_columns(c: Any = codec, p: list[bytes] = payloads) -> Any:
            return c.decode_quotes(p, check)

        def encode_columns(c: Any = codec) -> Any:
            return c.encode(batch)

        row(f"codec {name} quotes, records", decode_records, encode_records)
        row(f"codec {name} quotes, columns", decode_columns, encode_columns)

    for middleware_name in ("gzip", "lz4", "snappy"):
        codec = create("codec", "json")
        middleware = create("middleware", middleware_name)
        compressed = middleware.encode(codec.encode(records))

        def decode_chain(c: Any = codec, m: Any = middleware, p: list[bytes] = compressed) -> Any:
            return c.decode(m.decode(p, DEFAULT_MAX_FRAME_BYTES)[0])

        def encode_chain(c: Any = codec, m: Any = middleware) -> Any:
            return m.encode(c.encode(records))

        row(f"codec json + {middleware_name}", decode_chain, encode_chain)

    print(f"bench_codecs: {n} quotes a batch, best of {args.repeat}; Python {platform.python_version()}, kernels {CORE}")
    print("(2-core machine shared with other work: figures are noisy; compare rows of the same run)")
    print(f"{'':32s} {'decode quotes/s':>16s} {'encode quotes/s':>16s} {'decode vs json':>15s}")
    base_decode = rows[0][1]
    for name, decode_rate, encode_rate in rows:
        print(f"{name:32s} {decode_rate:16,.0f} {encode_rate:16,.0f} {decode_rate / base_decode:14.1f}x")


if __name__ == "__main__":
    main()
