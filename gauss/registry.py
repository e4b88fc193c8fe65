"""Plugin lookup by short name, and the typed configuration plugins are made from.

A plugin is a class that declares its options as a frozen
:class:`PluginConfig` (a ``msgspec.Struct`` named ``Config``) and is made by
``from_config(config)`` (the :class:`Plugin` protocol). Its TOML table,
without the ``type`` key, is converted into that struct once: unknown keys,
wrong types and values out of range are refused there with the key's path,
so ``from_config`` never sees a bad option. Built-ins and third-party
plugins are Python entry points in one group per kind (``gauss.codecs``,
...); a configuration may also name ``package.module:Class`` directly.
"""

from __future__ import annotations

import enum
import functools
import importlib
import ipaddress
import math
import re
import socket
import typing
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, Self, TypeVar, runtime_checkable

import msgspec

from gauss import protocols
from gauss.errors import ConfigError, GaussError, UnknownPluginError
from gauss.protocols import require

__all__ = [
    "KINDS",
    "KIND_PROTOCOLS",
    "PluginConfig",
    "Plugin",
    "PluginSpec",
    "TransportSpec",
    "FramingSpec",
    "MiddlewareSpec",
    "CodecSpec",
    "StorageSpec",
    "known",
    "lookup",
    "configure",
    "create",
    "convert",
    "default",
    "check_bind",
]


KINDS: dict[str, str] = {
    "transport": "gauss.transports",
    "framing": "gauss.framings",
    "middleware": "gauss.middleware",
    "codec": "gauss.codecs",
    "storage": "gauss.storages",
    "processor": "gauss.processors",
    "sink": "gauss.sinks",
}


class PluginConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every plugin's and configuration section's options: frozen, no unknown keys.

    Constraints live in the field types (``Annotated[int, Meta(ge=1)]``);
    checks across fields in ``__post_init__`` (raise :class:`ConfigError`
    naming the key). A ``Path`` field is relative to the configuration
    file: :meth:`resolve_paths` makes it absolute.
    """

    def options(self, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """The fields as keyword arguments, for a ``from_config`` whose constructor takes them by the same names."""
        return {name: getattr(self, name) for name in self.__struct_fields__ if name not in exclude}

    def resolve_paths(self, base_dir: Path) -> Self:
        """This config with every relative ``Path`` in it (nested plugins included) made absolute against ``base_dir``.

        :func:`convert` resolves the paths a table gives while it reads them
        (so ``__post_init__`` sees where a file really is), then calls this for
        the defaults; a config holding a path in another type overrides it.
        """
        changes = {}
        for name in self.__struct_fields__:
            value = getattr(self, name)
            resolved = _resolved(value, base_dir)
            if resolved is not value:
                changes[name] = resolved
        return msgspec.structs.replace(self, **changes) if changes else self

    def substitute(self, replacements: Mapping[str, str]) -> Self:
        """This config with each placeholder replaced in its text and paths (a template topic's ``{name}``, ``{suffix}``)."""

        def replaced(value: Any) -> Any:
            if isinstance(value, str):
                for old, new in replacements.items():
                    value = value.replace(old, new)
                return value
            if isinstance(value, Path):
                text = replaced(str(value))
                return value if text == str(value) else Path(text)
            return value

        return self.map_values(replaced)

    def map_values(self, leaf: Callable[[Any], Any]) -> Self:
        """This config with ``leaf`` applied to every value in it (nested configs and tuples walked); unchanged: itself."""
        changes = {}
        for name in self.__struct_fields__:
            value = getattr(self, name)
            mapped = _map_value(value, leaf)
            if mapped is not value and mapped != value:
                changes[name] = mapped
        return msgspec.structs.replace(self, **changes) if changes else self


def _resolved(value: Any, base_dir: Path) -> Any:
    if isinstance(value, Path):
        return value if value.is_absolute() else base_dir / value
    if isinstance(value, (PluginConfig, PluginSpec)):
        return value.resolve_paths(base_dir)
    if isinstance(value, tuple):
        resolved = tuple(_resolved(v, base_dir) for v in value)
        return value if all(a is b for a, b in zip(resolved, value, strict=True)) else resolved
    return value


def _map_value(value: Any, leaf: Callable[[Any], Any]) -> Any:
    if isinstance(value, (PluginConfig, PluginSpec)):
        return value.map_values(leaf)
    if isinstance(value, tuple):
        mapped = tuple(_map_value(v, leaf) for v in value)
        return value if mapped == value else mapped
    return leaf(value)


@runtime_checkable
class Plugin(Protocol):
    """What a plugin class declares: its options struct and how it is made from them."""

    Config: ClassVar[type[PluginConfig]]

    @classmethod
    def from_config(cls, config: Any) -> Any: ...


C = TypeVar("C", bound=PluginConfig)


class PluginSpec:
    """A plugin chosen and configured: its class and its checked options, ready to :meth:`build`.

    As the type of a config field (one subclass per kind, e.g. :class:`CodecSpec`), it
    reads a plugin table or a bare type name: ``codec: CodecSpec``.
    """

    KIND: ClassVar[str] = ""
    """The kind a field of this type reads (empty for the base class)."""
    __slots__ = ("kind", "type", "plugin", "config")

    def __init__(self, kind: str, type: str, plugin: type[Any], config: PluginConfig) -> None:
        self.kind = kind
        self.type = type
        self.plugin = plugin
        self.config = config

    def build(self) -> Any:
        """A new instance (a source, a sink or each topic of a template builds its own)."""
        return self.plugin.from_config(self.config)

    def resolve_paths(self, base_dir: Path) -> Self:
        config = self.config.resolve_paths(base_dir)
        return self if config is self.config else type(self)(self.kind, self.type, self.plugin, config)

    def substitute(self, replacements: Mapping[str, str]) -> Self:
        """This plugin with placeholders replaced in its config (see :meth:`PluginConfig.substitute`)."""
        config = self.config.substitute(replacements)
        return self if config is self.config else type(self)(self.kind, self.type, self.plugin, config)

    def map_values(self, leaf: Callable[[Any], Any]) -> Self:
        config = self.config.map_values(leaf)
        return self if config is self.config else type(self)(self.kind, self.type, self.plugin, config)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PluginSpec) or type(other) is not type(self):
            return False
        return (self.kind, self.type, self.plugin, self.config) == (other.kind, other.type, other.plugin, other.config)

    def __hash__(self) -> int:
        return hash((self.type, self.plugin, self.config))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.type!r}, {self.config!r})"


class TransportSpec(PluginSpec):
    KIND = "transport"


class FramingSpec(PluginSpec):
    KIND = "framing"


class MiddlewareSpec(PluginSpec):
    KIND = "middleware"


class CodecSpec(PluginSpec):
    KIND = "codec"


class StorageSpec(PluginSpec):
    KIND = "storage"


_SPEC_TYPES: dict[str, type[PluginSpec]] = {
    cls.KIND: cls for cls in (TransportSpec, FramingSpec, MiddlewareSpec, CodecSpec, StorageSpec)
}


KIND_PROTOCOLS: dict[str, type] = {
    "transport": protocols.Transport,
    "framing": protocols.Framing,
    "middleware": protocols.Middleware,
    "codec": protocols.Codec,
    "storage": protocols.TopicStorage,
    "processor": protocols.TopicProcessor,
    "sink": protocols.TopicSink,
}
"""The protocol a plugin of each kind implements (gauss/protocols.py)."""


def _group(kind: str) -> str:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown plugin kind {kind!r}; known: {', '.join(KINDS)}") from None


def known(kind: str) -> list[str]:
    """The installed plugin names of ``kind``, sorted."""
    return sorted({ep.name for ep in entry_points(group=_group(kind))})


def lookup(kind: str, name: str) -> type[Plugin]:
    """The plugin class for ``name``: an entry point, or ``package.module:Class``; refused unless it is a :class:`Plugin`."""
    group = _group(kind)
    if not isinstance(name, str) or not name:
        raise UnknownPluginError("type", f"must name a {kind}; known: {', '.join(known(kind))}")
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UnknownPluginError("type", f"cannot load {kind} {name!r}: {exc}") from None
        return _plugin_class(kind, name, found)
    for ep in entry_points(group=group, name=name):
        try:
            return _plugin_class(kind, name, ep.load())
        except (ImportError, AttributeError) as exc:
            raise UnknownPluginError("type", f"{kind} {name!r} failed to load: {exc}") from None
    raise UnknownPluginError("type", f"unknown {kind} {name!r}; known: {', '.join(known(kind))}")


def _plugin_class(kind: str, name: str, found: object) -> type[Plugin]:
    config = found.__dict__.get("Config") if isinstance(found, type) else None
    if not (isinstance(config, type) and issubclass(config, PluginConfig) and isinstance(found, Plugin)):
        raise UnknownPluginError(
            "type",
            f"{kind} {name!r} ({found!r}) is not a plugin: it needs a Config class (a gauss.registry.PluginConfig) "
            "and a from_config(config) classmethod",
        )
    return found  # type: ignore[return-value]


def configure(kind: str, table: Mapping[str, Any] | str, *, where: str = "", base_dir: Path | None = None) -> PluginSpec:
    """Choose and configure a plugin of ``kind`` from its table (or a bare type name), without building it.

    Every :class:`ConfigError` raised names the full key path, prefixed with ``where``.
    """
    if isinstance(table, str):
        table = {"type": table}
    if not isinstance(table, Mapping):
        raise ConfigError(where, f"must be a {kind} type name or a table with a 'type', got {table!r}")
    options = dict(table)
    name = options.pop("type", None)
    try:
        if name is None:
            raise ConfigError("type", f"missing; known {kind} types: {', '.join(known(kind))}")
        plugin = lookup(kind, name)
        require(plugin, KIND_PROTOCOLS[kind], kind=kind, name=name)  # its methods; the instance once built
        config = convert(options, plugin.Config, base_dir=base_dir)
    except ConfigError as exc:
        raise exc.at(where) from None
    return _SPEC_TYPES.get(kind, PluginSpec)(kind, name, plugin, config)


S = TypeVar("S", bound=PluginSpec)


def default(spec_type: type[S], name: str) -> Callable[[], S]:
    """A ``default_factory`` for a plugin field: the plugin ``name``, configured with its defaults."""

    def make() -> S:
        spec = configure(spec_type.KIND, name)
        assert isinstance(spec, spec_type)
        return spec

    return make


def create(kind: str, table: Mapping[str, Any] | str, *, where: str = "", base_dir: Path | None = None) -> Any:
    """A plugin of ``kind`` built from its table (or a bare type name): :func:`configure`, then build."""
    return configure(kind, table, where=where, base_dir=base_dir).build()


def convert(table: Mapping[str, Any], config_type: type[C], *, base_dir: Path | None = None) -> C:
    """``table`` checked and converted into ``config_type``; a mistake raises :class:`ConfigError` naming its key.

    Messages are msgspec's, e.g. ``queue_size: Expected int >= 1, got 0``.
    Relative paths resolve against ``base_dir`` when one is given.
    """
    if not isinstance(table, Mapping):
        raise ConfigError("", f"must be a table, got {table!r}")
    try:
        config = msgspec.convert(dict(table), config_type, dec_hook=functools.partial(_decode, base_dir=base_dir))
    except msgspec.ValidationError as exc:
        raise _config_error(exc, table, config_type) from None
    _refuse_non_finite(config)
    return config.resolve_paths(base_dir) if base_dir is not None else config


def _decode(type_: type, value: Any, *, base_dir: Path | None) -> Any:
    """Types msgspec does not convert itself: ``Path`` (a non-empty string, resolved against ``base_dir``) and plugins."""
    if type_ is Path:
        if isinstance(value, str) and value:
            path = Path(value)
            return base_dir / path if base_dir is not None and not path.is_absolute() else path
        raise ValueError(f"Expected a path (a non-empty string), got {value!r}")
    if isinstance(type_, type) and issubclass(type_, PluginSpec) and type_.KIND:
        try:
            return configure(type_.KIND, value, base_dir=base_dir)
        except ConfigError as exc:
            raise _Nested(exc) from None
    raise NotImplementedError(f"cannot read a {type_!r} from a configuration")  # msgspec: a type the hook does not take


class _Nested(GaussError, ValueError):
    """A nested plugin's ConfigError carried through msgspec (which adds the path it sits at)."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__(error.reason)
        self.error = error


_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD = re.compile(r"^Object (?P<what>contains unknown|missing required) field `(?P<field>[^`]+)`$")
_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _config_error(exc: msgspec.ValidationError, table: Mapping[str, Any], config_type: type[msgspec.Struct]) -> ConfigError:
    match = _AT.match(str(exc))
    assert match is not None  # the pattern matches any text
    reason, path = match.group("reason"), (match.group("path") or "").lstrip(".")
    cause = exc.__cause__
    if isinstance(cause, _Nested):
        return cause.error.at(path)
    if isinstance(cause, ConfigError):  # raised by a __post_init__: its key is relative to the struct at path
        return cause.at(path) if path else cause
    field = _FIELD.match(reason)
    if field is not None:
        key = f"{path}.{field.group('field')}" if path else field.group("field")
        if field.group("what") == "missing required":
            return ConfigError(key, "missing (required)")
        known_keys = ", ".join(config_type.__struct_fields__) if not path else ""
        return ConfigError(key, f"unknown option; known: {known_keys}" if known_keys else "unknown option")
    reason = reason.replace("`", "")
    choices = _choices_at(config_type, path)
    if reason.startswith("Invalid enum value") and choices:
        return ConfigError(path, f"unknown value {reason.removeprefix('Invalid enum value ')}; known: {', '.join(choices)}")
    if reason.startswith("Expected") and ", got" not in reason:
        found, value = _value_at(table, path)
        if found:
            reason = f"{reason}, got {value!r}"
    return ConfigError(path, reason)


def _choices_at(config_type: type, path: str) -> list[str]:
    """The values an enum or ``Literal`` field may take, for the field ``path`` names in ``config_type`` (a direct one)."""
    for field in msgspec.structs.fields(config_type) if "." not in path and "[" not in path else ():
        if field.encode_name == path and str not in typing.get_args(field.type):  # a free text choice lists nothing
            for t in (field.type, *typing.get_args(field.type)):
                if isinstance(t, type) and issubclass(t, enum.Enum):
                    return [str(m.value) for m in t]
                if typing.get_origin(t) is typing.Literal:
                    return [str(v) for v in typing.get_args(t)]
    return []


def _value_at(table: Any, path: str) -> tuple[bool, Any]:
    value = table
    for name, index in _TOKEN.findall(f".{path}" if path and not path.startswith("[") else path):
        try:
            value = value[int(index)] if index else value[name]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, value


def _refuse_non_finite(config: PluginConfig) -> None:
    for name in config.__struct_fields__:
        value = getattr(config, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(name, f"must be a finite number, got {value!r}")


def check_bind(key: str, address: str) -> None:
    """Refuse a listen address that is neither an IP address nor a name resolving here (exit 2 naming ``key``, not a failed start)."""
    try:
        ipaddress.ip_address(address)
        return
    except ValueError:
        pass
    try:
        socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(key, f"{address!r} is neither an IP address nor a host name that resolves here ({exc})") from None
