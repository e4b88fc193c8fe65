"""Shared fixtures, and the test-support plugin ``tests/support`` registered for every test.

``kernels`` runs a test against both kernel builds: the compiled module
(``cy``) and its pure-Python twin (``py``).

``tests/support`` becomes importable here as the package ``support`` through a
finder that looks in this folder for that one name: the one way any test (or a
``bench/`` script loading this file) reaches it. Putting ``tests/`` on
``sys.path`` instead would let ``tests/gauss`` shadow the real ``gauss``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest


class _SupportFinder(importlib.abc.MetaPathFinder):
    """Finds the top-level package ``support`` in this folder only (nothing else here becomes importable)."""

    folder = str(Path(__file__).resolve().parent)

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.PathFinder.find_spec(name, [self.folder]) if name == "support" else None


if not any(isinstance(finder, _SupportFinder) for finder in sys.meta_path):
    sys.meta_path.append(_SupportFinder())
pytest_plugins = ["support"]


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("gauss._core")
    except ImportError:
        return None


@pytest.fixture(params=["cy", "py"])
def kernels(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "py":
        return importlib.import_module("gauss._pycore")
    module = _compiled()
    if module is None:
        if os.environ.get("GAUSS_EXPECT_COMPILED") == "1":
            pytest.fail("compiled kernels expected (GAUSS_EXPECT_COMPILED=1) but gauss._core is missing")
        pytest.skip("gauss._core not built")
    return module
