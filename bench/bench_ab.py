"""Two or more builds of the compiled kernels, side by side in one process: ns a quote of one kernel each.

On a shared machine whose speed swings between runs, a change of 10 % is lost
between two invocations; loaded together and timed in turns (best of many
rounds), builds compare within a few percent. Build the "before" kernels in a
clone (``python setup.py build_ext --inplace``) and pass both ``.so`` files:

    .venv/bin/python bench/bench_ab.py json /tmp/old/gauss/_core.*.so gauss/_core.*.so [--rounds 15]

Kernels: ``json`` and ``csv`` (the quote parsers on 10,000 bench quotes),
``frames`` (``record_frames``, the tick log), ``records-json`` (the API's JSON),
``csv-encode``, ``protobuf-encode``, ``avro-encode`` (the framed sink encoders), ``ohlc``
(``OhlcAggregator.update``, 8 timeframes).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import timeit
from pathlib import Path
from types import ModuleType
from typing import Callable

sys.path.insert(0, str(Path(__file__).parent))
from bench_ingest import generate  # noqa: E402

import gauss  # noqa: E402, F401 - the package first, on its own kernels: a build loaded below imports from it

QUOTES = 10_000
KERNELS = ("json", "csv", "frames", "records-json", "csv-encode", "protobuf-encode", "avro-encode", "ohlc", "candles-json")
TIMEFRAMES_MS = [1_000, 5_000, 60_000, 300_000, 900_000, 3_600_000, 14_400_000, 86_400_000]


def load(path: Path, tag: int, workdir: Path) -> ModuleType:
    """The build at ``path`` as its own module object (a copy, so the loader sees a new file)."""
    copy = workdir / f"build{tag}{''.join(path.suffixes)}"
    shutil.copy(path, copy)
    spec = importlib.util.spec_from_file_location("gauss._core", copy)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _encode_any(record: object) -> bytes:
    from gauss.records import encode_json

    return encode_json(record.as_dict())  # type: ignore[attr-defined]


def kernel(build: ModuleType, name: str, lines: list[bytes]) -> Callable[[], object]:
    batch, _ = build.JsonQuoteParser(64).parse(lines)
    batch.first_seq = 1
    if name == "json":
        parser = build.JsonQuoteParser(64)
        return lambda: parser.parse(lines)
    if name == "csv":
        rows = build.encode_csv_quotes(batch)
        csv_parser = build.CsvQuoteParser(64)
        return lambda: csv_parser.parse(rows)
    if name == "candles-json":  # 10,000 candle records (ns a candle): write_records_json, msgspec only as the fallback
        from bench_kernels import candle_records

        candles = candle_records(build, QUOTES)
        return lambda: build.write_records_json(candles, _encode_any)
    if name == "ohlc":  # a fresh aggregator each run: the quotes open, extend and close candles as in a replay
        return lambda: build.OhlcAggregator(TIMEFRAMES_MS, 2).update(batch.symbols, batch.ts_ms, batch.bid, batch.ask)
    encoders: dict[str, Callable[[], object]] = {
        "frames": batch.record_frames,
        "records-json": batch.records_json,
        "csv-encode": lambda: build.encode_csv_quotes(batch, "lines"),
        "protobuf-encode": lambda: build.encode_protobuf_quotes(batch, "length-prefixed"),
        "avro-encode": lambda: build.encode_avro_quotes(batch, "length-prefixed"),
    }
    return encoders[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kernel", choices=KERNELS)
    parser.add_argument("builds", nargs="+", type=Path, help="the _core .so files to compare")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gauss-ab-") as tmp:
        work = Path(tmp)
        generate(work / "quotes.jsonl", QUOTES)
        lines = (work / "quotes.jsonl").read_bytes().split(b"\n")[:-1]
        runs = [kernel(load(path, tag, work), args.kernel, lines) for tag, path in enumerate(args.builds)]
        best = [float("inf")] * len(runs)
        for _ in range(args.rounds):
            for at, run in enumerate(runs):
                best[at] = min(best[at], min(timeit.repeat(run, number=5, repeat=3)) / 5 / len(lines) * 1e9)
    print(f"{args.kernel}, {len(lines):,} quotes, best of {args.rounds} interleaved rounds")
    for path, ns in zip(args.builds, best, strict=True):
        print(f"{ns:8.1f} ns/quote  {ns / best[0]:6.2f}x  {path}")


if __name__ == "__main__":
    main()
