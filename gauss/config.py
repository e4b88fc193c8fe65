"""``config.toml``: parsed once, validated completely, into frozen typed specs.

:func:`load_config` reads a file (or a dict) and returns a :class:`GaussConfig`.
Every mistake (TOML syntax, unknown key, unknown plugin type, bad value,
duplicate topic, a reference to a topic that does not exist, a binary codec
on ``lines`` framing, checked by :class:`gauss.wire.WireFormat`) raises one :class:`ConfigError` naming the file, the
key path and the reason, e.g.
``config.toml: sources[0].framing.type: unknown framing 'line'; known: lines, length-prefixed``.

A configuration *file* may refer to the environment in any string value
(SPEC section 3): ``${NAME}`` is the value of ``NAME`` (unset: a
``ConfigError`` naming the file, the key and the variable) and
``${NAME:-default}`` is ``default`` where ``NAME`` is unset or empty;
``$${`` writes a literal ``${``. Expansion happens once, right after the
TOML is read, so every check below sees the expanded values; a value stays a
string (``port = "${PORT}"`` is a string, and refused as a port).

Validation builds every plugin once (and throws it away), so a plugin's
own option checks run at load time too; factories must therefore be cheap
and must not touch the network or the disk (storages do that in ``open``).
The specs keep the plugin tables; :mod:`gauss.hub` builds the real
instances from them.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from gauss import registry
from gauss.core import DEFAULT_MAX_FRAME_BYTES
from gauss.errors import ConfigError
from gauss.protocols import ReplayableStorage, TopicProcessor, TopicSink, require
from gauss.quotes import DEFAULT_MAX_FUTURE_MS, DEFAULT_MAX_KEY_BYTES
from gauss.records import DataFormat, OverflowPolicy
from gauss.registry import Options
from gauss.wire import WireFormat, middleware_list

__all__ = [
    "GaussConfig",
    "ApiSettings",
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

Table = Mapping[str, Any]


@contextlib.contextmanager
def _config_dir(base_dir: Path | None) -> Iterator[None]:
    token = registry.config_dir.set(base_dir)
    try:
        yield
    finally:
        registry.config_dir.reset(token)


def _plugin_table(value: Any, kind: str, where: str) -> dict[str, Any]:
    """A plugin given as a bare type name or a table, as a table with ``type``."""
    if isinstance(value, str):
        return {"type": value}
    if isinstance(value, Mapping):
        if "type" not in value:
            raise ConfigError(f"{where}.type", f"missing; known {kind} types: {', '.join(registry.known(kind))}")
        return dict(value)
    raise ConfigError(where, f"must be a {kind} type name or a table with a 'type', got {value!r}")


def _substitute(value: Any, name: str, suffix: str) -> Any:
    if isinstance(value, str):
        return value.replace("{name}", name).replace("{suffix}", suffix)
    if isinstance(value, Mapping):
        return {k: _substitute(v, name, suffix) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, name, suffix) for v in value]
    return value


@dataclass(frozen=True)
class ApiSettings:
    """``[api]``: where the HTTP/WebSocket API listens; other keys are the API's own."""

    bind: str = "127.0.0.1"
    port: int = 9200
    options: dict[str, Any] = field(default_factory=dict)
    enabled: bool = False
    """True when the configuration has an ``[api]`` table: only then does the hub serve the API."""


@dataclass(frozen=True)
class HubSettings:
    """``[hub]``: engine-wide settings."""

    status_interval: float = 10.0
    """Seconds between status lines in the log (0: none)."""
    shutdown_timeout: float = 5.0
    """Seconds a stop may spend draining queues before it gives up on them."""


@dataclass(frozen=True)
class TopicSpec:
    """``[[topics]]``: a topic, or a template (a name ending in ``*``) for topics made on first publish."""

    name: str
    format: DataFormat = DataFormat.ANY
    storage: Table = field(default_factory=lambda: {"type": "memory"})
    create: tuple[str, ...] = ()
    """Names of a template's topics to create at start (so they are queryable before any publish)."""
    base_dir: Path | None = None
    where: str = ""
    journal: Table | None = None
    """A durable storage every batch is written to before ``storage`` (a tick log); the topic is rebuilt from it at start."""

    @property
    def is_template(self) -> bool:
        return self.name.endswith("*")

    @property
    def storage_type(self) -> str:
        return str(self.storage.get("type"))

    def matches(self, name: str) -> bool:
        if not self.is_template:
            return name == self.name
        prefix = self.name[:-1]
        return name.startswith(prefix) and len(name) > len(prefix)

    def build_storage(self, name: str) -> Any:
        """A new storage for topic ``name`` (``{name}``/``{suffix}`` substituted in string values)."""
        return self._build("storage", self.storage, name)

    def build_journal(self, name: str) -> Any:
        """A new journal for topic ``name``, or None when the topic keeps none."""
        return None if self.journal is None else self._build("journal", self.journal, name)

    def _build(self, key: str, table: Table, name: str) -> Any:
        suffix = name[len(self.name) - 1 :] if self.is_template else name
        with _config_dir(self.base_dir):
            return registry.create("storage", _substitute(table, name, suffix), where=f"{self.where}.{key}" if self.where else key)


@dataclass(frozen=True)
class SourceSpec:
    """``[[sources]]``: transport -> framing -> middleware* -> codec -> queue -> topic."""

    topic: str
    transport: Table
    framing: Table = field(default_factory=lambda: {"type": "lines"})
    codec: Table = field(default_factory=lambda: {"type": "json"})
    middleware: tuple[Table, ...] = ()
    queue_size: int = DEFAULT_QUEUE_SIZE
    policy: OverflowPolicy = OverflowPolicy.BACK_PRESSURE
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_future_ms: int | None = DEFAULT_MAX_FUTURE_MS
    check_prices: bool = True
    dead_letter: str | None = None
    name: str | None = None
    base_dir: Path | None = None
    where: str = ""
    max_inflate_bytes: int = DEFAULT_MAX_INFLATE_BYTES
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES
    """The longest key (UTF-8 bytes) a record from this source may have (SPEC section 1)."""

    def _create(self, kind: str, table: Table, key: str) -> Any:
        with _config_dir(self.base_dir):
            return registry.create(kind, table, where=f"{self.where}.{key}" if self.where else key)

    def build_transport(self) -> Any:
        return self._create("transport", self.transport, "transport")

    def build_wire(self) -> WireFormat:
        """Framing (with the source's ``max_frame_bytes``), middleware and codec; checks SPEC section 2."""
        framing = dict(self.framing)
        framing.setdefault("max_frame_bytes", self.max_frame_bytes)
        with _config_dir(self.base_dir):
            return WireFormat.build(framing, self.codec, self.middleware, where=self.where)


@dataclass(frozen=True)
class ProcessorSpec:
    """``[[processors]]``: reads ``topic``; every key but the engine's goes to the factory."""

    type: str
    topic: str
    options: Table = field(default_factory=dict)
    queue_size: int = DEFAULT_QUEUE_SIZE
    policy: OverflowPolicy = OverflowPolicy.BACK_PRESSURE
    base_dir: Path | None = None
    where: str = ""

    def build(self) -> TopicProcessor:
        """The processor, refused here when it does not implement :class:`~gauss.protocols.TopicProcessor`."""
        with _config_dir(self.base_dir):
            processor = registry.create("processor", {"type": self.type, **self.options}, where=self.where)
        return require(processor, TopicProcessor, kind="processor", name=self.type, where=self.where)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class SinkSpec:
    """``[[sinks]]``: sends ``topic`` out; every key but the engine's goes to the factory."""

    topic: str
    type: str = "stream"
    options: Table = field(default_factory=dict)
    queue_size: int = DEFAULT_QUEUE_SIZE
    policy: OverflowPolicy = OverflowPolicy.DROP
    name: str | None = None
    base_dir: Path | None = None
    where: str = ""

    def build(self) -> TopicSink:
        """The sink, refused here when it does not implement :class:`~gauss.protocols.TopicSink`."""
        with _config_dir(self.base_dir):
            sink = registry.create("sink", {"type": self.type, **self.options}, where=self.where)
        return require(sink, TopicSink, kind="sink", name=self.type, where=self.where)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class GaussConfig:
    """A whole validated configuration."""

    api: ApiSettings = field(default_factory=ApiSettings)
    hub: HubSettings = field(default_factory=HubSettings)
    topics: tuple[TopicSpec, ...] = ()
    sources: tuple[SourceSpec, ...] = ()
    processors: tuple[ProcessorSpec, ...] = ()
    sinks: tuple[SinkSpec, ...] = ()
    file: str | None = None
    """The file it was read from (None for a dict)."""
    base_dir: Path | None = None
    """Where relative paths resolve."""


# --- loading -------------------------------------------------------------------

_TOP_KEYS = ("api", "hub", "topics", "sources", "processors", "sinks")


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


def _table_list(data: Mapping[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(name, f"must be an array of tables ([[{name}]]), got {value!r}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise ConfigError(f"{name}[{i}]", f"must be a table, got {item!r}")
        out.append((f"{name}[{i}]", dict(item)))
    return out


def _checked(where: str, parse: Any, *args: Any) -> Any:
    try:
        return parse(*args)
    except ConfigError as exc:
        raise exc.at(where) from None


def _parse(data: Mapping[str, Any], file: str | None, base: Path) -> GaussConfig:
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown section; known: {', '.join(_TOP_KEYS)}")
    api = _checked("api", _parse_api, data["api"]) if "api" in data else ApiSettings()
    hub = _checked("hub", _parse_hub, data.get("hub", {}))
    topics = tuple(_checked(w, _parse_topic, t, base, w) for w, t in _table_list(data, "topics"))
    _check_topic_names(topics)

    def known_topic(where: str, name: str) -> None:
        if not any(spec.matches(name) for spec in topics):
            names = ", ".join(spec.name for spec in topics) or "none"
            raise ConfigError(where, f"topic {name!r} does not exist; topics: {names}")

    sources = []
    for where, table in _table_list(data, "sources"):
        spec = _checked(where, _parse_source, table, base, where)
        known_topic(f"{where}.topic", spec.topic)
        if spec.dead_letter is not None:
            known_topic(f"{where}.dead_letter", spec.dead_letter)
        sources.append(spec)
    processors = []
    for where, table in _table_list(data, "processors"):
        spec = _checked(where, _parse_processor, table, base, where)
        known_topic(f"{where}.topic", spec.topic)
        processors.append(spec)
    sinks = []
    for where, table in _table_list(data, "sinks"):
        spec = _checked(where, _parse_sink, table, base, where)
        known_topic(f"{where}.topic", spec.topic)
        sinks.append(spec)
    # Build every plugin once so that each one's own option checks run now.
    for topic in topics:
        first = topic.create[0] if topic.create else topic.name
        topic.build_storage(first)
        journal = topic.build_journal(first)
        if journal is not None and not isinstance(journal, ReplayableStorage):
            raise ConfigError(f"{topic.where}.journal.type", f"storage {topic.journal['type']!r} cannot replay its records, so it cannot be a journal")
    for source in sources:
        _check_source_plugins(source)
    for processor in processors:
        processor.build()
    for sink in sinks:
        sink.build()
    return GaussConfig(api, hub, topics, tuple(sources), tuple(processors), tuple(sinks), file, base)


def _parse_api(table: Any) -> ApiSettings:
    opts = Options(table)
    bind = opts.str("bind", "127.0.0.1")
    port = opts.int("port", 9200, min=0, max=65535)
    options = {k: v for k, v in dict(table).items() if k not in ("bind", "port")}
    from gauss.http.options import ApiOptions  # the API's own keys, checked now (exit 2 on a mistake)

    ApiOptions.parse(options, environ={})
    return ApiSettings(bind, port, options, enabled=True)


def _parse_hub(table: Any) -> HubSettings:
    opts = Options(table)
    settings = HubSettings(
        status_interval=opts.float("status_interval", 10.0, min=0.0),
        shutdown_timeout=opts.float("shutdown_timeout", 5.0, min=0.0),
    )
    opts.done()
    return settings


def _parse_format(opts: Options) -> DataFormat:
    value = opts.str("format", "any", choices=[f.value for f in DataFormat])
    return DataFormat(value)


def _parse_policy(opts: Options, default: OverflowPolicy) -> OverflowPolicy:
    value = opts.str("policy", default.value, choices=[p.value for p in OverflowPolicy])
    return OverflowPolicy(value)


def _parse_topic(table: dict[str, Any], base: Path, where: str) -> TopicSpec:
    opts = Options(table)
    name = opts.str("name")
    if "*" in name[:-1]:
        raise ConfigError("name", f"'*' may only end a template name, got {name!r}")
    data_format = _parse_format(opts)
    storage = _plugin_table(opts.raw("storage", {"type": "memory"}), "storage", "storage")
    create = tuple(opts.str_list("create", []))
    journal_table = opts.raw("journal", None)
    journal = None if journal_table is None else _plugin_table(journal_table, "storage", "journal")
    opts.done()
    spec = TopicSpec(name, data_format, storage, create, base, where, journal)
    if create and not spec.is_template:
        raise ConfigError("create", "only a template (a name ending in '*') lists topics to create")
    for i, made in enumerate(create):
        if not spec.matches(made):
            raise ConfigError(f"create[{i}]", f"{made!r} does not match the template {name!r}")
    return spec


def _check_topic_names(topics: Sequence[TopicSpec]) -> None:
    seen: dict[str, str] = {}
    for spec in topics:
        if spec.name in seen:
            raise ConfigError(f"{spec.where}.name", f"duplicate topic name {spec.name!r} (also {seen[spec.name]})")
        seen[spec.name] = spec.where
        for made in spec.create:
            if made in seen:
                raise ConfigError(f"{spec.where}.create", f"duplicate topic name {made!r} (also {seen[made]})")
            seen[made] = f"{spec.where}.create"


def _parse_source(table: dict[str, Any], base: Path, where: str) -> SourceSpec:
    opts = Options(table)
    topic = opts.str("topic")
    transport = _plugin_table(opts.raw("transport"), "transport", "transport")
    framing = _plugin_table(opts.raw("framing", "lines"), "framing", "framing")
    codec = _plugin_table(opts.raw("codec", "json"), "codec", "codec")
    middleware_value = middleware_list(opts.raw("middleware", []))
    middleware = tuple(_plugin_table(m, "middleware", f"middleware[{i}]") for i, m in enumerate(middleware_value))
    queue_size = opts.int("queue_size", DEFAULT_QUEUE_SIZE, min=1)
    policy = _parse_policy(opts, OverflowPolicy.BACK_PRESSURE)
    max_frame_bytes = opts.int("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES, min=1)
    max_inflate_bytes = opts.int("max_inflate_bytes", DEFAULT_MAX_INFLATE_BYTES, min=1)
    max_future_raw = opts.raw("max_future_ms", DEFAULT_MAX_FUTURE_MS)
    if max_future_raw is False:
        max_future_ms = None
    elif isinstance(max_future_raw, int) and not isinstance(max_future_raw, bool) and max_future_raw >= 0:
        max_future_ms = max_future_raw
    else:
        raise ConfigError("max_future_ms", f"must be a non-negative integer, or false to lift the check; got {max_future_raw!r}")
    check_prices = opts.bool("check_prices", True)
    max_key_bytes = opts.int("max_key_bytes", DEFAULT_MAX_KEY_BYTES, min=1)
    dead_letter = opts.str("dead_letter", None)
    name = opts.str("name", None)
    opts.done()
    return SourceSpec(
        topic, transport, framing, codec, middleware, queue_size, policy, max_frame_bytes,
        max_future_ms, check_prices, dead_letter, name, base, where, max_inflate_bytes,
        max_key_bytes=max_key_bytes,
    )  # fmt: skip


def _check_source_plugins(spec: SourceSpec) -> None:
    spec.build_transport()
    spec.build_wire()


def _parse_processor(table: dict[str, Any], base: Path, where: str) -> ProcessorSpec:
    opts = Options(table)
    type_name = opts.raw("type", None)
    if not isinstance(type_name, str) or not type_name:
        raise ConfigError("type", f"missing; known processor types: {', '.join(registry.known('processor'))}")
    topic = opts.str("topic")
    queue_size = opts.int("queue_size", DEFAULT_QUEUE_SIZE, min=1)
    policy = _parse_policy(opts, OverflowPolicy.BACK_PRESSURE)
    options = {k: v for k, v in table.items() if k not in ("type", "topic", "queue_size", "policy")}
    return ProcessorSpec(type_name, topic, options, queue_size, policy, base, where)


def _parse_sink(table: dict[str, Any], base: Path, where: str) -> SinkSpec:
    opts = Options(table)
    type_name = opts.str("type", "stream")
    topic = opts.str("topic")
    queue_size = opts.int("queue_size", DEFAULT_QUEUE_SIZE, min=1)
    policy = _parse_policy(opts, OverflowPolicy.DROP)
    name = opts.str("name", None)
    options = {k: v for k, v in table.items() if k not in ("type", "topic", "queue_size", "policy", "name")}
    return SinkSpec(topic, type_name, options, queue_size, policy, name, base, where)
