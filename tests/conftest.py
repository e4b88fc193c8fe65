"""Shared fixtures, and the test-support plugin ``tests/support`` registered for every test.

``kernels`` runs a test against both kernel builds: the compiled module
(``cy``) and its pure-Python twin (``py``).

``tests/support`` becomes importable here as the package ``support`` (every
helper shared between test folders lives there: ``support.plugins``,
``support.http``, ``support.nats``, ...), through one finder that looks for
exactly that name (:data:`HELPERS`): the one way any test (or a ``bench/``
script loading this file) reaches them. Putting ``tests/`` on ``sys.path``
instead would let ``tests/gauss`` shadow the real ``gauss``.
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

_HERE = Path(__file__).resolve().parent

# Top-level module name -> the folder holding it: only ``support`` (plugin configs
# name its test plugins as ``support.plugins:ListStorage`` and the like).
HELPERS = {"support": _HERE}


class _HelperFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of :data:`HELPERS` in their folders, and nothing else (no folder goes on ``sys.path``)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        folder = HELPERS.get(name)
        return None if folder is None else importlib.machinery.PathFinder.find_spec(name, [str(folder)])


if not any(type(finder).__name__ == "_HelperFinder" for finder in sys.meta_path):
    sys.meta_path.append(_HelperFinder())
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
