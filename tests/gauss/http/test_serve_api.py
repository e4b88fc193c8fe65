"""The API as ``gauss-serve`` runs it from the repository's config.toml (ports moved to free ones)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
import websocket
from support import free_port

from gauss.config import load_config
from gauss.errors import ConfigError
from gauss.http.options import ApiOptions

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[int, int]]:
    """gauss-serve on config.toml with every port moved; yields the port map (9200 -> actual)."""
    ports: dict[int, int] = {}

    def replace(match: re.Match[str]) -> str:
        return f"port = {ports.setdefault(int(match.group(1)), free_port())}"

    text = re.sub(r"\bport = (\d+)", replace, (REPO / "config.toml").read_text())
    (tmp_path / "config.toml").write_text(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gauss.cli.serve", "--config", str(tmp_path / "config.toml")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{ports[9200]}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(base + "/api/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gauss-serve did not come up: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.1)
        yield ports
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr.decode(errors="replace")


def test_a_quote_sent_to_the_source_reaches_a_websocket_subscriber_and_rest(served: dict[int, int]) -> None:
    api = f"127.0.0.1:{served[9200]}"
    topics = {t["name"] for t in requests.get(f"http://{api}/api/topics", timeout=10).json()}
    assert {"quotes.raw", "ohlc.1m", "quotes.csv"} <= topics
    ws = websocket.create_connection(f"ws://{api}/ws", timeout=20)
    try:
        ws.send(json.dumps({"action": "subscribe", "topic": "quotes.raw", "key": "EURUSD", "id": 1}))
        assert json.loads(ws.recv())["type"] == "subscribed"
        now = int(time.time() * 1000)
        quote = {"symbol": "EURUSD", "bid": 1.085, "ask": 1.0852, "bid_size": 1e6, "ask_size": 2e6, "ts_ms": now}
        with socket.create_connection(("127.0.0.1", served[9100]), timeout=10) as sock:
            sock.sendall(json.dumps(quote).encode() + b"\n")
        push = json.loads(ws.recv())
        assert push["type"] == "records" and push["records"] == [{"ts_ms": now, "key": "EURUSD", "data": quote, "seq": 1}]
    finally:
        ws.close()
    body = requests.get(f"http://{api}/api/topics/quotes.raw", params={"key": "EURUSD"}, timeout=10).json()
    assert [r["data"] for r in body["records"]] == [quote]
    metrics = requests.get(f"http://{api}/metrics", timeout=10).text
    assert 'gauss_topic_records_published_total{topic="quotes.raw"} 1.0' in metrics


def test_default_config_binds_the_api_to_localhost_without_a_token() -> None:
    config = load_config(REPO / "config.toml")
    assert config.api is not None and config.api.bind == "127.0.0.1" and config.api.port == 9200
    assert config.api.with_environ({}).token is None


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"ws_queue_size": 0}, "api.ws_queue_size"),
        ({"ws_overflow_grace_s": "soon"}, "api.ws_overflow_grace_s"),
        ({"cors_origins": "https://a.example"}, "api.cors_origins"),
        ({"cors_origins": ["*", "https://a.example"]}, "api.cors_origins"),
        ({"token": ""}, "api.token"),
        ({"token": "a", "token_env": "B"}, "api.token_env"),
        ({"max_ws_subscriptions": 0}, "api.max_ws_subscriptions"),
        ({"tokn": "x"}, "api.tokn"),
        ({"allowed_hosts": "gauss.internal"}, "api.allowed_hosts"),
        ({"allowed_hosts": ["*", "gauss.internal"]}, "api.allowed_hosts"),
        ({"allowed_hosts": [" "]}, "api.allowed_hosts"),
        ({"request_timeout_s": 0}, "api.request_timeout_s"),
        ({"keepalive_s": "long"}, "api.keepalive_s"),
        ({"write_timeout_s": -1}, "api.write_timeout_s"),
        ({"max_inflight_bytes": 1000}, "api.max_inflight_bytes"),
        ({"max_inflight_bytes_per_connection": 1.5}, "api.max_inflight_bytes_per_connection"),
        ({"inflight_wait_s": -0.1}, "api.inflight_wait_s"),
    ],
)
def test_bad_api_options_are_config_errors_naming_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config({"api": table})
    assert error.value.key == key


def test_bad_api_option_makes_gauss_serve_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[api]\nport = 0\nws_queue_size = "big"\n')
    proc = subprocess.run([sys.executable, "-m", "gauss.cli.serve", "--config", str(path)], capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert "api.ws_queue_size" in proc.stderr.decode() and "bad.toml" in proc.stderr.decode()


def test_options_parse_defaults_and_environment() -> None:
    options = ApiOptions.parse({}, environ={})
    assert options == ApiOptions()
    assert ApiOptions.parse({"token": "x"}, environ={"GAUSS_API_TOKEN": "y"}).token == "y"
    assert ApiOptions.parse({"token_env": "MY_TOKEN"}, environ={"MY_TOKEN": "z"}).token == "z"
    assert ApiOptions.parse({"token_env": "MY_TOKEN"}, environ={}).token == ""
