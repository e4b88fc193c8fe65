"""``config.toml``: parsed once, validated completely, into frozen typed sections.

:func:`load_config` reads a file (or a dict) and returns a :class:`GaussConfig`.
Each section is a frozen :class:`~gauss.registry.PluginConfig` struct
(:class:`HubSettings`, :class:`~gauss.http.options.ApiOptions`,
:class:`TopicSpec`, :class:`SourceSpec`, :class:`ProcessorSpec`,
:class:`SinkSpec`), and every plugin a section names is converted into its
own config struct through :mod:`gauss.registry`. Every mistake (TOML syntax,
unknown key, unknown plugin type, bad value, duplicate topic, a reference to
a topic that does not exist, a binary codec on ``lines`` framing, checked by
:class:`gauss.wire.WireConfig`) raises one :class:`ConfigError` naming the
file, the key path and the reason, e.g.
``config.toml: sources[0].queue_size: Expected int >= 1, got 0``.

A configuration *file* may refer to the environment in any string value
(SPEC section 3): ``${NAME}`` is the value of ``NAME`` (unset: a
``ConfigError`` naming the file, the key and the variable) and
``${NAME:-default}`` is ``default`` where ``NAME`` is unset or empty;
``$${`` writes a literal ``${``. Expansion happens once, right after the
TOML is read, so every check below sees the expanded values; a value stays a
string (``port = "${PORT}"`` is a string, and refused as a port).

Nothing is built here: the structs are what :mod:`gauss.hub` builds the
running plugins from, once. Relative paths are made absolute by each
struct's ``Path`` fields (:meth:`~gauss.registry.PluginConfig.resolve_paths`)
against the file's directory.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Mapping, Sequence

import msgspec

from gauss import registry
from gauss.core import DEFAULT_MAX_FRAME_BYTES
from gauss.errors import ConfigError
from gauss.http.options import ApiOptions
from gauss.protocols import ListeningConfig, PublishingConfig, ReplayableStorage, missing_members
from gauss.quotes import DEFAULT_MAX_FUTURE_MS, DEFAULT_MAX_KEY_BYTES
from gauss.records import DataFormat, OverflowPolicy
from gauss.registry import PluginConfig, PluginSpec, StorageSpec, TransportSpec, configure, convert, default
from gauss.wire import WireConfig

__all__ = [
    "GaussConfig",
    "HubSettings",
    "TopicSpec",
    "SourceSpec",
    "ProcessorSpec",
    "SinkSpec",
    "load_config",
    "expand_env",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_MAX_INFLATE_BYTES",
]

DEFAULT_QUEUE_SIZE = 100_000
"""Records a source, processor or sink-client queue holds by default."""

DEFAULT_MAX_INFLATE_BYTES = 4 << 20
"""Bytes a source's middleware may inflate the frames of one read to (issue 11: 248 MiB from one 256 KiB read)."""

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(ge=0.0)]
Name = Annotated[str, msgspec.Meta(min_length=1)]


class HubSettings(PluginConfig, frozen=True):
    """``[hub]``: engine-wide settings."""

    status_interval: Seconds = 10.0
    """Seconds between status lines in the log (0: none)."""
    shutdown_timeout: Seconds = 5.0
    """Seconds a stop may spend draining queues before it gives up on them."""


class TopicSpec(PluginConfig, frozen=True):
    """``[[topics]]``: a topic, or a template (a name ending in ``*``) for topics made on first publish.

    In a template's ``storage`` and ``journal``, ``{name}`` and ``{suffix}``
    stand for the topic's name and what the template's ``*`` matched.
    """

    name: Name
    format: DataFormat = DataFormat.ANY
    storage: StorageSpec = msgspec.field(default_factory=default(StorageSpec, "memory"))
    create: tuple[Name, ...] = ()
    """Names of a template's topics to create at start (so they are queryable before any publish)."""
    journal: StorageSpec | None = None
    """A durable storage every batch is written to before ``storage`` (a tick log); the topic is rebuilt from it at start."""

    def __post_init__(self) -> None:
        if "*" in self.name[:-1]:
            raise ConfigError("name", f"'*' may only end a template name, got {self.name!r}")
        if self.create and not self.is_template:
            raise ConfigError("create", "only a template (a name ending in '*') lists topics to create")
        for i, made in enumerate(self.create):
            if not self.matches(made):
                raise ConfigError(f"create[{i}]", f"{made!r} does not match the template {self.name!r}")
        if self.journal is not None and missing_members(self.journal.plugin, ReplayableStorage, methods_only=True):
            raise ConfigError("journal.type", f"storage {self.journal.type!r} cannot replay its records, so it cannot be a journal")

    @property
    def is_template(self) -> bool:
        return self.name.endswith("*")

    @property
    def storage_type(self) -> str:
        return self.storage.type

    def matches(self, name: str) -> bool:
        if not self.is_template:
            return name == self.name
        prefix = self.name[:-1]
        return name.startswith(prefix) and len(name) > len(prefix)

    def build_storage(self, name: str) -> Any:
        """A new storage for topic ``name`` (``{name}``/``{suffix}`` substituted in its text options)."""
        return self._for(self.storage, name).build()

    def build_journal(self, name: str) -> Any:
        """A new journal for topic ``name``, or None when the topic keeps none."""
        return None if self.journal is None else self._for(self.journal, name).build()

    def _for(self, spec: PluginSpec, name: str) -> PluginSpec:
        suffix = name[len(self.name) - 1 :] if self.is_template else name
        return spec.substitute({"{name}": name, "{suffix}": suffix})


class SourceSpec(WireConfig, frozen=True, kw_only=True):
    """``[[sources]]``: transport -> framing -> middleware* -> codec -> queue -> topic."""

    topic: Name
    transport: TransportSpec
    queue_size: PositiveInt = DEFAULT_QUEUE_SIZE
    policy: OverflowPolicy = OverflowPolicy.BACK_PRESSURE
    max_frame_bytes: PositiveInt = DEFAULT_MAX_FRAME_BYTES
    """The largest frame; the framing's own ``max_frame_bytes`` wins when its table sets one."""
    max_future_ms: Annotated[int, msgspec.Meta(ge=0)] | bool | None = DEFAULT_MAX_FUTURE_MS
    """How far ahead of the clock a quote's ``ts_ms`` may be; ``false`` in the table lifts the check (None here)."""
    check_prices: bool = True
    dead_letter: Name | None = None
    """A topic that keeps the frames and records this source refused."""
    name: Name | None = None
    max_inflate_bytes: PositiveInt = DEFAULT_MAX_INFLATE_BYTES
    max_key_bytes: PositiveInt = DEFAULT_MAX_KEY_BYTES
    """The longest key (UTF-8 bytes) a record from this source may have (SPEC section 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_future_ms is True:
            raise ConfigError("max_future_ms", "must be a non-negative integer, or false to lift the check; got true")
        if self.max_future_ms is False:
            msgspec.structs.force_setattr(self, "max_future_ms", None)

    def build_transport(self) -> Any:
        return self.transport.build()

    def build_wire(self) -> Any:
        """Framing (with the source's ``max_frame_bytes``), middleware and codec."""
        from gauss.wire import WireFormat

        return WireFormat.from_config(self, max_frame_bytes=self.max_frame_bytes)


class ProcessorSpec(PluginConfig, frozen=True):
    """``[[processors]]``: the engine's keys; every other key of the table is the processor's own (``plugin``)."""

    type: Name
    topic: Name
    queue_size: PositiveInt = DEFAULT_QUEUE_SIZE
    policy: OverflowPolicy = OverflowPolicy.BACK_PRESSURE
    plugin: PluginSpec | None = None
    """The processor chosen by ``type`` and configured from the other keys (set by :func:`load_config`)."""

    ENGINE_KEYS = ("type", "topic", "queue_size", "policy")

    def build(self) -> Any:
        """A new processor (the hub checks it implements :class:`~gauss.protocols.TopicProcessor`)."""
        assert self.plugin is not None, "a ProcessorSpec from load_config has its plugin"
        return self.plugin.build()


class SinkSpec(PluginConfig, frozen=True):
    """``[[sinks]]``: the engine's keys; every other key of the table is the sink's own (``plugin``)."""

    topic: Name
    type: Name = "stream"
    queue_size: PositiveInt = DEFAULT_QUEUE_SIZE
    policy: OverflowPolicy = OverflowPolicy.DROP
    name: Name | None = None
    plugin: PluginSpec | None = None
    """The sink chosen by ``type`` and configured from the other keys (set by :func:`load_config`)."""

    ENGINE_KEYS = ("type", "topic", "queue_size", "policy", "name")

    def build(self) -> Any:
        """A new sink (the hub checks it implements :class:`~gauss.protocols.TopicSink`)."""
        assert self.plugin is not None, "a SinkSpec from load_config has its plugin"
        return self.plugin.build()


@dataclass(frozen=True)
class GaussConfig:
    """A whole validated configuration."""

    api: ApiOptions | None = None
    """``[api]``; None when the configuration has no ``[api]`` table (then the hub serves no API)."""
    hub: HubSettings = HubSettings()
    topics: tuple[TopicSpec, ...] = ()
    sources: tuple[SourceSpec, ...] = ()
    processors: tuple[ProcessorSpec, ...] = ()
    sinks: tuple[SinkSpec, ...] = ()
    file: str | None = None
    """The file it was read from (None for a dict)."""
    base_dir: Path | None = None
    """Where relative paths resolve."""


# --- loading -------------------------------------------------------------------

_SECTIONS = ("api", "hub", "topics", "sources", "processors", "sinks")


_REFERENCE = re.compile(r"\$\$\{|\$\{(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\})?")


def expand_env(value: Any, environ: Mapping[str, str], where: str = "") -> Any:
    """``value`` (a parsed TOML table, list or value) with ``${NAME}`` references expanded.

    Raises :class:`ConfigError` at the key path ``where`` for an unset
    ``NAME`` without a default, or a ``${`` that is not a reference.
    """
    if isinstance(value, str):
        if "${" not in value:
            return value

        def expand(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name = match.group("name")
            if name is None:
                raise ConfigError(
                    where, f"malformed reference in {value!r}: write ${{NAME}} or ${{NAME:-default}}, or $${{ for a literal ${{"
                )
            got = environ.get(name)
            default = match.group("default")
            if default is not None:
                return got if got else default
            if got is None:
                raise ConfigError(
                    where, f"environment variable {name} is not set (used as ${{{name}}}; ${{{name}:-default}} gives a default)"
                )
            return got

        return _REFERENCE.sub(expand, value)
    if isinstance(value, Mapping):
        return {k: expand_env(v, environ, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, environ, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def load_config(
    source: str | Path | Mapping[str, Any],
    *,
    base_dir: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> GaussConfig:
    """Read and validate a configuration file (path) or an already-parsed dict.

    Relative paths resolve against the file's directory, or ``base_dir``
    (default: the working directory) for a dict. A file's ``${NAME}``
    references are expanded from ``environ`` (default ``os.environ``); a
    dict is taken as it is. Raises :class:`ConfigError`.
    """
    if isinstance(source, Mapping):
        file = None
        base = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
        data: Mapping[str, Any] = source
    else:
        file = str(source)
        path = Path(source)
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise ConfigError("", f"cannot read: {exc.strerror or exc}", file=file) from None
        except UnicodeDecodeError as exc:
            raise ConfigError("", f"not UTF-8: {exc}", file=file) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("", f"invalid TOML: {exc}", file=file) from None
        try:
            data = expand_env(data, os.environ if environ is None else environ)
        except ConfigError as exc:
            raise exc.in_file(file) from None
        base = Path(base_dir).resolve() if base_dir is not None else path.resolve().parent
    try:
        return _parse(data, file, base)
    except ConfigError as exc:
        raise exc.in_file(file) if file else exc from None


def _tables(data: Mapping[str, Any], name: str) -> list[tuple[str, Mapping[str, Any]]]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(name, f"must be an array of tables ([[{name}]]), got {value!r}")
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise ConfigError(f"{name}[{i}]", f"must be a table, got {item!r}")
    return [(f"{name}[{i}]", item) for i, item in enumerate(value)]


def _section(where: str, table: Any, config_type: type[registry.C], base: Path) -> registry.C:
    try:
        return convert(table, config_type, base_dir=base)
    except ConfigError as exc:
        raise exc.at(where) from None


def _flat(where: str, table: Mapping[str, Any], spec_type: type[ProcessorSpec] | type[SinkSpec], kind: str, base: Path) -> Any:
    """A processor or sink table: the engine's keys into ``spec_type``, the rest into the plugin ``type`` names."""
    if "plugin" in table:
        raise ConfigError(f"{where}.plugin", "unknown option")
    engine = {k: v for k, v in table.items() if k in spec_type.ENGINE_KEYS}
    spec = _section(where, engine, spec_type, base)
    own = {k: v for k, v in table.items() if k not in spec_type.ENGINE_KEYS}
    plugin = configure(kind, {"type": spec.type, **own}, where=where, base_dir=base)
    return msgspec.structs.replace(spec, plugin=plugin)


def _parse(data: Mapping[str, Any], file: str | None, base: Path) -> GaussConfig:
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown section; known: {', '.join(_SECTIONS)}")
    api = _section("api", data["api"], ApiOptions, base) if "api" in data else None
    hub = _section("hub", data.get("hub", {}), HubSettings, base)
    topics = tuple(_section(where, table, TopicSpec, base) for where, table in _tables(data, "topics"))
    _check_topic_names(topics)

    def known_topic(where: str, name: str) -> None:
        if not any(spec.matches(name) for spec in topics):
            names = ", ".join(spec.name for spec in topics) or "none"
            raise ConfigError(where, f"topic {name!r} does not exist; topics: {names}")

    sources = []
    for where, table in _tables(data, "sources"):
        source = _section(where, table, SourceSpec, base)
        known_topic(f"{where}.topic", source.topic)
        if source.dead_letter is not None:
            known_topic(f"{where}.dead_letter", source.dead_letter)
        sources.append(source)
    processors = []
    for where, table in _tables(data, "processors"):
        processor = _flat(where, table, ProcessorSpec, "processor", base)
        known_topic(f"{where}.topic", processor.topic)
        assert processor.plugin is not None
        if isinstance(processor.plugin.config, PublishingConfig):
            for key, name in processor.plugin.config.published_topics():
                known_topic(f"{where}.{key}", name)
        processors.append(processor)
    sinks = []
    for where, table in _tables(data, "sinks"):
        sink = _flat(where, table, SinkSpec, "sink", base)
        known_topic(f"{where}.topic", sink.topic)
        sinks.append(sink)
    _check_listeners([("api", api), *(_where(sources, "sources")), *(_where(sinks, "sinks"))])
    return GaussConfig(api, hub, topics, tuple(sources), tuple(processors), tuple(sinks), file, base)


def _where(specs: Sequence[Any], section: str) -> list[tuple[str, Any]]:
    return [(f"{section}[{i}]", spec) for i, spec in enumerate(specs)]


_ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})


def _check_listeners(sections: Sequence[tuple[str, Any]]) -> None:
    """Refuse two listeners on one address: the second would fail to start with EADDRINUSE."""
    seen: list[tuple[str, str, int]] = []
    for where, section in sections:
        for key, bind, port in _listeners(where, section):
            if not port:
                continue
            for other_key, other_bind, other_port in seen:
                if port == other_port and (bind == other_bind or {bind, other_bind} & _ANY_ADDRESS):
                    raise ConfigError(key, f"{bind}:{port} is also where {other_key} listens; give each listener its own port")
            seen.append((key, "127.0.0.1" if bind == "localhost" else bind, port))


def _listeners(where: str, value: Any) -> Iterator[tuple[str, str, int]]:
    """``(key of the port, bind, port)`` of every :class:`ListeningConfig` in a section, its plugins' included."""
    if isinstance(value, PluginSpec):
        yield from _listeners(where, value.config)
        return
    if not isinstance(value, msgspec.Struct):
        return
    if isinstance(value, ListeningConfig):
        bind, port = value.listen_address()
        yield f"{where}.port", bind, port
    for name in value.__struct_fields__:
        # A flat table's own keys (a sink's transport) sit beside the engine's: no "plugin" in their path.
        yield from _listeners(where if name == "plugin" else f"{where}.{name}", getattr(value, name))


def _check_topic_names(topics: Sequence[TopicSpec]) -> None:
    seen: dict[str, str] = {}
    for i, spec in enumerate(topics):
        where = f"topics[{i}]"
        if spec.name in seen:
            raise ConfigError(f"{where}.name", f"duplicate topic name {spec.name!r} (also {seen[spec.name]})")
        seen[spec.name] = where
        for made in spec.create:
            if made in seen:
                raise ConfigError(f"{where}.create", f"duplicate topic name {made!r} (also {seen[made]})")
            seen[made] = f"{where}.create"
