"""The plugin protocols: what each stage of the data path must provide.

A source is ``Transport -> Framing -> Middleware* -> Codec -> topic``; a sink
is the mirror. Every stage moves *batches* (sequences), never one record at a
time. Plugins are created by a factory from their TOML table (see
:mod:`gauss.registry`).

A capability is declared here as a protocol and checked once, when the
plugin is built (:func:`require`, or ``isinstance`` for an optional one),
never probed with ``getattr`` on the data path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

from gauss.core import QuoteBatch, TopicRecord
from gauss.errors import ConfigError
from gauss.records import DataFormat, KeyInfo, OverflowPolicy, QueryResult, Rejected, TopicQuery

if TYPE_CHECKING:
    from gauss.metrics import Metrics
    from gauss.quotes import QuoteCheck
    from gauss.source import Source
    from gauss.topics import Topic

__all__ = [
    "Connection",
    "Transport",
    "FrameDecoder",
    "Framing",
    "Middleware",
    "FormatSerializer",
    "Codec",
    "QuoteCodec",
    "FramedQuoteEncoder",
    "TopicStorage",
    "HealthReportingStorage",
    "ReplayableStorage",
    "PublishContext",
    "RecoveryContext",
    "TopicProcessor",
    "RecoveringProcessor",
    "SkipCountingProcessor",
    "PublishingConfig",
    "ListeningConfig",
    "TopicSink",
    "RecordConnection",
    "CountingTransport",
    "FeedingTransport",
    "SinkAwareTransport",
    "missing_members",
    "require",
]


@runtime_checkable
class Connection(Protocol):
    """One open byte stream (a TCP connection, say)."""

    peer: str

    def recv(self, max_bytes: int = 65536) -> bytes:
        """Block (cooperatively) for the next chunk; ``b""`` at end of stream."""
        ...

    def sendall(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    @property
    def closed(self) -> bool:
        """True once closed (by either side): a sink stops serving it."""
        ...


@runtime_checkable
class Transport(Protocol):
    """Opens byte streams for a source or a sink: listens or dials."""

    description: str
    """Human-readable endpoint, e.g. ``tcp-server 127.0.0.1:9100``."""

    def serve(self, handler: Callable[[Connection], None]) -> None:
        """Start without blocking: run ``handler(conn)`` in its own greenlet per connection.

        A dialing transport reconnects (with capped back-off) whenever
        ``handler`` returns or the connection fails.
        """
        ...

    def close(self) -> None:
        """Stop listening or dialing and close every open connection."""
        ...


class FrameDecoder(Protocol):
    @property
    def buffered(self) -> int:
        """Bytes held of a frame not complete yet."""
        ...

    def feed(self, chunk: bytes) -> Sequence[bytes]:
        """Return the frames completed by ``chunk`` (a list, or any sequence of them); raises ``FrameTooLarge``."""
        ...


@runtime_checkable
class Framing(Protocol):
    name: str
    text_only: bool
    """True for ``lines``: only uncompressed text codecs may ride on it."""

    def decoder(self) -> FrameDecoder:
        """A fresh incremental decoder, one per connection."""
        ...

    def encode(self, payloads: Sequence[bytes]) -> bytes:
        """Frame a batch of payloads as one bytes object."""
        ...


@runtime_checkable
class Middleware(Protocol):
    """Transforms each payload between framing and codec (compression)."""

    name: str

    def decode(
        self, payloads: Sequence[bytes], max_bytes: int, budget: int | None = None
    ) -> tuple[list[bytes], list[Rejected]]:
        """Undo the transform of each payload.

        A payload that is corrupt or would grow past ``max_bytes`` is
        rejected, never expanded. ``budget`` (None: none) caps the bytes all
        payloads of the call may grow to together; a payload that would pass
        it is not expanded and ``InflateBudgetExceeded`` is raised.
        """
        ...

    def encode(self, payloads: Sequence[bytes]) -> list[bytes]: ...


@runtime_checkable
class FormatSerializer(Protocol):
    """Payload objects to bytes and back, one payload per frame."""

    name: str
    text: bool
    """True when payloads are text without newlines (may use ``lines``)."""

    def serialize(self, datas: Sequence[Any]) -> list[bytes]: ...

    def deserialize(self, payload: bytes) -> Any:
        """Raises ``DecodeError`` naming what is wrong."""
        ...


@runtime_checkable
class Codec(Protocol):
    """Payload bytes to records and back (``key``/``ts_ms`` read from the payload)."""

    name: str
    text: bool

    def decode(self, payloads: Sequence[bytes]) -> tuple[list[TopicRecord], list[Rejected]]: ...

    def encode(self, records: Sequence[TopicRecord]) -> list[bytes]:
        """Encode each record's ``data`` (a sink sends the payload, not the record)."""
        ...


@runtime_checkable
class QuoteCodec(Codec, Protocol):
    """A codec with a fused fast path for quote topics (every built-in quote codec has one).

    It gives the quotes as columns (:class:`~gauss.core.QuoteBatch`), what a
    quote topic publishes and stores. The built-ins share
    :mod:`gauss_plugins.format._payload`: json parses straight into columns
    (``JsonQuoteParser``, then :meth:`~gauss.quotes.QuoteCheck.check_columns`),
    the others read the six values and :meth:`~gauss.quotes.QuoteCheck.quote`
    checks them.

    A source feeding a ``DataFormat.QUOTE`` topic prefers it to ``decode``
    followed by ``check.check``; it must give the same result, in order.
    """

    def decode_quotes(
        self, payloads: Sequence[bytes], check: QuoteCheck
    ) -> tuple[QuoteBatch, list[Rejected], list[Rejected]]:
        """``(quotes, bad frames, refused quotes)`` of a batch of payloads."""
        ...


@runtime_checkable
class FramedQuoteEncoder(Protocol):
    """A codec that writes a quote batch straight into a framing's bytes: a sink's fused path.

    The built-in quote codecs have it: their compiled encoders frame each
    payload in place, so no ``bytes`` object a quote is made on the way out.
    A wire format without middleware uses it for :class:`QuoteBatch` batches.
    """

    def encode_quotes_framed(self, batch: QuoteBatch, framing: str) -> bytes | None:
        """What the built-in framing named ``framing`` makes of ``encode(batch)``, or None to leave the batch to that path."""
        ...


@runtime_checkable
class TopicStorage(Protocol):
    """Where a topic keeps its records. One instance serves one topic."""

    name: str
    durable: bool

    def open(self, topic: str, data_format: DataFormat) -> tuple[str, int]:
        """Prepare to store ``topic``; return ``(epoch, last_seq)``.

        A durable storage returns the epoch and last seq it kept; a volatile
        one a new epoch and 0.
        """
        ...

    def append(self, records: Sequence[TopicRecord]) -> None:
        """Store a batch of numbered records.

        For ``DataFormat.CANDLE`` a record replaces the stored one with the
        same ``(key, ts_ms)``.
        """
        ...

    def query(self, query: TopicQuery) -> QueryResult: ...

    def latest(self, key: str | None = None) -> list[TopicRecord]:
        """The newest record (by ``ts_ms``) of each key, or of ``key``."""
        ...

    def keys(self) -> list[KeyInfo]: ...

    def count(self) -> int:
        """Records held."""
        ...

    def bounds(self) -> tuple[int, int]:
        """The oldest and newest ``seq`` held; ``(0, 0)`` when empty."""
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class HealthReportingStorage(TopicStorage, Protocol):
    """A storage that reports figures of its own health (``gauss_storage_<figure>{topic, storage}``)."""

    def health(self) -> dict[str, float]:
        """Figures by name: healthy (1/0), buffered_records, dead_letter_records, ..."""
        ...


@runtime_checkable
class ReplayableStorage(TopicStorage, Protocol):
    """A durable storage that reads its records back in seq order: what a topic's journal must be."""

    def replay(self, since_seq: int = 0) -> Iterator[TopicRecord]:
        """Every record held with ``seq > since_seq``, ascending by seq."""
        ...


class PublishContext(Protocol):
    """What processors publish through (the topic registry)."""

    def publish(self, topic: str, records: Sequence[TopicRecord]) -> None: ...


@runtime_checkable
class RecoveryContext(PublishContext, Protocol):
    """A publish context that also reads topics (the topic registry)."""

    def query(self, topic: str, query: TopicQuery, /) -> QueryResult: ...


@runtime_checkable
class TopicProcessor(Protocol):
    """Reads batches of one topic and publishes derived records."""

    name: str
    flush_interval: float | None
    """Seconds between :meth:`flush` calls, or None for none."""

    def start(self, context: PublishContext) -> None: ...

    def process(self, topic: str, records: Sequence[TopicRecord], context: PublishContext) -> None: ...

    def flush(self, context: PublishContext) -> None:
        """Publish what is pending (also called once at stop)."""
        ...

    def stop(self, context: PublishContext) -> None: ...


@runtime_checkable
class SkipCountingProcessor(TopicProcessor, Protocol):
    """A processor that counts the input records it could not use (``gauss_processor_skipped_records_total``)."""

    @property
    def skipped_records(self) -> int: ...


@runtime_checkable
class ListeningConfig(Protocol):
    """A configuration of something that listens on a TCP port (a tcp-server transport, the API).

    Loading a configuration refuses two of them on one address (exit 2,
    naming both keys) instead of a start that fails on EADDRINUSE.
    """

    def listen_address(self) -> tuple[str, int]:
        """``(bind, port)``; port 0 is any free port (never in conflict)."""
        ...


@runtime_checkable
class PublishingConfig(Protocol):
    """A processor's configuration that names the topics its processor publishes to.

    Loading a configuration checks each against the declared topics, so one
    that does not exist stops the server at start (exit 2, naming the key)
    instead of losing every record published to it later.
    """

    def published_topics(self) -> Iterator[tuple[str, str]]:
        """``(key, topic)``: each topic published to, and the option that names it (for the error)."""
        ...


@runtime_checkable
class RecoveringProcessor(TopicProcessor, Protocol):
    """A processor that rebuilds its state from its topic's history when it starts (after a crash, say)."""

    def recover(self, history: Iterator[TopicRecord], context: RecoveryContext) -> None:
        """Replay ``history`` (the input topic in seq order) before the live tail.

        Publish what the replay derives that differs from what the output
        topics kept (``context.query``).
        """
        ...


@runtime_checkable
class TopicSink(Protocol):
    """Sends the records of one topic outside Gauss: the mirror of a source (``gauss.sink.StreamSink``).

    The hub calls :meth:`attach`, then :meth:`start`. The sink subscribes
    to the topic itself, one bounded queue per connection it serves, with
    the sink's ``queue_size`` (``capacity``) and ``policy``, so one slow
    client never slows ingest or the other clients.
    """

    name: str
    description: str
    closed_by: Mapping[str, int]
    """Connections the sink (or its transport) closed itself since start, by reason (the status line)."""

    def attach(
        self, topic: Topic, *, capacity: int, policy: OverflowPolicy, metrics: Metrics | None = None, label: str | None = None
    ) -> None:
        """Take ``topic``'s records with these queue settings (called once, before :meth:`start`)."""
        ...

    def start(self) -> None:
        """Listen or dial (raises OSError when it cannot bind)."""
        ...

    def stop(self, timeout: float = 2.0) -> None:
        """Send what the queues hold (up to ``timeout``), then close every connection."""
        ...


@runtime_checkable
class RecordConnection(Connection, Protocol):
    """A sink connection that takes records, not bytes (a message bus routes each record to a subject)."""

    def send_records(self, topic: str, records: Sequence[TopicRecord], encode: Callable[[list[TopicRecord]], bytes]) -> int:
        """Send a batch, encoded with ``encode`` as the transport groups it; returns the bytes sent."""
        ...


@runtime_checkable
class CountingTransport(Transport, Protocol):
    """A transport that closes connections itself (limits, idle timeouts) and counts them: ``tcp-server``."""

    connections: int
    """Connections open now."""
    closed_by: Mapping[str, int]
    """Connections it closed itself since start, by reason."""
    on_close: Callable[[str], None] | None
    """Called with the reason each time it closes one (the source or sink that owns it counts it)."""


@runtime_checkable
class FeedingTransport(Transport, Protocol):
    """A source transport that feeds :meth:`Source.ingest` itself (a message bus) instead of a byte stream."""

    def attach_source(self, source: Source) -> None:
        """Called once by the source before ``serve``."""
        ...


@runtime_checkable
class SinkAwareTransport(Transport, Protocol):
    """A sink transport told the topic and metrics of the sink it serves (its own series carry the topic: a bus)."""

    def attach_sink(self, topic: str, metrics: Metrics) -> None:
        """Called once by the sink before ``serve``."""
        ...


def missing_members(plugin: object, protocol: type, *, methods_only: bool = False) -> list[str]:
    """The members ``protocol`` declares that ``plugin`` lacks (a declared method must be callable).

    ``methods_only`` checks a plugin *class* before any instance exists: its
    data members may be set by ``__init__``, so only the methods are looked for.
    """
    missing: list[str] = []
    seen: set[str] = set()
    for base in protocol.__mro__:
        if not getattr(base, "_is_protocol", False) or base is Protocol:
            continue
        for member in [*getattr(base, "__annotations__", {}), *vars(base)]:
            if member.startswith("_") or member in seen:
                continue
            seen.add(member)
            declared = vars(base).get(member)
            if methods_only and not (callable(declared) and not isinstance(declared, property)):
                continue
            value = getattr(plugin, member, _MISSING)
            if value is _MISSING or (callable(declared) and not isinstance(declared, property) and not callable(value)):
                missing.append(member)
    return sorted(missing)


_MISSING: Any = object()


def require(plugin: Any, protocol: type, *, kind: str, name: str, where: str = "") -> Any:
    """``plugin``, or a :class:`ConfigError` at ``{where}.type`` naming the plugin and what it lacks of ``protocol``.

    Given a class (a configuration names a plugin, nothing is built yet), only the methods are checked.
    """
    is_class = isinstance(plugin, type)
    missing = missing_members(plugin, protocol, methods_only=is_class)
    if missing:
        cls = plugin if is_class else type(plugin)
        raise ConfigError(
            f"{where}.type" if where else "type",
            f"{kind} {name!r} ({cls.__module__}.{cls.__qualname__}) does not implement "
            f"{protocol.__name__}: missing {', '.join(missing)}",
        )
    return plugin
