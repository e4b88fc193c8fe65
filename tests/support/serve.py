"""``gauss-serve`` as a subprocess on free ports, the quotes tests send it and the candles they expect."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gauss.resources import resource_path
from support.net import free_port

__all__ = ["Server", "default_config_on_free_ports", "expected_candles", "quotes", "serve_command"]


def serve_command() -> list[str]:
    script = Path(sys.executable).with_name("gauss-serve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gauss.cli.serve"]


class Server:
    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = config.with_suffix(f".{time.monotonic_ns()}.log")
        self.log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [*serve_command(), "--config", str(config)], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + 60
        while "API on" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gauss-serve did not start:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.log.close()


def quotes(symbols: list[str], start_ms: int, count: int, step_ms: int) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        symbol = symbols[i % len(symbols)]
        mid = 1.0 + (i * 7919 % 1000) / 10_000
        out.append(
            {"symbol": symbol, "bid": mid - 0.0001, "ask": mid + 0.0001, "bid_size": 1.0, "ask_size": 1.0,
             "ts_ms": start_ms + i * step_ms}
        )  # fmt: skip
    return out


def expected_candles(sent: list[dict[str, Any]], width: int) -> dict[tuple[str, int], tuple[float, float, float, float, int]]:
    """OHLC of the mid price per (symbol, bucket), computed independently of the server."""
    out: dict[tuple[str, int], list[Any]] = {}
    for q in sorted(sent, key=lambda q: q["ts_ms"]):  # stable: ties keep arrival order
        mid = (q["bid"] + q["ask"]) / 2
        key = (q["symbol"], q["ts_ms"] - q["ts_ms"] % width)
        if key not in out:
            out[key] = [mid, mid, mid, mid, 0]
        c = out[key]
        c[1], c[2], c[3], c[4] = max(c[1], mid), min(c[2], mid), mid, c[4] + 1
    return {k: tuple(v) for k, v in out.items()}  # type: ignore[misc]


def default_config_on_free_ports(directory: Path, *, fsync: str | None = None) -> tuple[Path, dict[int, int]]:
    """The shipped ``config.toml`` with every port moved to a free one, written into ``directory``.

    Returns the file and ``{shipped port: free port}`` (a port named twice gets
    the same replacement, a commented-out one too). ``fsync`` replaces the
    tick log's fsync policy.
    """
    text = resource_path("config.toml").read_text()
    ports: dict[int, int] = {}

    def replace(match: re.Match[str]) -> str:
        port = int(match.group(1))
        ports.setdefault(port, free_port())
        return f"port = {ports[port]}"

    text = re.sub(r"\bport = (\d+)\b", replace, text)
    if fsync is not None:
        text, n = re.subn(r'fsync = "\w+"', f'fsync = "{fsync}"', text)
        assert n, "config.toml names no fsync policy to override"
    path = directory / "config.toml"
    path.write_text(text)
    return path, ports
