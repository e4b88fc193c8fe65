"""One exception hierarchy: every exception Gauss defines derives from GaussError and a built-in; none is dead."""

from __future__ import annotations

import builtins
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import gauss_plugins

import gauss
from gauss import errors
from gauss.errors import GaussError

BUILTIN_ERRORS = tuple(
    v for v in vars(builtins).values() if isinstance(v, type) and issubclass(v, Exception) and v is not Exception
)


def _modules() -> list[str]:
    names = []
    for package in (gauss, gauss_plugins):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if ".pluginv2" in info.name or info.name.endswith("__main__"):
                continue  # generated gRPC code
            names.append(info.name)
    return names


def _defined_exceptions() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        module = importlib.import_module(name)  # every dependency is installed by .ci/setup
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


def test_every_exception_gauss_defines_is_a_gauss_error_and_a_builtin_one() -> None:
    defined = _defined_exceptions()
    names = {cls.__name__ for cls in defined}
    assert {"ConnectionGone", "ClientError", "BombError", "InflightLimit", "HandshakeError"} <= names
    for cls in defined:
        assert issubclass(cls, GaussError), f"{cls.__module__}.{cls.__qualname__} is not under GaussError"
        if cls is not GaussError:
            assert issubclass(cls, BUILTIN_ERRORS), f"{cls.__module__}.{cls.__qualname__} derives from no built-in error"


def test_every_exported_error_is_raised_somewhere() -> None:
    # The installed packages (a wheel installs plugins/ as gauss_plugins), not the checkout's folders.
    folders = [Path(path) for package in (gauss, gauss_plugins) for path in package.__path__]
    source = "\n".join(p.read_text("utf-8") for folder in folders for p in folder.rglob("*.py"))
    for name in errors.__all__:
        if name == "GaussError":
            continue
        assert re.search(rf"raise (errors\.)?{name}\b", source), f"{name} is exported but never raised"
