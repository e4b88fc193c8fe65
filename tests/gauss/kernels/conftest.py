"""Fixtures of the kernel tests: both builds side by side."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


@pytest.fixture
def twins() -> tuple[ModuleType, ModuleType]:
    """``(compiled, pure)`` kernels, for tests that feed both the same input."""
    try:
        compiled = importlib.import_module("gauss._core")
    except ImportError:
        if os.environ.get("GAUSS_EXPECT_COMPILED") == "1":
            pytest.fail("compiled kernels expected (GAUSS_EXPECT_COMPILED=1) but gauss._core is missing")
        pytest.skip("gauss._core not built")
    return compiled, importlib.import_module("gauss._pycore")
