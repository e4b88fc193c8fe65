"""Fixtures playing Grafana's side: the real plugin executable under go-plugin's environment."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("grpc")
pytest.importorskip("pyarrow")

from support import free_port  # noqa: E402

from gauss.grafana.harness import PluginProcess, plugin_env, start_plugin  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
PLUGIN_DIR = REPO / "grafana"


def _executable() -> Path:
    arch = "arm64" if platform.machine() in ("aarch64", "arm64") else "amd64"
    return PLUGIN_DIR / f"gpx_gauss_linux_{arch}"


@pytest.fixture
def gpx() -> Path:
    """The file Grafana would exec on this machine: ``grafana/gpx_gauss_linux_<arch>``."""
    return _executable()


@pytest.fixture
def grafana_env() -> dict[str, str]:
    """go-plugin's environment; the wrapper is pointed at this test's interpreter (tox's env)."""
    env = plugin_env()
    env["GAUSS_PYTHON"] = sys.executable
    return env


@pytest.fixture
def plugin(gpx: Path, grafana_env: dict[str, str]) -> Iterator[PluginProcess]:
    running = start_plugin([str(gpx)], grafana_env)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.kill()
        running.close()


@pytest.fixture
def closed_url() -> str:
    """An http URL where nothing listens: Gauss is down."""
    return f"http://127.0.0.1:{free_port()}"
