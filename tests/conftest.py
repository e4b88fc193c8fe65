"""Shared fixtures.

``kernels`` runs a test against both kernel builds: the compiled module
(``cy``) and its pure-Python twin (``py``).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


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
