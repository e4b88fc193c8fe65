"""``nats`` transport: sources and sinks over NATS, with JetStream durable consumers (SPEC section 7).

The official client (``nats-py``) is asyncio. Every ``nats`` transport of a
process shares ONE dedicated OS thread running one asyncio loop (:class:`_Bus`);
batches cross between that thread and the gevent hub through bounded
deques and a gevent ``loop.async_()`` watcher (:class:`_Waker`), so no
greenlet ever blocks on the bus and the asyncio loop never waits on gevent.

**Source** (``serve`` after :meth:`NatsTransport.attach_source`). Each NATS
message carries one or several payloads in the source's framing; a fresh
frame decoder reads each message (a damaged message cannot desynchronise
the next one) and :meth:`gauss.source.Source.ingest` decodes and queues its
records. Without ``stream``/``durable`` the source is a plain subscription
(at most once; a message that finds the hand-off queue full is dropped and
counted). With both it is a JetStream durable pull consumer:

- a message is acknowledged only after the publish of the batch holding its
  last record returned with the topic's storage write intact
  (``Source.published_hooks``); a failed write naks it for redelivery;
- a redelivery of a message still in flight, or already stored (stream
  sequence at or below the highest one stored), is acknowledged and not
  ingested again;
- after each stored batch a small state file (``state_dir``) remembers the
  highest stream sequence stored and the topic seq it ended at; after a
  crash the records stored beyond that point (counted from the topic itself)
  are skipped in the redelivered messages, so a SIGKILL between storing and
  acknowledging stores nothing twice. This assumes the source is the only
  publisher of its topic; that the topic is durable (its storage or its
  journal) is checked when the source attaches;
- the stream is created when missing, with ``stream_subjects`` (default: the
  source's ``subject``); a durable made earlier for another subject is moved
  to ``subject`` (:meth:`NatsTransport._subscribe_durable`).

Options are checked where they can be: the table's own rules when the
configuration is read (:class:`NatsConfig`), a role's when the transport
attaches to its source or sink (SPEC section 3: exit 2, naming the key).

**Sink** (``serve`` without a source): the ``stream`` sink hands each batch
to :meth:`NatsSinkConnection.send_records`, which routes every record to the
subject ``subject`` names (``{topic}``, ``{key}``, ``{shard}``; ``{shard}`` is
:func:`fnv1a_32` of the key modulo ``shards``, nats-server's ``partition()``),
encodes each subject's records as one message (split below the server's
``max_payload``) and publishes them in order. Publishing is core NATS (a
stream whose subjects cover the subject captures them: ``stream`` creates it
when missing); the hand-off is bounded in bytes and a sink waits, as on a
slow TCP client, while it is full.

Connection: nats-py retries the first connection, and reconnects once
connected, forever every ``reconnect_max`` seconds (what it raises is retried
with capped exponential back-off); host names are resolved by gevent
(:class:`_BusLoop`), and closing cancels every attempt. ``/metrics`` carries
``gauss_bus_connected{transport, topic}`` (1 connected, 0 not) and counters of
redeliveries skipped, messages dropped and acks sent, one series per
transport description and topic.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import re
import time
import urllib.parse
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterable, Iterator, Sequence

import gevent
import gevent.event
import gevent.socket
import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gauss.core import TopicRecord
from gauss.errors import ConfigError, FrameTooLarge, InflateBudgetExceeded
from gauss.ratelimit import RateLimitedLog
from gauss.records import OverflowPolicy, TopicQuery
from gauss.registry import PluginConfig

if TYPE_CHECKING:
    from gauss.metrics import Metrics
    from gauss.source import Source
    from gauss.topics import Topic

__all__ = [
    "NatsTransport",
    "NatsConfig",
    "NatsSinkConnection",
    "NatsSender",
    "SubjectWire",
    "fnv1a_32",
    "subject_token",
    "subject_covers",
    "shard_of",
    "DEFAULT_URL",
]

log = logging.getLogger(__name__)

DEFAULT_URL = "nats://127.0.0.1:4222"
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
"""nats-server's default ``max_payload``; a sink splits its messages below it."""
DEFAULT_SINK_BUFFER = 16 << 20
"""Bytes a sink may hand to the bus thread before it waits."""
MAX_QUERY = 100_000


def fnv1a_32(data: bytes) -> int:
    """32-bit FNV-1a, the hash nats-server's ``partition()`` mapping uses."""
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def shard_of(key: str, shards: int) -> int:
    """The shard of ``key``: FNV-1a 32 of its UTF-8 bytes modulo ``shards`` (SPEC section 7)."""
    return fnv1a_32(key.encode("utf-8", "surrogatepass")) % shards


_SUBJECT_UNSAFE = frozenset(b" \t\r\n.*>%\x7f") | frozenset(range(0x20))


def subject_token(key: str) -> str:
    """``key`` as one subject token, escaped only where a token cannot carry it.

    White space, control characters, ``.``, ``*``, ``>`` and ``%`` become
    ``%XX``; everything else, UTF-8 included, stays, so the server's
    ``partition()`` of a plain key hashes the same bytes as :func:`shard_of`.
    """
    raw = key.encode("utf-8", "surrogatepass")
    if not raw:
        return "_"
    if not _SUBJECT_UNSAFE.intersection(raw):
        return key
    out = bytearray()
    for b in raw:
        out += f"%{b:02X}".encode("ascii") if b in _SUBJECT_UNSAFE else bytes((b,))
    return out.decode("utf-8", "surrogatepass")


def subject_covers(filter_subject: str, subject: str) -> bool:
    """True when every subject ``subject`` matches is matched by ``filter_subject`` too (NATS ``*`` and ``>``).

    ``q.>`` covers ``q.a.*`` and ``q.a``; ``q.*`` covers ``q.a`` but neither
    ``q.>`` nor ``q.a.b``: what nats-server asks of a consumer's filter
    subject against its stream's subjects.
    """
    patterns = filter_subject.split(".")
    tokens = subject.split(".")
    for i, pattern in enumerate(patterns):
        if pattern == ">":
            return len(tokens) > i
        if i >= len(tokens):
            return False
        if pattern == "*":
            if tokens[i] == ">":
                return False
        elif tokens[i] != pattern:
            return False
    return len(tokens) == len(patterns)


# --- option checks (SPEC section 3: a bad option exits 2 naming its key) ---------------

_SINK_PLACEHOLDERS = ("{topic}", "{key}", "{shard}")
"""What a sink's subject may name; a source's subject names none."""
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


def _check_subject(subject: str) -> None:
    """What no subject may be, a source's or a sink's (the rules of one role wait until the role is known)."""
    if any(c.isspace() for c in subject):
        raise ConfigError("subject", f"must not contain white space, got {subject!r}")
    tokens = subject.split(".")
    if "" in tokens:
        raise ConfigError("subject", f"must not have an empty token (a '.' at an end or two in a row), got {subject!r}")
    if ">" in tokens[:-1]:
        raise ConfigError("subject", f"'>' may only be the last token, got {subject!r}")
    for placeholder in _PLACEHOLDER.findall(subject):
        if placeholder not in _SINK_PLACEHOLDERS:
            raise ConfigError(
                "subject", f"unknown placeholder {placeholder}: a sink's subject may name {', '.join(_SINK_PLACEHOLDERS)}, a source's none; got {subject!r}"
            )


def _check_name(key: str, name: str | None) -> None:
    """A JetStream stream or consumer name: nats-py and nats-server refuse these characters (nats-py's ``_INVALID_NAME_CHARS``)."""
    if name is not None and any(c in ".*>/\\" or c.isspace() or not c.isprintable() for c in name):
        raise ConfigError(key, f"must not contain '.', '*', '>', '/', '\\', white space or control characters (a JetStream name), got {name!r}")


def _check_source(subject: str, stream: str | None, durable: str | None, stream_subjects: Sequence[str] | None, *, at: str = "") -> None:
    """The rules of a source's options: at load time for a JetStream consumer (``durable`` says it is a source), else when its source attaches.

    ``at`` is the transport's own key in the source's table (``transport.``).
    """
    if stream is not None and durable is None:
        raise ConfigError(
            f"{at}stream", "a source reads a stream only through a durable consumer: give 'durable' too (or drop 'stream' for a core NATS subscription)"
        )
    placeholders = _PLACEHOLDER.findall(subject)
    if placeholders:
        hint = "; a sink takes no 'durable'" if durable is not None else ""  # 'durable' is what says it is a source
        raise ConfigError(
            f"{at}subject", f"a source's subject takes no placeholders ({placeholders[0]} is for a sink's subject{hint}), got {subject!r}"
        )
    if stream is not None and stream_subjects and not any(subject_covers(covering, subject) for covering in stream_subjects):
        raise ConfigError(
            f"{at}subject",
            f"{subject!r} is not within stream_subjects ({', '.join(stream_subjects)}): the stream would not hold its messages "
            "(nats-server refuses such a consumer); give a subject within them, or add it to stream_subjects",
        )


def _check_sink(subject: str, durable: str | None, topic: str, *, at: str = "") -> None:
    """The rules of a sink's options (when the sink attaches: only then is the role known)."""
    if durable is not None:
        raise ConfigError(f"{at}durable", f"the sink of topic {topic!r} publishes: only a source reads through a durable consumer (a sink's 'stream' alone is created when missing)")
    wildcards = [token for token in subject.split(".") if token in ("*", ">")]
    if wildcards:
        raise ConfigError(
            f"{at}subject", f"the sink of topic {topic!r} publishes to its subject: a wildcard token ({wildcards[0]!r}) only subscribes; got {subject!r}"
        )


def _check_durable_topic(topic: Topic) -> None:
    """SPEC section 7: a JetStream source acknowledges a message once its records are durable in the topic, so the topic must keep them.

    Checked once the topic is built: a storage's ``durable`` is the
    instance's (a ClickHouse storage without a spool is not).
    """
    journal = topic.journal
    if topic.storage.durable or (journal is not None and journal.durable):
        return
    what = f"its {topic.storage_type!r} storage is not durable and " + ("neither is its journal" if journal is not None else "it has no journal")
    raise ConfigError(
        "transport.durable",
        f"topic {topic.name!r} is not durable ({what}): its messages would be acknowledged and then lost in a crash "
        "(SPEC section 7); give the topic a journal or a durable storage",
    )


def _import_client() -> Any:
    """Import nats-py (and what it imports lazily) in the calling gevent thread.

    Under gevent's monkey-patching the import lock is a gevent lock: two OS
    threads importing at once can deadlock, so the bus thread must find
    everything imported already.
    """
    import ssl  # noqa: F401 - imported lazily by asyncio connections

    import nats
    import nats.aio.client
    import nats.aio.msg
    import nats.errors
    import nats.js
    import nats.js.api
    import nats.js.errors

    return nats


# --- the bus thread and the way back into gevent -----------------------------------


class _Waker:
    """Runs callables posted from any thread in the gevent hub that created it."""

    def __init__(self) -> None:
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._watcher = gevent.get_hub().loop.async_()
        self._watcher.start(self._run)

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        self._calls.append((fn, args))
        self._watcher.send()

    def _run(self) -> None:
        calls = self._calls
        while calls:
            fn, args = calls.popleft()
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - one callback must not stop the others
                log.exception("nats: callback from the bus thread failed")


class _BusLoop(asyncio.SelectorEventLoop):
    """The bus thread's loop: host names are resolved in the gevent hub, not in asyncio's default executor.

    NOTE: under monkey-patching the executor's workers are greenlets of this
    thread's gevent hub, which never runs: a name never resolved and, at
    exit, the interpreter waited for those workers forever (a source with an
    unresolvable host kept ``gauss-serve`` from exiting after SIGTERM).
    """

    async def getaddrinfo(  # type: ignore[override]  # the same call, typeshed's overloads aside
        self, host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        return await BUS.resolve(host, port, family, type, proto, flags)


class _Bus:
    """The process's one asyncio thread for every nats transport."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waker: _Waker | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def ensure(self) -> asyncio.AbstractEventLoop:
        if self.loop is not None:
            return self.loop
        from gevent.monkey import get_original, is_module_patched

        _import_client()
        self.waker = _Waker()  # also makes sure this thread's hub exists before the bus thread starts
        start_thread = get_original("_thread", "start_new_thread")
        ready = get_original("_thread", "allocate_lock")()
        ready.acquire()
        holder: list[asyncio.AbstractEventLoop] = []
        patched = is_module_patched("selectors")
        selector_class = get_original("selectors", "DefaultSelector") if patched else None

        def run() -> None:
            loop = _BusLoop(selector_class() if selector_class is not None else None)
            asyncio.set_event_loop(loop)
            holder.append(loop)
            ready.release()
            loop.run_forever()

        start_thread(run, ())
        ready.acquire()  # the thread only builds its loop: a few milliseconds at start-up
        self.loop = holder[0]
        return self.loop

    def spawn(self, coro: Any, owner: set[asyncio.Task[Any]] | None = None) -> None:
        """Run ``coro`` as a task of the bus loop, also kept in ``owner`` (for the owner to cancel) until it ends."""
        self.ensure().call_soon_threadsafe(self._start, coro, None, owner)

    def _start(self, coro: Any, result: gevent.event.AsyncResult | None, owner: set[asyncio.Task[Any]] | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        for tasks in (self._tasks, owner):
            if tasks is not None:
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if result is not None:
            task.add_done_callback(lambda done: self.post(result.set, done))

    async def resolve(self, host: Any, port: Any, family: int, type: int, proto: int, flags: int) -> Any:
        """In the bus loop: ``getaddrinfo`` run by gevent's cooperative resolver in the gevent hub."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.done():  # cancelled: the connection attempt timed out or the transport closed
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def run() -> None:
            try:
                result = gevent.socket.getaddrinfo(host, port, family, type, proto, flags)
            except Exception as exc:  # noqa: BLE001 - the caller's error (gaierror, ...)
                loop.call_soon_threadsafe(settle, None, exc)
            else:
                loop.call_soon_threadsafe(settle, result, None)

        self.post(gevent.spawn, run)
        return await future

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        self.ensure().call_soon_threadsafe(fn, *args)

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """From the bus thread: run ``fn(*args)`` in the gevent hub (logging too: its locks are gevent's)."""
        assert self.waker is not None
        self.waker.post(fn, *args)

    def wait(self, coro: Any, timeout: float | None = None) -> Any:
        """Run ``coro`` in the bus loop and wait cooperatively (this greenlet only) for its result.

        No lock is shared with the bus thread (no ``concurrent.futures``, no
        logging there): under monkey-patching those are gevent locks, which
        deadlock across OS threads. Results come back through the waker.
        """
        result: gevent.event.AsyncResult = gevent.event.AsyncResult()
        self.ensure().call_soon_threadsafe(self._start, coro, result)
        done = result.get(timeout=timeout)
        return done.result()


BUS = _Bus()


# --- metrics ---------------------------------------------------------------------------

_TRANSPORTS: weakref.WeakSet[NatsTransport] = weakref.WeakSet()
_COLLECTED: weakref.WeakSet[Any] = weakref.WeakSet()


class _BusCollector(Collector):
    """Per (transport, topic): connected (gauge), redeliveries skipped, messages dropped, acks (counters).

    Several sinks share one transport description (``gauss.{topic}.{key}``
    on one server), so ``topic`` tells them apart; transports alike in both
    labels are summed (connected: 1 only while all of them are), so no series
    is ever exposed twice.
    """

    def collect(self) -> Iterator[Any]:
        labels = ["transport", "topic"]
        connected = GaugeMetricFamily("gauss_bus_connected", "1 while the NATS connection is up", labels=labels)
        skipped = CounterMetricFamily(
            "gauss_bus_redeliveries_skipped", "Redelivered messages recognised and not stored again", labels=labels
        )
        dropped = CounterMetricFamily(
            "gauss_bus_dropped_messages", "Messages dropped: hand-off full (core subscription) or publish failed", labels=labels
        )
        acked = CounterMetricFamily("gauss_bus_acks", "JetStream messages acknowledged after storage", labels=labels)
        totals: dict[tuple[str, str], list[int]] = {}
        for transport in list(_TRANSPORTS):
            total = totals.setdefault((transport.description, transport.topic), [1, 0, 0, 0])
            total[0] = min(total[0], 1 if transport.connected else 0)
            total[1] += transport.redeliveries_skipped
            total[2] += transport.dropped
            total[3] += transport.acked
        for label, (up, skips, drops, acks) in sorted(totals.items()):
            connected.add_metric(list(label), float(up))
            skipped.add_metric(list(label), skips)
            dropped.add_metric(list(label), drops)
            acked.add_metric(list(label), acks)
        yield connected
        yield skipped
        yield dropped
        yield acked


def _register_metrics(metrics: Metrics) -> None:
    if metrics in _COLLECTED:
        return
    metrics.registry.register(_BusCollector())
    _COLLECTED.add(metrics)


# --- the transport -------------------------------------------------------------------

_Name = Annotated[str, msgspec.Meta(min_length=1)]
_Seconds = Annotated[float, msgspec.Meta(ge=0.001)]


class NatsConfig(PluginConfig, frozen=True, kw_only=True):
    """The options of a ``nats`` transport (SPEC section 7)."""

    url: _Name = DEFAULT_URL
    """A nats:// or tls:// URL."""
    subject: _Name
    """A source may use wildcards, a sink ``{topic}``, ``{key}``, ``{shard}``."""
    stream: _Name | None = None
    """The JetStream stream (with ``durable``: a durable consumer; a sink's is only created when missing)."""
    durable: _Name | None = None
    """The durable consumer's name (needs ``stream``)."""
    stream_subjects: tuple[_Name, ...] | None = None
    """The subjects of a stream created when missing (default: ``subject``)."""
    shards: Annotated[int, msgspec.Meta(ge=1, le=1 << 16)] = 1
    """What a sink's ``{shard}`` is taken modulo."""
    batch: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256
    """Messages per fetch of a durable consumer."""
    max_ack_pending: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    ack_wait_s: Annotated[float, msgspec.Meta(ge=0.1)] = 30.0
    queue_size: Annotated[int, msgspec.Meta(ge=1)] = 1024
    """Messages handed to gevent at most."""
    reconnect_min: _Seconds = 0.1
    """The first back-off of the first connection, in seconds."""
    reconnect_max: _Seconds = 1.0
    """The longest back-off, and the reconnect interval once connected, in seconds."""
    max_message_bytes: Annotated[int, msgspec.Meta(ge=64)] = DEFAULT_MAX_MESSAGE_BYTES
    """A sink splits its messages below it (the server's ``max_payload``)."""
    state_dir: Path = Path("nats-state")
    """Where a durable consumer keeps its state file (relative: beside the config file)."""

    def __post_init__(self) -> None:
        _check_url(self.url)
        _check_subject(self.subject)
        if self.durable is not None and self.stream is None:
            raise ConfigError("durable", "needs a 'stream' (a JetStream durable consumer reads one stream)")
        _check_name("stream", self.stream)
        _check_name("durable", self.durable)
        if self.durable is not None:  # a JetStream consumer is a source's: its rules apply now
            _check_source(self.subject, self.stream, self.durable, self.stream_subjects)
        if self.reconnect_max < self.reconnect_min:
            raise ConfigError("reconnect_max", f"must be at least reconnect_min ({self.reconnect_min}), got {self.reconnect_max}")


def _check_url(url: str) -> None:
    """Refuse what nats-py would retry forever ("invalid connect url option"): a bad scheme, host or port."""
    if not url.startswith(("nats://", "tls://")):
        raise ConfigError("url", f"must be a nats:// or tls:// URL, got {url!r}")
    if "," in url:
        raise ConfigError("url", f"must be one server URL (a list of servers is not supported), got {url!r}")
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        raise ConfigError("url", f"has no host, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        port_text = parts.netloc.rpartition(":")[2]
        reason = "is not a number" if not port_text.isdigit() else "is out of range (1-65535)"
        raise ConfigError("url", f"port {port_text!r} {reason}, got {url!r}") from None
    if port == 0:
        raise ConfigError("url", f"port 0 is out of range (1-65535), got {url!r}")


class NatsTransport:
    """One ``nats`` transport table: a connection, and a source or a sink role."""

    dials = True
    Config = NatsConfig

    def __init__(
        self,
        url: str = DEFAULT_URL,
        subject: str = "",
        *,
        stream: str | None = None,
        durable: str | None = None,
        stream_subjects: Sequence[str] | None = None,
        shards: int = 1,
        batch: int = 256,
        max_ack_pending: int = 10_000,
        ack_wait_s: float = 30.0,
        queue_size: int = 1024,
        reconnect_min: float = 0.1,
        reconnect_max: float = 1.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        state_dir: Path | None = None,
    ) -> None:
        self.url = url
        self.subject = subject
        self.stream = stream
        self.durable = durable
        self.stream_subjects = list(stream_subjects) if stream_subjects else [subject]
        self.shards = shards
        self.batch = batch
        self.max_ack_pending = max_ack_pending
        self.ack_wait_s = ack_wait_s
        self.queue_size = queue_size
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.max_message_bytes = max_message_bytes
        self.state_dir = state_dir if state_dir is not None else Path("nats-state")
        self.connected = False
        self.topic = ""
        """The topic of the source or sink it serves (a label in ``/metrics``)."""
        self.redeliveries_skipped = 0
        self.dropped = 0
        self.acked = 0
        self.messages = 0
        """Messages taken by a source (duplicates included)."""
        self._nc: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        """Its tasks in the bus loop (connecting, consuming, publishing): cancelled on close."""
        self._closing = False
        self._recover = True
        """Set at start and on each reconnect: re-read what was delivered but not acknowledged, in order."""
        self._serving = False
        self._greenlets: list[gevent.Greenlet] = []
        self._log = RateLimitedLog(log)
        self._source: Source | None = None
        self._consumer: _DurableConsumer | None = None
        self._refilter_warned = False
        # source hand-off (bus thread -> gevent)
        self._inbox: collections.deque[Any] = collections.deque()
        self._inbox_ready = gevent.event.Event()
        # sink hand-off (gevent -> bus thread)
        self._outbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self._out_added = 0
        """Bytes handed to the bus thread (counted by gevent) ..."""
        self._out_sent = 0
        """... and taken off the outbox (counted by the bus thread): each side writes only its own."""
        self._out_event: asyncio.Event | None = None
        self._out_room = gevent.event.Event()
        self._out_room.set()
        self._sink_conn: NatsSinkConnection | None = None

    @classmethod
    def from_config(cls, config: NatsConfig) -> NatsTransport:
        if "{shard}" in config.subject and config.shards == 1:
            log.debug("nats subject %s names {shard} with shards = 1", config.subject)
        return cls(**config.options())

    @property
    def description(self) -> str:
        role = f" stream {self.stream} durable {self.durable}" if self.durable else ""
        return f"nats {self.url} {self.subject}{role}"

    @property
    def address(self) -> tuple[str, int]:
        parts = urllib.parse.urlsplit(self.url)
        return (parts.hostname or "127.0.0.1", parts.port or 4222)

    @property
    def jetstream(self) -> bool:
        return self.durable is not None

    # --- lifecycle ---------------------------------------------------------------------

    def attach_source(self, source: Source) -> None:
        """Called by the source before :meth:`serve`: messages go to ``source.ingest``, acks follow its publishes.

        Raises :class:`ConfigError` at a key of the source's table (the hub
        puts ``sources[N]`` before it) for what only the role, the source's
        policy or its built topic tells.
        """
        _check_source(self.subject, self.stream, self.durable, self.stream_subjects, at="transport.")
        if self.jetstream:
            if source.queue.policy is not OverflowPolicy.BACK_PRESSURE:
                raise ConfigError(
                    "policy", f"a JetStream source must use back_pressure (a shed record could never be acknowledged), got {source.queue.policy.value}"
                )
            _check_durable_topic(source.topic)
        self._source = source
        self.topic = source.topic.name
        _register_metrics(source.metrics)
        if self.jetstream:
            self._consumer = _DurableConsumer(self, source)
            source.published_hooks.append(self._consumer.on_published)

    def serve(self, handler: Callable[[Any], None]) -> None:
        """Start without blocking: a source consumes messages, a sink gets a connection for ``handler``."""
        self._closing = False
        self._serving = True
        BUS.ensure()
        _TRANSPORTS.add(self)  # in /metrics while serving (config validation builds throwaway instances)
        if self._source is not None:
            self._greenlets.append(gevent.spawn(self._take_loop))
            BUS.spawn(self._consume_js() if self.jetstream else self._consume_core(), self._tasks)
        else:
            BUS.spawn(self._publish_loop(), self._tasks)
            self._greenlets.append(gevent.spawn(self._sink_loop, handler))

    def attach_sink(self, topic: str, metrics: Metrics) -> None:
        """The sink's topic labels this transport's series (:class:`~gauss.protocols.SinkAwareTransport`).

        Raises :class:`ConfigError` at a key of the sink's table for what
        only the role tells (a wildcard subject, a durable consumer).
        """
        _check_sink(self.subject, self.durable, topic, at="transport.")
        self.topic = topic
        _register_metrics(metrics)

    def close(self, timeout: float = 2.0) -> None:
        """Stop consuming or publishing; drain what the sink handed over (up to ``timeout``), then disconnect."""
        if self._closing:
            return
        self._closing = True
        if self._sink_conn is not None:
            self._sink_conn.close()
        for greenlet in self._greenlets:
            greenlet.kill(block=True, timeout=timeout)
        self._greenlets = []
        if self._consumer is not None:
            self._consumer.flush_acks()
        if BUS.loop is not None and self._serving:
            self._serving = False
            if self._out_event is not None:
                BUS.call(self._out_event.set)
            try:
                BUS.wait(self._shutdown(timeout), timeout=timeout + 1.0)
            except (gevent.Timeout, Exception) as exc:  # noqa: BLE001 - closing regardless
                log.info("%s: close: %s", self.description, exc)
        _TRANSPORTS.discard(self)

    # --- the bus side (runs in the bus thread) -------------------------------------

    async def _connect(self) -> Any:
        nats = _import_client()
        delay = self.reconnect_min
        failures = 0

        async def disconnected() -> None:
            self.connected = False
            if not self._closing:
                BUS.post(self._log, "%s: disconnected; reconnecting every %.1fs", self.description, self.reconnect_max)

        async def reconnected() -> None:
            self.connected = True
            self._recover = True
            BUS.post(log.info, "%s: reconnected", self.description)

        async def error(exc: Exception) -> None:
            BUS.post(self._log, "%s: %s", self.description, str(exc) or type(exc).__name__)

        while not self._closing:
            try:
                nc = await nats.connect(
                    servers=[self.url],
                    name=f"gauss {self.subject}",
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self.reconnect_max,
                    connect_timeout=2,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=error,
                )
            except Exception as exc:  # noqa: BLE001 - any failure to connect: retry with back-off
                if failures == 0:
                    BUS.post(log.warning, "%s: cannot connect (%s); retrying with back-off up to %.1fs", self.description, exc, self.reconnect_max)
                failures += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
                continue
            if failures:
                BUS.post(log.info, "%s: connected after %d failed attempts", self.description, failures)
            else:
                BUS.post(log.info, "%s: connected", self.description)
            self._nc = nc
            self.connected = True
            return nc
        return None

    async def _ensure_stream(self, js: Any) -> Any:
        import nats.js.errors

        try:
            return await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            BUS.post(log.info, "%s: creating stream %s with subjects %s", self.description, self.stream, ", ".join(self.stream_subjects))
            return await js.add_stream(name=self.stream, subjects=self.stream_subjects)

    async def _retrying(self, what: str, step: Callable[[], Any]) -> Any:
        delay = self.reconnect_min
        while not self._closing:
            try:
                return await step()
            except Exception as exc:  # noqa: BLE001 - the bus is not ready yet: retry
                BUS.post(self._log, "%s: %s failed (%s); retrying", self.description, what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
        return None

    def _hand_over(self, items: Iterable[Any]) -> None:
        self._inbox.extend(items)
        BUS.post(self._inbox_ready.set)

    async def _consume_core(self) -> None:
        nc = await self._connect()
        if nc is None:
            return

        async def on_message(msg: Any) -> None:
            if len(self._inbox) >= self.queue_size:
                self.dropped += 1
                BUS.post(self._log, "%s: hand-off queue full (%d messages): message dropped", self.description, self.queue_size)
                return
            self._hand_over((msg,))

        await self._retrying("subscribe", lambda: nc.subscribe(self.subject, cb=on_message))

    async def _consume_js(self) -> None:
        import nats.errors
        import nats.js.api

        nc = await self._connect()
        if nc is None:
            return
        js = nc.jetstream()
        info = await self._retrying("stream", lambda: self._ensure_stream(js))
        if info is None:
            return
        config = nats.js.api.ConsumerConfig(
            ack_policy=nats.js.api.AckPolicy.EXPLICIT, ack_wait=self.ack_wait_s, max_ack_pending=self.max_ack_pending
        )
        psub = await self._retrying("consumer", lambda: self._subscribe_durable(js, config))
        if psub is None:
            return
        created = info.created.isoformat() if info.created is not None else ""
        self._hand_over((("stream", created),))
        delay = self.reconnect_min
        floor_at = 0.0
        while not self._closing:
            if self._recover:
                self._recover = False
                try:
                    await self._recover_unacknowledged(js)
                except Exception as exc:  # noqa: BLE001 - the server is away again: next reconnect
                    self._recover = True
                    BUS.post(self._log, "%s: re-reading unacknowledged messages failed (%s); retrying", self.description, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.reconnect_max)
                    continue
            if time.monotonic() >= floor_at:  # the ack floor prunes the consumer's set of stored sequences
                floor_at = time.monotonic() + 1.0
                try:
                    consumer = await js.consumer_info(self.stream, self.durable)
                    self._hand_over((("floor", int(consumer.ack_floor.stream_seq or 0)),))
                except Exception as exc:  # noqa: BLE001 - next time
                    BUS.post(self._log, "%s: consumer info failed (%s)", self.description, exc)
            if len(self._inbox) >= self.queue_size:
                await asyncio.sleep(0.002)
                continue
            try:
                msgs = await psub.fetch(self.batch, timeout=1.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - disconnected, server restarting: retry
                if self._closing:
                    return
                BUS.post(self._log, "%s: fetch failed (%s: %s); retrying", self.description, type(exc).__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
                continue
            delay = self.reconnect_min
            if msgs:
                self._hand_over(msgs)

    async def _subscribe_durable(self, js: Any, config: Any) -> Any:
        """The pull subscription of ``durable``: created when missing, moved to ``subject`` when it filters another.

        nats-py binds an existing consumer as it is: a durable made for an
        earlier ``subject`` would go on reading that one, silently. nats-server
        (2.9.10 included) changes a durable's filter subject in place; it then
        goes on from the stream sequence it had reached. Should a server
        refuse, a warning names both filters, once, and the durable reads its
        old one.
        """
        import nats.js.errors

        try:
            info = await js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            info = None
        if info is not None:
            old = info.config.filter_subject or ", ".join(info.config.filter_subjects or ())
            if old != self.subject:
                await self._refilter(js, info, old or "(every subject of the stream)")
        return await js.pull_subscribe(self.subject, durable=self.durable, stream=self.stream, config=config)

    async def _refilter(self, js: Any, info: Any, old: str) -> None:
        import nats.js.errors

        try:
            config = info.config.evolve(filter_subject=self.subject)
            if config.filter_subjects:  # several filters (nats-server 2.10): the one subject replaces them
                config = config.evolve(filter_subjects=None)
            await js.add_consumer(self.stream, config=config)
        except nats.js.errors.APIError as exc:
            if not self._refilter_warned:
                self._refilter_warned = True
                BUS.post(
                    log.warning, "%s: durable %s filters %s, not %s, and the server refused to change it (%s): it reads %s; "
                    "delete the consumer, or give the source another durable, to read %s",
                    self.description, self.durable, old, self.subject, exc, old, self.subject,
                )  # fmt: skip
            return
        reached = int(info.delivered.stream_seq or 0) if info.delivered else 0
        BUS.post(
            log.warning, "%s: durable %s filtered %s: changed to %s; it goes on after stream sequence %d "
            "(earlier messages of %s are not delivered)",
            self.description, self.durable, old, self.subject, reached, self.subject,
        )  # fmt: skip

    async def _recover_unacknowledged(self, js: Any) -> None:
        """Hand over, in stream order, every message of ``subject`` delivered but not acknowledged yet.

        JetStream redelivers those only after ``ack_wait``, behind newer
        messages; reading them from the stream first keeps each key's records
        in order after a restart or a reconnect. The gevent side ingests only
        those it has neither stored nor in flight; their redeliveries are
        acknowledged when they come.
        """
        import nats.js.errors

        info = await js.consumer_info(self.stream, self.durable)
        floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
        top = int(info.delivered.stream_seq or 0) if info.delivered else 0
        self._hand_over((("floor", floor),))
        seq = floor + 1
        items: list[Any] = []
        while seq <= top and not self._closing:
            try:
                msg = await js.get_msg(self.stream, seq, subject=self.subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            if msg.seq is None or msg.seq > top:
                break
            items.append(("recover", int(msg.seq), msg.subject, msg.data or b""))
            seq = int(msg.seq) + 1
            if len(items) >= self.batch:
                while len(self._inbox) >= self.queue_size and not self._closing:
                    await asyncio.sleep(0.002)
                self._hand_over(items)
                items = []
        if items:
            self._hand_over(items)

    def _ack(self, msgs: list[Any], nak: bool) -> None:
        """In the bus thread: acknowledge (or nak) messages, without waiting for anything."""
        loop = asyncio.get_running_loop()
        for msg in msgs:
            loop.create_task(self._ack_one(msg, nak))

    async def _ack_one(self, msg: Any, nak: bool) -> None:
        try:
            if nak:
                await msg.nak(delay=self.reconnect_max)
            else:
                await msg.ack()
        except Exception as exc:  # noqa: BLE001 - an ack lost is a redelivery, recognised later
            BUS.post(self._log, "%s: ack failed (%s); the message will be redelivered and skipped", self.description, exc)

    async def _publish_loop(self) -> None:
        nc = await self._connect()
        if nc is None:
            return
        self._out_event = asyncio.Event()
        if self.stream is not None:
            js = nc.jetstream()
            await self._retrying("stream", lambda: self._ensure_stream(js))
        outbox = self._outbox
        while True:
            if not outbox:
                if self._closing:
                    return
                self._out_event.clear()
                if not outbox:
                    await self._out_event.wait()
                continue
            subject, data = outbox.popleft()
            try:
                await nc.publish(subject, data)
            except Exception as exc:  # noqa: BLE001 - buffer full while disconnected, connection closed
                self.dropped += 1
                BUS.post(self._log, "%s: publish to %s failed (%s); message dropped", self.description, subject, exc)
            self._out_sent += len(data)
            if self._out_added - self._out_sent <= DEFAULT_SINK_BUFFER // 2 and not self._out_room.is_set():
                BUS.post(self._out_room.set)

    async def _shutdown(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._outbox and time.monotonic() < deadline and self.connected:
            await asyncio.sleep(0.01)
        nc, self._nc = self._nc, None
        if nc is not None:
            try:
                if nc.is_connected:
                    await nc.flush(timeout=max(timeout, 0.1))
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            await nc.close()
        # nats-py retries a first connection forever (and resolves the name each time):
        # only cancelling ends it, with any resolution it awaits
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.connected = False

    # --- the gevent side --------------------------------------------------------------

    def _take_loop(self) -> None:
        """Hand every message the bus thread delivered to the source, in order."""
        inbox = self._inbox
        ready = self._inbox_ready
        while not self._closing:
            ready.wait()
            ready.clear()
            while inbox:
                item = inbox.popleft()
                if isinstance(item, tuple):  # ("stream", created), ("floor", ack floor), ("recover", seq, subject, data)
                    if self._consumer is not None:
                        if item[0] == "recover":
                            self._count_bytes(len(item[3]))
                            self._consumer.recover(item[1], item[2], item[3])
                        elif item[0] == "stream":
                            self._consumer.on_stream(item[1])
                        else:
                            self._consumer.on_floor(item[1])
                    continue
                self.messages += 1
                self._count_bytes(len(item.data or b""))
                if self._consumer is not None:
                    self._consumer.take(item)
                else:
                    self.ingest(item.data, item.subject)

    def _count_bytes(self, size: int) -> None:
        """``gauss_source_bytes``: every message's bytes, as a TCP source counts what it reads."""
        assert self._source is not None
        self._source.count_received(size)

    def ingest(self, data: bytes, subject: str) -> int:
        """Decode one message's payloads into the source; returns the good records it held.

        A message is whole (no more bytes will come, unlike on TCP), so bytes
        after its last whole frame are a truncated frame: counted as a bad
        frame. Counters are the source's own (``decode_errors{reason}``).
        """
        source = self._source
        assert source is not None
        if data and source.framing.name == "lines" and not data.endswith(b"\n"):
            data += b"\n"  # a last line without its newline is a whole line
        decoder = source.framing.decoder()
        try:
            frames = decoder.feed(data)
        except FrameTooLarge as exc:
            source.count_refused_frame(oversize=True)
            self._log("%s: message on %s dropped: %s", self.description, subject, exc)
            return 0
        leftover = decoder.buffered
        if leftover:
            source.count_refused_frame(oversize=False)
            self._log("%s: message on %s ends in a truncated frame (%d bytes): dropped", self.description, subject, leftover)
        if not frames:
            return 0
        try:
            return source.ingest(frames, subject)
        except InflateBudgetExceeded as exc:
            self._log("%s: message on %s dropped: %s", self.description, subject, exc)
            return 0

    def _sink_loop(self, handler: Callable[[Any], None]) -> None:
        while not self._closing:
            conn = self._sink_conn = NatsSinkConnection(self)
            try:
                handler(conn)
            except Exception:  # noqa: BLE001 - the sink's failure: give it a new connection
                log.exception("%s: sink handler failed", self.description)
            finally:
                conn.close()
            if self._closing:
                return
            gevent.sleep(self.reconnect_min)

    def publish(self, messages: list[tuple[str, bytes]], closed: gevent.event.Event | None = None) -> None:
        """Hand messages to the bus thread; waits (cooperatively) while the hand-off holds too many bytes."""
        if not messages:
            return
        while self._out_added - self._out_sent > DEFAULT_SINK_BUFFER and not self._closing and not (closed is not None and closed.is_set()):
            self._out_room.clear()
            self._out_room.wait(0.5)
        if self._closing or (closed is not None and closed.is_set()):
            raise OSError(f"{self.description}: closed")
        self._out_added += sum(len(data) for _, data in messages)
        self._outbox.extend(messages)
        if self._out_event is not None:
            BUS.call(self._out_event.set)
        else:  # the publisher is still connecting: it reads the outbox once it is
            BUS.call(lambda: self._out_event.set() if self._out_event is not None else None)

    # --- sink subjects -------------------------------------------------------------------

    def subject_for(self, topic: str, key: str) -> str:
        subject = self.subject
        if "{topic}" in subject:
            subject = subject.replace("{topic}", topic)
        if "{key}" in subject:
            subject = subject.replace("{key}", subject_token(key))
        if "{shard}" in subject:
            subject = subject.replace("{shard}", str(shard_of(key, self.shards)))
        return subject


class NatsSinkConnection:
    """What a ``stream`` sink writes to: records routed to their subjects (the ``Connection`` protocol too)."""

    def __init__(self, transport: NatsTransport) -> None:
        self.transport = transport
        self.peer = transport.url
        self._closed = gevent.event.Event()
        self._per_record = any(part in transport.subject for part in ("{key}", "{shard}"))

    def send_records(self, topic: str, records: Sequence[TopicRecord], encode: Callable[[list[TopicRecord]], bytes]) -> int:
        """Publish ``records``: one message per subject (several when too big), each key's records in order."""
        if self._closed.is_set():
            raise OSError("nats sink connection closed")
        transport = self.transport
        groups: dict[str, list[TopicRecord]] = {}
        if self._per_record:
            subject_for = transport.subject_for
            for record in records:
                subject = subject_for(topic, record.key)
                group = groups.get(subject)
                if group is None:
                    groups[subject] = [record]
                else:
                    group.append(record)
        else:
            groups[transport.subject_for(topic, "")] = list(records)
        messages: list[tuple[str, bytes]] = []
        for subject, group in groups.items():
            self._encode(subject, group, encode, messages)
        transport.publish(messages, self._closed)
        return sum(len(data) for _, data in messages)

    def _encode(
        self, subject: str, records: list[TopicRecord], encode: Callable[[list[TopicRecord]], bytes], out: list[tuple[str, bytes]]
    ) -> None:
        data = encode(records)
        if len(data) <= self.transport.max_message_bytes:
            if data:
                out.append((subject, data))
            return
        if len(records) == 1:
            self.transport.dropped += 1
            self.transport._log("%s: a record of %d bytes exceeds max_message_bytes: dropped", self.transport.description, len(data))
            return
        half = len(records) // 2
        self._encode(subject, records[:half], encode, out)
        self._encode(subject, records[half:], encode, out)

    def sendall(self, data: bytes) -> None:
        """Publish framed bytes as one message (only for a subject without ``{topic}``, ``{key}`` or ``{shard}``)."""
        if "{" in self.transport.subject:
            raise OSError(f"{self.transport.description}: a subject template needs records (send_records)")
        self.transport.publish([(self.transport.subject, data)])

    def recv(self, max_bytes: int = 65536) -> bytes:
        """Nothing comes back on a sink connection: waits until closed, then ``b""``."""
        self._closed.wait()
        return b""

    def close(self) -> None:
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()


class _DurableConsumer:
    """Acknowledgement and redelivery bookkeeping of one JetStream source (gevent side).

    ``pending`` holds, in order, each ingested message with the source's
    record count after its records (its *threshold*); a publish that brings
    the count of published records to a threshold settles that message.
    ``stored`` holds the stream sequences stored and not yet below the
    consumer's ack floor (a redelivery of one is acknowledged, not stored).
    Before each publish the state file records ``stored`` plus the sequences
    about to be stored and the topic's seq before them, so after a crash at
    any point the records of the topic tell which of them made it.
    """

    def __init__(self, transport: NatsTransport, source: Source) -> None:
        self.transport = transport
        self.source = source
        self.topic = source.topic
        name = f"{transport.stream}-{transport.durable}-{self.topic.name}"
        self.state_path = transport.state_dir / f"{subject_token(name).replace('/', '%2F')}.json"
        self.settled = 0
        """Records of this source whose publish returned."""
        self.stored: set[int] = set()
        self.floor = 0
        """The consumer's ack floor as last read from the server: no sequence at or below it comes again."""
        self.pending: collections.deque[tuple[int, int, list[Any]]] = collections.deque()
        self.inflight: dict[int, list[Any]] = {}
        self.failed: collections.deque[tuple[int, int]] = collections.deque()
        self.to_ack: list[Any] = []
        self.to_nak: list[Any] = []
        self._stream_created: str | None = None

    def on_stream(self, created: str) -> None:
        """The stream is known (its creation time): take over the state file if it belongs to it."""
        self._stream_created = created
        state = self._read_state()
        if not state or state.get("created") != created or state.get("epoch") != self.topic.epoch:
            if state:
                log.info("%s: state %s is for another stream or epoch; starting afresh", self.transport.description, self.state_path)
            return
        self.stored = {int(s) for s in state.get("stored", [])}
        intent = [int(s) for s in state.get("storing", [])]
        after = int(state.get("storing_after", 0))
        if intent and self._stored_after(after):
            self.stored.update(intent)
        log.info(
            "%s: resuming with %d stored messages not yet below the ack floor%s",
            self.transport.description, len(self.stored),
            f" (the {len(intent)} being stored at the stop made it)" if intent and set(intent) <= self.stored else "",
        )  # fmt: skip

    def _stored_after(self, seq: int) -> bool:
        """True when the topic holds a record with a seq above ``seq`` (this source is its only publisher)."""
        if self.topic.last_seq <= seq:
            return False
        try:
            return bool(self.topic.query(TopicQuery(since_seq=seq, limit=1)).records)
        except Exception as exc:  # noqa: BLE001 - cannot tell: store again rather than lose
            log.warning("%s: cannot read %s after seq %d: %s", self.transport.description, self.topic.name, seq, exc)
            return False

    def on_floor(self, floor: int) -> None:
        if floor > self.floor:
            self.floor = floor
            self.stored = {s for s in self.stored if s > floor}

    def recover(self, seq: int, subject: str, data: bytes) -> None:
        """A message delivered before but not acknowledged, read from the stream: ingest it unless known."""
        if seq in self.inflight or seq in self.stored or seq <= self.floor:
            return
        self.transport.ingest(data, subject)
        copies: list[Any] = []  # nothing to acknowledge now; its redelivery joins here or finds it stored
        self.inflight[seq] = copies
        self.pending.append((self.source.records, seq, copies))
        self._settle()

    def take(self, msg: Any) -> None:
        transport = self.transport
        try:
            seq = int(msg.metadata.sequence.stream)
        except Exception:  # noqa: BLE001 - not a JetStream message (cannot happen on a pull subscription)
            transport.ingest(msg.data, msg.subject)
            return
        copies = self.inflight.get(seq)
        if copies is not None:  # redelivered while its first delivery is still on the way to storage
            copies.append(msg)
            transport.redeliveries_skipped += 1
            return
        if seq in self.stored or seq <= self.floor:
            transport.redeliveries_skipped += 1
            self._send([msg], nak=False)
            return
        transport.ingest(msg.data, msg.subject)
        copies = [msg]
        self.inflight[seq] = copies
        self.pending.append((self.source.records, seq, copies))
        self._settle()

    def on_published(self, records: Sequence[TopicRecord], stored: bool | None) -> None:
        """``Source.published_hooks``: before (``stored`` None) and after a publish of this source's records."""
        if stored is None:
            upto = self.settled + len(records)
            self._write_state([seq for threshold, seq, _ in self.pending if threshold <= upto], self.topic.last_seq)
            return
        before = self.settled
        self.settled += len(records)
        if not stored:
            self.failed.append((before, self.settled))
        self._settle()

    def _settle(self) -> None:
        pending = self.pending
        settled = self.settled
        while pending and pending[0][0] <= settled:
            threshold, seq, copies = pending.popleft()
            self.inflight.pop(seq, None)
            while self.failed and self.failed[0][1] < threshold:
                self.failed.popleft()
            if self.failed and self.failed[0][0] < threshold <= self.failed[0][1]:
                self.to_nak.extend(copies)  # not stored: redelivered (not in ``stored``), stored then
            else:
                self.stored.add(seq)
                self.to_ack.extend(copies)
        self.flush_acks()

    def flush_acks(self) -> None:
        if self.to_ack:
            msgs, self.to_ack = self.to_ack, []
            self._send(msgs, nak=False)
        if self.to_nak:
            msgs, self.to_nak = self.to_nak, []
            self._send(msgs, nak=True)

    def _send(self, msgs: list[Any], nak: bool) -> None:
        if not nak:
            self.transport.acked += len(msgs)
        BUS.call(self.transport._ack, msgs, nak)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.state_path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable state %s (%s); starting afresh", self.transport.description, self.state_path, exc)
            return None
        return value if isinstance(value, dict) else None

    def _write_state(self, storing: list[int], after: int) -> None:
        if self._stream_created is None:
            return
        state = {
            "stream": self.transport.stream,
            "durable": self.transport.durable,
            "created": self._stream_created,
            "epoch": self.topic.epoch,
            "stored": sorted(self.stored),
            "storing": storing,
            "storing_after": after,
        }
        path = self.state_path
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(state, separators=(",", ":")), "utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            self.transport._log("%s: cannot write state %s: %s", self.transport.description, path, exc)


# --- gauss-quotes-gen --target nats://... --------------------------------------------


class SubjectWire:
    """Wraps the generator's wire format: a batch becomes one message per ``quotes.<SYMBOL>``."""

    def __init__(self, wire: Any, prefix: str = "quotes") -> None:
        self.wire = wire
        self.prefix = prefix

    def encode(self, quotes: Sequence[dict[str, Any]]) -> list[tuple[str, bytes]]:
        groups: dict[str, list[dict[str, Any]]] = {}
        for quote in quotes:
            groups.setdefault(str(quote.get("symbol", "")), []).append(quote)
        return [(f"{self.prefix}.{subject_token(symbol)}", self.wire.encode(group)) for symbol, group in groups.items()]


class NatsSender:
    """The generator's sender for ``--target nats://HOST:PORT``: publishes each message, flushes each batch.

    Runs its own asyncio loop in the calling thread (the generator is not a
    gevent program). A batch is flushed (a round trip) before ``send``
    returns, so the generator goes no faster than the server takes it.
    """

    def __init__(self, url: str, *, out: Any = None) -> None:
        self.url = url
        rest = url.split("://", 1)[-1]
        host, _, port = rest.partition(":")
        self.host = host or "127.0.0.1"
        self.port = int(port or 4222)
        self.errors = 0
        self._out = out
        self._loop = asyncio.new_event_loop()
        self._nc: Any = None

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def _connect(self, deadline: float | None) -> Any:
        nats = _import_client()
        backoff = 0.05
        while True:
            try:
                self._nc = self._loop.run_until_complete(
                    nats.connect(servers=[self.url], max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=2)
                )
                return self._nc
            except Exception as exc:  # noqa: BLE001 - not reachable yet
                self.errors += 1
                if self._out is not None and self.errors in (1, 10, 100):
                    print(f"gauss-quotes-gen: cannot connect to {self.url}: {exc}; retrying", file=self._out, flush=True)
                if deadline is not None and time.monotonic() + backoff > deadline:
                    raise OSError(f"cannot connect to {self.url}: {exc}") from None
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def send(self, messages: list[tuple[str, bytes]], deadline: float | None = None) -> None:
        nc = self._nc if self._nc is not None else self._connect(deadline)

        async def publish() -> None:
            for subject, data in messages:
                await nc.publish(subject, data)
            await nc.flush(timeout=10)

        while True:
            try:
                self._loop.run_until_complete(publish())
                return
            except Exception as exc:  # noqa: BLE001 - disconnected: nats-py reconnects, the batch is sent again
                self.errors += 1
                if self._out is not None and self.errors in (1, 10, 100):
                    print(f"gauss-quotes-gen: publish failed: {exc}; retrying", file=self._out, flush=True)
                time.sleep(0.2)

    def close(self) -> None:
        if self._nc is not None:
            try:
                self._loop.run_until_complete(self._nc.drain())
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self._nc = None
        self._loop.close()
