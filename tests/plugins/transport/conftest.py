"""NATS fixtures: a private nats-server per test (``tests/support/nats.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from support.nats import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """nats-server with JetStream in ``tmp_path`` and the partition mappings of quotes.* (2) and p7.* (7)."""
    server = NatsServer(tmp_path / "nats", shards=2, mappings={"p7.*": "p7.{{partition(7,1)}}.{{wildcard(1)}}"})
    server.start()
    try:
        yield server
    finally:
        server.stop()
