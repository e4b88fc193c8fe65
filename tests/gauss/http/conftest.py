"""API test fixtures (helpers in ``tests/support/http.py``, imported as ``support.http``)."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
from support.http import Api, hub_config

from gauss.hub import Hub


@pytest.fixture
def make_api() -> Iterator[Callable[..., Api]]:
    """``make_api(sources=[...], **api_options)``: start a hub with its API on a free port (stopped at teardown)."""
    hubs: list[Hub] = []

    def make(*, sources: list[dict[str, Any]] | None = None, **api: Any) -> Api:
        hub = Hub.from_config(hub_config(api, sources=sources or []))
        hub.start()
        hubs.append(hub)
        return Api(hub)

    yield make
    for hub in hubs:
        hub.stop(timeout=5)


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()
