"""The test-support plugin: free ports, waiting, the ClickHouse server fixture, ``gauss-serve`` subprocesses.

``tests/conftest.py`` makes this folder importable as the package ``support``
(a finder for that one name; ``tests/`` itself is not put on ``sys.path``,
where ``tests/gauss`` would shadow the real ``gauss``) and registers it with
``pytest_plugins``, so its fixtures (``clickhouse_server``,
``clickhouse_factory``) serve every test and any test module can write
``from support import free_port, wait_until``. Scripts run outside pytest
(``bench/``) load ``tests/conftest.py`` by path for the same effect.

Modules: :mod:`support.net` (ports), :mod:`support.wait` (``wait_until``),
:mod:`support.clickhouse` (the server and its fixtures), :mod:`support.serve`
(``gauss-serve`` as a subprocess, quotes and their expected candles); the
helpers shared between test folders: :mod:`support.plugins` (test plugins named
``support.plugins:...`` in configs, TCP line helpers),
:mod:`support.fake_plugins`, :mod:`support.http` (API clients),
:mod:`support.formats`, :mod:`support.nats`, :mod:`support.browser`.
"""

from __future__ import annotations

from support.clickhouse import clickhouse_factory, clickhouse_server
from support.net import free_port, free_ports
from support.wait import wait_until

__all__ = ["clickhouse_factory", "clickhouse_server", "free_port", "free_ports", "wait_until"]
