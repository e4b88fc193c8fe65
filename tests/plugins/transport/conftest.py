"""NATS fixtures: a private nats-server per test (``tests/e2e/nats_helpers.py``), engine helpers importable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

_TESTS = Path(__file__).resolve().parents[2]
for _helpers in (_TESTS / "e2e", _TESTS / "engine"):
    if str(_helpers) not in sys.path:
        sys.path.insert(0, str(_helpers))

from nats_helpers import NatsServer  # noqa: E402


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """nats-server with JetStream in ``tmp_path`` and the partition mappings of quotes.* (2) and p7.* (7)."""
    server = NatsServer(tmp_path / "nats", shards=2, mappings={"p7.*": "p7.{{partition(7,1)}}.{{wildcard(1)}}"})
    server.start()
    try:
        yield server
    finally:
        server.stop()
