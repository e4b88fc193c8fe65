"""Run the fuzz targets: ``python tests/fuzz --seconds N`` (N seconds in all, shared by the targets).

Each target runs in its own process under atheris (libFuzzer, coverage
guided: the Python code of the targets, the twins, the plugins and
``gauss.http`` is instrumented; the compiled kernel is compared with its
twin but not instrumented itself), seeded with valid inputs of its format.
The runner prints executions per target, the known reported defects a
target met (``fuzz_known.py``), and every crash with the input that caused
it and the command that replays it; the exit status is 1 on any crash.

    python tests/fuzz --seconds 60                     # what CI runs (tox -e fuzz), ~5 s a target
    python tests/fuzz --seconds 3600 --corpus fuzz-corpus   # a long run; the corpus is kept and grows
    python tests/fuzz --target lines --target json --seconds 120
    python tests/fuzz --replay crash-1234abcd --target json  # run one input through one target
    python tests/fuzz --engine random --seconds 60     # no atheris: seeded random mutation, no coverage

Without atheris installed (``pip install atheris``; Linux wheels) the
runner falls back to ``--engine random`` and says so.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# name -> (module, check factory expression, seeds expression, max input length)
TARGETS: dict[str, tuple[str, str, str, int]] = {
    "lines": ("fuzz_framing", "check_lines", "seeds_lines()", 4096),
    "length-prefixed": ("fuzz_framing", "check_length_prefixed", "seeds_length_prefixed()", 4096),
    "json": ("fuzz_codecs", "check_codec('json')", "seeds('json')", 2048),
    "csv": ("fuzz_codecs", "check_codec('csv')", "seeds('csv')", 2048),
    "protobuf": ("fuzz_codecs", "check_codec('protobuf')", "seeds('protobuf')", 2048),
    "avro": ("fuzz_codecs", "check_codec('avro')", "seeds('avro')", 2048),
    "gzip": ("fuzz_middleware", "check_middleware('gzip')", "seeds('gzip')", 4096),
    "lz4": ("fuzz_middleware", "check_middleware('lz4')", "seeds('lz4')", 4096),
    "snappy": ("fuzz_middleware", "check_middleware('snappy')", "seeds('snappy')", 4096),
    "ws-frames": ("fuzz_ws", "check_ws_frames", "seeds_ws_frames()", 8192),
    "ws-messages": ("fuzz_ws", "check_ws_messages", "seeds_ws_messages()", 1024),
    "rest": ("fuzz_rest", "check_rest", "seeds_rest()", 256),
}
if os.environ.get("GAUSS_FUZZ_SELFTEST") == "1":  # the runner's own test: a target that must crash
    TARGETS["selftest"] = ("fuzz_selftest", "check", "SEEDS", 64)
INSTRUMENTED = ["gauss", "gauss_plugins", "geventwebsocket", "fuzz_framing", "fuzz_codecs", "fuzz_middleware", "fuzz_ws", "fuzz_rest", "fuzz_hub"]


def load(name: str) -> tuple[Callable[[bytes], None], list[bytes], int]:
    """The check, the seeds and the input size limit of target ``name``."""
    module_name, check_expr, seeds_expr, max_len = TARGETS[name]
    module = importlib.import_module(module_name)
    scope = vars(module)
    check = eval(check_expr, scope) if "(" in check_expr else scope[check_expr]  # noqa: S307 - our own table
    seeds = eval(seeds_expr, scope)  # noqa: S307
    return check, seeds, max_len


def _write_seeds(corpus: Path, seeds: list[bytes]) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds):
        path = corpus / f"seed-{i:03d}"
        if not path.exists():
            path.write_bytes(seed)


# --- in the child process -------------------------------------------------------------------


def child_atheris(name: str, seconds: int, corpus: Path, artifacts: Path) -> None:
    started = time.monotonic()
    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        check, seeds, max_len = load(name)
    _write_seeds(corpus, seeds)
    # the imports (instrumented) count against the target's share of the time
    left = max(1, round(seconds - (time.monotonic() - started)))
    argv = [
        sys.argv[0],
        f"-max_total_time={left}",
        f"-max_len={max_len}",
        "-timeout=20",
        "-rss_limit_mb=3072",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
    ]
    atheris.Setup(argv, check)
    atheris.Fuzz()


def _mutate(rng: random.Random, seeds: list[bytes], max_len: int) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        pos = rng.randint(0, len(data))
        if op == 0 and data:
            data[min(pos, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2 and data:
            del data[pos : pos + rng.randint(1, 8)]
        elif op == 3 and data:
            data[min(pos, len(data) - 1)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0x0A, 0x0D, 0x1E, 0x22, 0x2C))
        else:
            other = rng.choice(seeds)
            start = rng.randint(0, len(other))
            data[pos:pos] = other[start : start + rng.randint(1, 32)]
    return bytes(data[:max_len])


def child_random(name: str, seconds: int, corpus: Path, artifacts: Path) -> None:
    started = time.monotonic()
    check, seeds, max_len = load(name)
    _write_seeds(corpus, seeds)
    pool = [p.read_bytes() for p in sorted(corpus.iterdir()) if p.is_file()] or [b""]
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    deadline = started + max(seconds, 1)
    runs = 0
    while time.monotonic() < deadline:
        data = pool[runs] if runs < len(pool) else _mutate(rng, pool, max_len)
        runs += 1
        try:
            check(data)
        except Exception:  # noqa: BLE001 - any exception is a crash to report
            traceback.print_exc()
            path = artifacts / f"crash-{runs:08d}"
            path.write_bytes(data)
            print(f"==ERROR== crash; test unit written to {path}", file=sys.stderr)
            print(f"stat::number_of_executed_units: {runs}", file=sys.stderr)
            sys.exit(1)
    print(f"stat::number_of_executed_units: {runs}", file=sys.stderr)


# --- in the parent ----------------------------------------------------------------------------


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run_target(name: str, seconds: int, engine: str, corpus_root: Path, artifacts: Path, work: Path) -> dict[str, object]:
    corpus = corpus_root / name
    known_path = work / f"{name}.known.json"
    log_path = work / f"{name}.log"
    env = {**os.environ, "GAUSS_FUZZ_KNOWN": str(known_path), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(HERE), "--child", name, "--engine", engine, "--seconds", str(seconds),
               "--corpus", str(corpus), "--artifacts", str(artifacts)]  # fmt: skip
    start = time.monotonic()
    with log_path.open("wb") as log:
        rc = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=seconds * 3 + 120)
    wall = time.monotonic() - start
    output = log_path.read_text(errors="replace")
    runs = [int(n) for n in re.findall(r"stat::number_of_executed_units: (\d+)", output)]
    done = re.findall(r"Done \d+ runs in (\d+) second", output)  # libFuzzer: the time spent fuzzing
    crashes = sorted(p for p in artifacts.iterdir() if re.match(r"(crash|timeout|oom|leak)-", p.name) and p.name not in _seen)
    _seen.update(p.name for p in crashes)
    known = json.loads(known_path.read_text()) if known_path.exists() else {}
    if rc != 0 or crashes:
        shutil.copy(log_path, artifacts / log_path.name)  # the failed invariant and its traceback
    return {"name": name, "rc": rc, "runs": runs[-1] if runs else 0, "wall": wall,
            "fuzz_s": max(int(done[-1]), 1) if done else seconds, "crashes": crashes,
            "known": known, "output": output, "corpus": len(list(corpus.iterdir())) if corpus.exists() else 0}  # fmt: skip


_seen: set[str] = set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="total time, shared by the targets (default 60)")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="run only this target (repeatable)")
    parser.add_argument("--engine", choices=("atheris", "random"), default=None, help="default atheris when installed")
    parser.add_argument("--corpus", type=Path, default=None, help="keep the corpus here (default a temporary directory)")
    parser.add_argument("--artifacts", type=Path, default=None, help="where crashing inputs go (default ./fuzz-crashes)")
    parser.add_argument("--replay", type=Path, default=None, help="run this input through --target and exit")
    parser.add_argument("--list", action="store_true", help="list the targets")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        engine_main = child_atheris if args.engine == "atheris" else child_random
        engine_main(args.child, int(args.seconds), args.corpus, args.artifacts)
        return 0
    if args.list:
        for name, (module, check, _, _) in TARGETS.items():
            print(f"{name:16} {module}.{check}")
        return 0
    if args.replay is not None:
        if not args.target or len(args.target) != 1:
            parser.error("--replay needs exactly one --target")
        check, _, _ = load(args.target[0])
        check(args.replay.read_bytes())
        print(f"{args.target[0]}: {args.replay} passes")
        return 0

    engine = args.engine or ("atheris" if _have_atheris() else "random")
    if engine == "atheris" and not _have_atheris():
        parser.error("atheris is not installed (pip install atheris)")
    if engine == "random":
        print("fuzz: atheris not used: seeded random mutation without coverage feedback")
    names = args.target or list(TARGETS)
    per_target = max(1, int(args.seconds / len(names)))
    temp = Path(tempfile.mkdtemp(prefix="gauss-fuzz-"))
    corpus_root = args.corpus or temp / "corpus"
    artifacts = (args.artifacts or Path("fuzz-crashes")).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    _seen.update(p.name for p in artifacts.iterdir())
    print(f"fuzz: {len(names)} targets, {per_target} s each, engine {engine}, corpus {corpus_root}")
    print(f"| {'target':16} | {'executions':>10} | {'exec/s':>8} | {'corpus':>6} | crashes | known defects met |")
    print(f"|{'-' * 18}|{'-' * 11}:|{'-' * 9}:|{'-' * 7}:|--------:|---|")
    results = []
    try:
        for name in names:
            result = run_target(name, per_target, engine, corpus_root, artifacts, temp)
            results.append(result)
            crashed = bool(result["crashes"]) or result["rc"] != 0
            known = ", ".join(f"{k} x{v}+" for k, v in sorted(result["known"].items())) or "-"  # type: ignore[attr-defined]
            rate = result["runs"] / result["fuzz_s"]  # type: ignore[operator]
            print(f"| {name:16} | {result['runs']:>10,} | {rate:>8,.0f} | {result['corpus']:>6} | "
                  f"{len(result['crashes']) or int(crashed):>7} | {known} |", flush=True)  # type: ignore[arg-type]  # fmt: skip
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    failed = [r for r in results if r["crashes"] or r["rc"] != 0]
    for result in failed:
        print(f"\n=== {result['name']}: exit status {result['rc']} ===")
        print("\n".join(str(result["output"]).splitlines()[-40:]))
        for crash in result["crashes"]:  # type: ignore[attr-defined]
            print(f"input: {crash} ({crash.read_bytes()[:200]!r})")
            print(f"replay: python tests/fuzz --replay {crash} --target {result['name']}")
    total = sum(r["runs"] for r in results)  # type: ignore[misc]
    met = {k for r in results for k in r["known"]}  # type: ignore[attr-defined]
    if met:
        import fuzz_known

        print("\nknown defects met (reported, not yet fixed; see tests/fuzz/fuzz_known.py):")
        for issue in sorted(met):
            print(f"- {issue}: {fuzz_known.ISSUES[issue]}")
    crashes = sum(len(r["crashes"]) or int(r["rc"] != 0) for r in results)  # type: ignore[arg-type, misc]
    wall = sum(r["wall"] for r in results)  # type: ignore[misc]
    print(f"\nfuzz: {total:,} executions, {crashes} crashes, {wall:.0f} s wall clock (start-up included)")
    if not failed and not any(artifacts.iterdir()):
        artifacts.rmdir()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
