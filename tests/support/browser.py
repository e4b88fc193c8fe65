"""Browser-test helpers: a ``gauss-serve`` subprocess serving the dashboard, a recorded Playwright page, quotes."""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from support import free_port, wait_until
from support.serve import Server

__all__ = ["ARTIFACTS", "MINUTE", "Dashboard", "Page", "history", "quote"]

ARTIFACTS = Path(os.environ.get("GAUSS_BROWSER_ARTIFACTS") or Path(__file__).resolve().parents[1] / "browser" / "artifacts")
MINUTE = 60_000


# --- the server -------------------------------------------------------------------------


@dataclass
class Dashboard:
    """A ``gauss-serve`` subprocess serving the dashboard, and how to feed and query it."""

    directory: Path
    token: str | None = None
    candle_storage: str = 'type = "file", dir = "data/ohlc/{suffix}"'
    """The ``ohlc.*`` storage table's keys: file-stored candles survive a restart, memory ones start a new epoch."""
    api_port: int = field(default_factory=free_port)
    source_port: int = field(default_factory=free_port)
    server: Server | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def write_config(self) -> Path:
        token = f'token = "{self.token}"' if self.token else ""
        path = self.directory / "config.toml"
        path.write_text(
            f"""
[hub]
status_interval = 0

[api]
port = {self.api_port}
{token}

[[topics]]
name = "quotes.raw"
format = "quote"
storage = {{ type = "memory", capacity = 100000 }}

[[topics]]
name = "ohlc.*"
format = "candle"
storage = {{ {self.candle_storage} }}
create = ["ohlc.1m", "ohlc.5m"]

[[sources]]
topic = "quotes.raw"
transport = {{ type = "tcp-server", port = {self.source_port} }}

[[processors]]
type = "ohlc"
topic = "quotes.raw"
timeframes = ["1m", "5m"]
"""
        )
        return path

    def start(self) -> None:
        self.server = Server(self.write_config())

    def stop(self) -> None:
        if self.server is not None:
            assert self.server.terminate() == 0, self.server.output()
            self.server = None

    def feed(self, quotes: list[dict[str, Any]]) -> None:
        """Send quotes over TCP (lines + JSON) and wait until quotes.raw holds them."""
        before = self.records("quotes.raw")
        with socket.create_connection(("127.0.0.1", self.source_port), timeout=10) as sock:
            sock.sendall(b"".join(json.dumps(q).encode() + b"\n" for q in quotes))
        wait_until(lambda: self.records("quotes.raw") >= before + len(quotes), what="quotes stored")

    def get(self, path: str, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        response = requests.get(self.base + path, params=params, headers=headers, timeout=10)
        response.raise_for_status()
        return response.json()

    def records(self, topic: str) -> int:
        return next(int(t["records"]) for t in self.get("/api/topics") if t["name"] == topic)

    def candles(self, topic: str, key: str) -> list[dict[str, Any]]:
        """The topic's candles of ``key`` as REST holds them, as chart bars (time in seconds)."""
        records = self.get(f"/api/topics/{topic}", key=key, limit=100000)["records"]
        return [
            {"time": r["ts_ms"] / 1000, **{k: r["data"][k] for k in ("open", "high", "low", "close")}} for r in records
        ]


# --- the page ------------------------------------------------------------------------------


class Page:
    """A Playwright page that records console errors and failed requests."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.console_errors: list[str] = []
        self.failed_requests: list[str] = []
        self.requested: list[str] = []
        page.on("request", lambda r: self.requested.append(r.url))
        page.on("websocket", lambda ws: self.requested.append(ws.url))
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))
        page.on("requestfailed", lambda r: self.failed_requests.append(f"{r.url}: {r.failure}"))
        page.on("response", lambda r: r.status >= 400 and self.failed_requests.append(f"{r.url}: {r.status}"))

    def call(self, expression: str) -> Any:
        """``window.gaussDashboard.<expression>`` (a function: the page's CSP forbids eval of strings)."""
        return self.page.evaluate(f"() => window.gaussDashboard.{expression}")

    def wait(self, predicate: str, timeout_s: float = 15.0) -> None:
        """Wait until the JavaScript arrow-function body ``predicate`` (``d`` is the hook) is true."""
        self.page.wait_for_function(
            f"() => {{ const d = window.gaussDashboard; return Boolean(d && ({predicate})); }}", timeout=timeout_s * 1000
        )

    def bars(self) -> list[dict[str, Any]]:
        return self.call("bars()")  # type: ignore[no-any-return]

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
        self.page.screenshot(path=str(path))
        return path


def history(symbols: list[str], start_ms: int, minutes: int, per_minute: int = 10) -> list[dict[str, Any]]:
    """Quotes for every symbol, ``per_minute`` a minute from ``start_ms``, mids that vary within each bucket."""
    out = []
    step = MINUTE // per_minute
    for i in range(minutes * per_minute):
        for n, symbol in enumerate(symbols):
            mid = (1.0 + 100 * n) * (1 + ((i * 7919 + n * 31) % 1000) / 100_000)
            out.append(quote(symbol, mid, start_ms + i * step + n))
    return out


def quote(symbol: str, mid: float, ts_ms: int) -> dict[str, Any]:
    return {"symbol": symbol, "bid": mid - 0.0001, "ask": mid + 0.0001, "bid_size": 1.0, "ask_size": 2.0, "ts_ms": ts_ms}
