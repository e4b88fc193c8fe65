"""Plugin lookup by short name, and the option reader plugins share.

A plugin is a factory: ``factory(table: dict) -> instance``, where ``table``
is its TOML table without the ``type`` key. Built-ins and third-party
plugins are Python entry points in one group per kind (``gauss.codecs``,
...); a configuration may also name ``package.module:factory`` directly.
"""

from __future__ import annotations

import builtins
import contextvars
import importlib
import math
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from gauss.errors import ConfigError, UnknownPluginError

__all__ = ["KINDS", "known", "lookup", "create", "Options", "config_dir"]

KINDS: dict[str, str] = {
    "transport": "gauss.transports",
    "framing": "gauss.framings",
    "middleware": "gauss.middleware",
    "codec": "gauss.codecs",
    "storage": "gauss.storages",
    "processor": "gauss.processors",
    "sink": "gauss.sinks",
}

Factory = Callable[[dict[str, Any]], Any]

config_dir: contextvars.ContextVar[Path | None] = contextvars.ContextVar("gauss_config_dir", default=None)
"""Directory that relative paths in the table being read resolve against."""


def _group(kind: str) -> str:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown plugin kind {kind!r}; known: {', '.join(KINDS)}") from None


def known(kind: str) -> list[str]:
    """The installed plugin names of ``kind``, sorted."""
    return sorted({ep.name for ep in entry_points(group=_group(kind))})


def lookup(kind: str, name: str) -> Factory:
    """The factory for ``name``: an entry point, or ``package.module:factory``."""
    group = _group(kind)
    if not isinstance(name, str) or not name:
        raise UnknownPluginError("type", f"must name a {kind}; known: {', '.join(known(kind))}")
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
            return getattr(module, attr)  # type: ignore[no-any-return]
        except (ImportError, AttributeError) as exc:
            raise UnknownPluginError("type", f"cannot load {kind} {name!r}: {exc}") from None
    for ep in entry_points(group=group, name=name):
        try:
            return ep.load()  # type: ignore[no-any-return]
        except (ImportError, AttributeError) as exc:
            raise UnknownPluginError("type", f"{kind} {name!r} failed to load: {exc}") from None
    raise UnknownPluginError("type", f"unknown {kind} {name!r}; known: {', '.join(known(kind))}")


def create(kind: str, table: Mapping[str, Any] | str, *, where: str = "") -> Any:
    """Create a plugin of ``kind`` from its table (or a bare type name).

    Every :class:`ConfigError` raised is prefixed with ``where`` so it names
    the full key path.
    """
    if isinstance(table, str):
        table = {"type": table}
    if not isinstance(table, Mapping):
        raise ConfigError(where, f"must be a table with a 'type' (a {kind})")
    options = dict(table)
    name = options.pop("type", None)
    try:
        if name is None:
            raise ConfigError("type", f"missing; known {kind} types: {', '.join(known(kind))}")
        factory = lookup(kind, name)
        return factory(options)
    except ConfigError as exc:
        raise exc.at(where) from None


_REQUIRED: Any = object()


class Options:
    """Typed, checked reading of a plugin's table.

    Each getter consumes a key; :meth:`done` then refuses any key left over,
    so a typo in ``config.toml`` is an error, not a silent default.
    """

    def __init__(self, table: Mapping[str, Any]) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError("", "must be a table")
        self._table = dict(table)
        self._used: set[builtins.str] = set()

    def _get(self, name: builtins.str, default: Any) -> Any:
        self._used.add(name)
        if name in self._table:
            return self._table[name]
        if default is _REQUIRED:
            raise ConfigError(name, "missing (required)")
        return default

    def has(self, name: builtins.str) -> builtins.bool:
        return name in self._table

    def str(
        self, name: builtins.str, default: Any = _REQUIRED, *, choices: Sequence[builtins.str] | None = None, empty: bool = False
    ) -> Any:
        value = self._get(name, default)
        if value is default and name not in self._table:
            return value
        if not isinstance(value, str):
            raise ConfigError(name, f"must be a string, got {value!r}")
        if not empty and not value:
            raise ConfigError(name, "must not be empty")
        if choices is not None and value not in choices:
            raise ConfigError(name, f"unknown value {value!r}; known: {', '.join(choices)}")
        return value

    def int(self, name: builtins.str, default: Any = _REQUIRED, *, min: builtins.int | None = None, max: builtins.int | None = None) -> Any:
        value = self._get(name, default)
        if value is default and name not in self._table:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"must be an integer, got {value!r}")
        if min is not None and value < min:
            raise ConfigError(name, f"must be at least {min}, got {value}")
        if max is not None and value > max:
            raise ConfigError(name, f"must be at most {max}, got {value}")
        return value

    def float(
        self, name: builtins.str, default: Any = _REQUIRED, *, min: builtins.float | None = None, max: builtins.float | None = None
    ) -> Any:
        value = self._get(name, default)
        if value is default and name not in self._table:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(name, f"must be a number, got {value!r}")
        if min is not None and value < min:
            raise ConfigError(name, f"must be at least {min}, got {value}")
        if max is not None and value > max:
            raise ConfigError(name, f"must be at most {max}, got {value}")
        return float(value)

    def bool(self, name: builtins.str, default: Any = _REQUIRED) -> Any:
        value = self._get(name, default)
        if value is default and name not in self._table:
            return value
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r}")
        return value

    def str_list(self, name: builtins.str, default: Any = _REQUIRED) -> Any:
        value = self._get(name, default)
        if value is default and name not in self._table:
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(name, f"must be a list of non-empty strings, got {value!r}")
        return list(value)

    def path(self, name: builtins.str, default: Any = _REQUIRED) -> Any:
        """A filesystem path; relative ones resolve against the config file's directory."""
        value = self.str(name, default)
        return None if value is None else _resolve(Path(value))

    def table(self, name: builtins.str, default: Any = _REQUIRED) -> Any:
        value = self._get(name, default)
        if value is default and name not in self._table:
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(name, f"must be a table, got {value!r}")
        return dict(value)

    def raw(self, name: builtins.str, default: Any = _REQUIRED) -> Any:
        """The value as written, unchecked (the caller checks it)."""
        return self._get(name, default)

    def done(self) -> None:
        """Refuse keys no getter asked for."""
        unknown = sorted(set(self._table) - self._used)
        if unknown:
            known_keys = ", ".join(sorted(self._used)) or "none"
            raise ConfigError(unknown[0], f"unknown option; known: {known_keys}")


def _resolve(path: Path) -> Path:
    base = config_dir.get()
    if not path.is_absolute() and base is not None:
        return base / path
    return path
