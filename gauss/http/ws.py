"""The WebSocket API of SPEC section 5: one :class:`WebSocketSession` per connection.

The connection's own greenlet reads client messages and answers them. Each
subscription is a topic subscriber (kind ``ws``) with a bounded queue and a
greenlet of its own that replays stored records when asked (``since_seq`` /
``since_ts``; page by page, oldest first), then pushes the live tail: every
take drains all that waits, so one message carries every record waiting for
this client, and a batch's JSON is built once and shared by every client that
gets it whole. A watchdog disconnects a client whose queues stay overflowed
for ``ws_overflow_grace_s``; a write the client does not take within
``write_timeout_s`` ends the connection. Query answers go out as fragmented
messages of ~64 KiB frames; queries and replays hold their bytes of the
server's in-flight budget (:mod:`gauss.http.limits`), and every client
mistake, binary frames included, is an ``error`` answer on a connection that
stays open; a frame that breaks the protocol closes it with status 1002.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import gevent
import gevent.lock
import msgspec

from gauss.core import TopicRecord
from gauss.errors import GaussError, QueryError, StorageError, UnknownTopic
from gauss.http.encoding import CHUNK_BYTES, dumps, record_chunks, records_message_parts
from gauss.http.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ConnectionGone,
    FrameReader,
    ProtocolViolation,
    close_frame,
    frame,
    frame_header,
)  # fmt: skip
from gauss.http.limits import Charge, InflightBudget, InflightLimit, Share
from gauss.http.metrics import ApiMetrics
from gauss.http.options import WS_POLICIES, ApiOptions
from gauss.ratelimit import RateLimitedLog
from gauss.records import DEFAULT_QUERY_LIMIT, INT64_MAX, INT64_MIN, MAX_QUERY_LIMIT, OverflowPolicy, TopicQuery
from gauss.subscription import Delivery, Gap, PublishedBatch, Subscription

if TYPE_CHECKING:
    from gauss.topics import Topic, TopicRegistry

__all__ = ["WebSocketSession"]

log = logging.getLogger(__name__)
_slow_log = RateLimitedLog(log, interval=10.0)
_server_error_log = RateLimitedLog(log, interval=10.0, level=logging.ERROR)

REPLAY_MESSAGE_RECORDS = 5_000
"""Replayed records per pushed message."""

REPLAY_PAGE_RECORDS = MAX_QUERY_LIMIT
"""Most stored records a replay reads (and holds) at once; it reads as many pages as it takes."""

_SUBSCRIBE_FIELDS = frozenset({"action", "topic", "key", "policy", "id", "since_seq", "epoch", "since_ts"})
_UNSUBSCRIBE_FIELDS = frozenset({"action", "topic", "key", "id"})
_QUERY_FIELDS = frozenset({"action", "topic", "key", "from", "to", "since_seq", "limit", "id"})
_MISSING = object()
_decode = msgspec.json.Decoder().decode


class ClientError(GaussError, ValueError):
    """A client message that cannot be served; answered with an error, the connection stays open."""


class _PushKey:
    """Owner of the cached push message on a :class:`PublishedBatch` (one per topic name)."""

    __slots__ = ("prefix",)

    def __init__(self, topic: str) -> None:
        self.prefix = b'{"type":"records","topic":' + dumps(topic) + b',"records":'


_push_keys: dict[str, _PushKey] = {}


def _push_key(topic: str) -> _PushKey:
    key = _push_keys.get(topic)
    if key is None:
        if len(_push_keys) > 10_000:  # template topics: keep the cache bounded
            _push_keys.clear()
        key = _push_keys[topic] = _PushKey(topic)
    return key


def push_message(topic: str, batches: Sequence[PublishedBatch]) -> bytes:
    """``{"type":"records","topic":T,"records":[...]}`` for ``batches``, from their shared JSON."""
    owner = _push_key(topic)
    if len(batches) == 1:
        batch = batches[0]
        # PERF: one batch (the usual case) -> the whole message is cached on the
        # batch, so every client that got it whole sends the very same bytes.
        return batch.encoded(owner, lambda _records: owner.prefix + batch.records_json() + b"}")
    inner = b",".join(b.records_json()[1:-1] for b in batches)
    return owner.prefix + b"[" + inner + b"]}"


def records_message(topic: str, records: Sequence[TopicRecord]) -> bytes:
    """A push message for records that belong to no published batch (replays)."""
    return _push_key(topic).prefix + b"[" + b"".join(record_chunks(records)) + b"]}"


class _Pusher:
    """One subscription of a connection: optional replay, then the live tail."""

    def __init__(
        self,
        session: WebSocketSession,
        topic: Topic,
        subscription: Subscription,
        *,
        since_seq: int | None,
        since_ts: int | None,
        ident: Any = _MISSING,
        lossless: bool = False,
    ) -> None:
        self.session = session
        self.ident = ident
        self.lossless = lossless
        """``back_pressure``: the first live gap ends the subscription instead of being pushed."""
        self.topic = topic
        self.subscription = subscription
        self.key = subscription.key
        self.since_seq = since_seq
        self.since_ts = since_ts
        self.active = True
        self.seen_dropped = 0
        self.skip_through = 0
        self.greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self.greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """No more pushes: the subscription is closed; a push in progress is not sent."""
        self.active = False
        self.subscription.close()

    def _run(self) -> None:
        try:
            if self.since_seq is not None or self.since_ts is not None:
                self._replay()
            take = self.subscription.take
            while self.active:
                delivery = take()
                if delivery is None:
                    return
                self._deliver(delivery)
        except (ConnectionGone, OSError):
            self.session.close()
        except InflightLimit as exc:
            # The replay cannot be had now: say so and end this subscription (the
            # connection stays open); the client subscribes again later.
            self.session.end_subscription(self, f"replay of {self.topic.name!r} refused, subscription ended: {exc}")
        except gevent.GreenletExit:
            raise
        except Exception:  # noqa: BLE001 - a bug here must end this connection, not the server
            log.exception("WebSocket push on topic %s failed", self.topic.name)
            self.session.close()

    def _gap(self, gap: Gap) -> None:
        message: dict[str, Any] = {"type": "gap", "topic": self.topic.name}
        if self.key is not None:
            message["key"] = self.key
        message.update(dropped=gap.dropped, from_seq=gap.from_seq, to_seq=gap.to_seq)
        self.session.send(dumps(message), self)

    def _deliver(self, delivery: Delivery) -> None:
        batches, gap = delivery.batches, delivery.gap
        if gap is not None:
            # The gap goes where its hole is, so the client reads seqs in order: ``drop``
            # sheds the newest, so the batches still queued come before it; ``drop_oldest``
            # sheds the oldest (and ``conflate`` keeps records on both sides of it): after.
            before = 0
            while before < len(batches) and batches[before].records[-1].seq < gap.from_seq:
                before += 1
            if before:
                self._send_batches(batches[:before])
            if self.lossless:
                self._fell_behind(gap)
                return
            self._gap(gap)
            batches = batches[before:]
        if batches:
            self._send_batches(batches)

    def _fell_behind(self, gap: Gap) -> None:
        """A ``back_pressure`` client whose queue overflowed: end the subscription, say where to resume."""
        resume = gap.from_seq - 1
        self.session.end_subscription(
            self,
            f"policy back_pressure: the client fell behind (its queue of {self.subscription.capacity} records "
            f"overflowed; {gap.dropped} records from seq {gap.from_seq} not sent): subscription ended; "
            f"subscribe again with since_seq {resume} and epoch {self.topic.epoch!r} to resume",
        )

    def _send_batches(self, batches: list[PublishedBatch]) -> None:
        if self.skip_through:
            self._deliver_after_skip(batches)
            return
        n = sum(len(b.records) for b in batches)
        self.session.send(push_message(self.topic.name, batches), self, records=n)

    def _deliver_after_skip(self, batches: list[PublishedBatch]) -> None:
        """The client already had records up to ``skip_through`` (its since_seq was ahead)."""
        records = [r for b in batches for r in b.records if r.seq > self.skip_through]
        if records and records[0].seq > self.skip_through:
            self.skip_through = 0
        if records:
            self.session.send(records_message(self.topic.name, records), self, records=len(records))

    def _replay(self) -> None:
        """Send the stored records after the client's point, up to where the live queue starts, oldest first.

        A storage answers the most recent ``limit`` records of a ``ts_ms``
        range, so a page that comes back truncated only says where to cut
        (:func:`_cut`): the older part of the range is read and sent first,
        the newer part after it. Each page goes out in seq order; one page
        (and its charge of the budget) is held at a time.
        """
        topic, start = self.topic, self.subscription.start_seq
        since_seq = self.since_seq
        if since_seq is not None:
            if since_seq >= start:
                self.skip_through = since_seq if since_seq > start else 0
                return
            progress = _Progress(since_seq)
        else:
            progress = _Progress((topic.bounds()[0] or start + 1) - 1)  # ts_ms >= T evicted before: unknowable
        page = REPLAY_PAGE_RECORDS
        query = TopicQuery(key=self.key, from_ms=self.since_ts, since_seq=since_seq, limit=page)
        # Room for one page: since_seq tells how many records it may bring at most.
        expected = page if since_seq is None else max(1, min(page, start - since_seq))
        # The ts_ms range still to send: from low to each (exclusive) end in turn, the last first; None: no end.
        low = self.since_ts
        ends: list[int | None] = [None]
        with self.session.charge(topic.name, expected) as charge:
            while ends and self.active:
                charge.resize(self.session.budget.estimate(topic.name, expected))
                split = self._replay_range(replace(query, from_ms=low, to_ms=ends[-1]), progress, charge)
                if split is None:
                    low = ends.pop()
                    continue
                cut, newest = split
                if ends[-1] is None and newest < INT64_MAX:
                    # The first answer holds the newest record the replay owes: any newer one is live.
                    ends[-1] = newest + 1
                ends.append(cut)

    def _replay_range(self, query: TopicQuery, progress: _Progress, charge: Charge) -> tuple[int, int] | None:
        """Send the records of ``query``'s range, or if more match than a page holds, say where to cut it.

        None when sent; else the ts_ms to cut at and the newest ts_ms in the range.
        """
        topic, start = self.topic, self.subscription.start_seq
        result = topic.query(query)
        below = 0
        if result.truncated:
            cut = _cut(result.records, query.from_ms)
            if cut is not None:
                return cut, result.records[-1].ts_ms
            # More than a page of records share this one ts_ms: only the newest page of them can
            # be had, and none of those below it was sent (each ts_ms range is sent once).
            below = min(map(_seq, result.records)) - 1
        records = [r for r in result.records if r.seq <= start]  # later ones come live
        del result
        records.sort(key=_seq)
        if records and records[0].seq <= progress.top:
            progress.in_order = False  # ts_ms does not follow seq here
        # What the topic no longer holds was evicted (upsert topics: superseded by a newer
        # version, not lost); in seq order, only below the page, whose records were read before.
        evicted = 0 if topic.format.upsert else (topic.bounds()[0] or start + 1) - 1
        if records and progress.in_order:
            evicted = min(evicted, records[0].seq - 1)
        for through in (evicted, below):
            gap = progress.missing(min(through, start))
            if gap is not None:
                self._gap(gap)
        charge.resize(self.session.budget.estimate(topic.name, len(records)))
        for i in range(0, len(records), REPLAY_MESSAGE_RECORDS):
            chunk = records[i : i + REPLAY_MESSAGE_RECORDS]
            self.session.send(records_message(topic.name, chunk), self, records=len(chunk))
        if records:
            progress.sent(records[-1].seq, len(records))
        return None


class _Progress:
    """What a replay has sent or reported missing, to place its gaps (a topic's seqs follow each other).

    While pages come in seq order and ``accounted`` counts every seq after
    ``point`` (the client's since_seq) up to ``top``, a gap starts after
    ``top``. Otherwise (ts_ms not following seq, a key filter, since_ts)
    lower seqs may be missing too: it starts after the last seq a gap named
    (or ``point``), and may name some that were sent.
    """

    __slots__ = ("point", "top", "accounted", "named", "in_order")

    def __init__(self, point: int) -> None:
        self.point = self.top = self.named = point
        self.accounted = 0
        self.in_order = True

    @property
    def exact(self) -> bool:
        """Every seq after ``point`` up to ``top`` was sent or reported missing."""
        return self.in_order and self.accounted == self.top - self.point

    def sent(self, last: int, n: int) -> None:
        self.top = max(self.top, last)
        self.accounted += n

    def missing(self, through: int) -> Gap | None:
        """The gap of the seqs up to ``through`` not sent, if any."""
        exact = self.exact
        after = self.top if exact else self.named
        if through <= after:
            return None
        if exact:
            self.top, self.accounted = through, through - self.point
        self.named = through
        return Gap(through - after, after + 1, through)


def _cut(records: Sequence[TopicRecord], low: int | None) -> int | None:
    """Where to cut a range whose newest page is ``records`` (ascending by ts_ms), so that its older part holds less.

    Every record of the range newer than the page's oldest ts_ms is in the
    page: cutting just after that ts_ms leaves them for later. A page of one
    ts_ms cuts before it (the range's older part, then that ts_ms alone);
    None when the range is that one ts_ms already.
    """
    oldest, newest = records[0].ts_ms, records[-1].ts_ms
    if newest > oldest:
        return oldest + 1
    if low is None or oldest > low:
        return oldest
    return None


def _seq(record: TopicRecord) -> int:
    return int(record.seq)


class _Charged:
    """A context manager holding an answer's bytes of the budget (admitted on entry: may raise InflightLimit)."""

    def __init__(self, budget: InflightBudget, share: Share, topic: str, records: int) -> None:
        self._budget = budget
        self._share = share
        self._topic = topic
        self._records = records
        self._charge: Charge | None = None

    def __enter__(self) -> Charge:
        self._charge = self._budget.admit(self._share, self._budget.estimate(self._topic, self._records))
        return self._charge

    def __exit__(self, *exc: object) -> None:
        if self._charge is not None:
            self._charge.close()


class WebSocketSession:
    """One client connection on ``/ws``: its messages, subscriptions and sends."""

    def __init__(
        self,
        read: Callable[[int], bytes],
        write: Callable[[bytes], Any],
        shutdown: Callable[[], None],
        registry: TopicRegistry,
        options: ApiOptions,
        metrics: ApiMetrics,
        *,
        peer: str = "",
        budget: InflightBudget | None = None,
        share: Share | None = None,
        idle: Callable[[bool], Any] | None = None,
    ) -> None:
        self._reader = FrameReader(read, options.max_ws_message_bytes)
        self.budget = budget if budget is not None else InflightBudget(
            options.max_inflight_bytes, options.max_inflight_bytes_per_connection, options.inflight_wait_s
        )
        self._share = share if share is not None else Share()
        self._idle = idle
        self._write = write
        self._shutdown = shutdown
        self._registry = registry
        self._options = options
        self._metrics = metrics
        self.peer = peer
        self._lock = gevent.lock.Semaphore()
        self._pushers: dict[tuple[str, str | None], _Pusher] = {}
        self._closed = False
        self._watchdog: gevent.Greenlet | None = None
        self.slow = False
        """True once the watchdog disconnected this client for not reading."""

    @property
    def closed(self) -> bool:
        return self._closed

    # --- the connection's greenlet --------------------------------------------------

    def run(self) -> None:
        """Serve the connection until the client closes it (or it is closed)."""
        self._metrics.ws_connections.inc()
        self._metrics.ws_open.inc()
        self._watchdog = gevent.spawn(self._watch)
        try:
            idle = self._idle
            while not self._closed:
                # Waiting for a message with no subscription, the connection does nothing for
                # anyone: at max_connections it may give its slot to a newcomer (issue 11).
                if idle is not None:
                    idle(not self._pushers)
                message = self._reader.read_message()
                if idle is not None:
                    idle(False)
                op = message.opcode
                if op == OP_BINARY:
                    self._metrics.ws_messages_in.inc()
                    self._error(_MISSING, "binary frames are not accepted: send JSON text frames")
                elif op == OP_TEXT:
                    self._metrics.ws_messages_in.inc()
                    if message.oversize:
                        limit = self._options.max_ws_message_bytes
                        self._error(_MISSING, f"message too large (limit {limit} bytes)")
                    else:
                        self._handle(message.data)
                elif op == OP_PING:
                    self._send_raw(frame(message.data, OP_PONG))
                elif op == OP_CLOSE:
                    code = int.from_bytes(message.data[:2], "big") if len(message.data) >= 2 else 1000
                    self._send_raw(close_frame(code if 1000 <= code < 5000 else 1000))
                    return
        except ProtocolViolation as exc:
            log.debug("WebSocket %s: %s", self.peer, exc)
            self.close(code=1002, reason=str(exc))  # RFC 6455 section 7.1.7: fail the connection, saying why
        except (ConnectionGone, OSError) as exc:
            log.debug("WebSocket %s: %s", self.peer, exc)
        finally:
            self.close()
            self._metrics.ws_open.dec()

    def close(self, code: int | None = None, reason: str = "") -> None:
        """End every subscription and the connection (idempotent; safe from any greenlet).

        With ``code``, a close frame (with ``reason``) is sent first (when the
        socket takes it within a second); a slow client gets none: its socket is full.
        """
        if self._closed:
            return
        self._closed = True
        current = gevent.getcurrent()
        pushers = list(self._pushers.values())
        self._pushers.clear()
        for pusher in pushers:
            pusher.stop()
        others = [p.greenlet for p in pushers if p.greenlet is not None and p.greenlet is not current]
        if self._watchdog is not None and self._watchdog is not current:
            others.append(self._watchdog)
        # Blocking kill: no greenlet may still be inside a write when the close frame goes.
        gevent.killall(others, block=True, timeout=1.0)
        if code is not None:
            try:
                with gevent.Timeout(1.0, False), self._lock:
                    self._write(close_frame(code, reason))
            except OSError:
                pass
        self._shutdown()

    # --- sending -----------------------------------------------------------------------

    def send(self, payload: bytes, pusher: _Pusher | None = None, *, records: int = 0) -> None:
        """Send one text message; a push of a stopped subscription is not sent."""
        with self._lock:
            if self._closed or (pusher is not None and not pusher.active):
                return
            if len(payload) < 65_536:
                self._write(frame_header(len(payload)) + payload)
            else:  # PERF: no copy of a large payload just to put a header before it
                self._write(frame_header(len(payload)))
                self._write(payload)
        if records:
            self._metrics.ws_records_sent.inc(records)

    def send_parts(self, parts: Iterable[bytes]) -> None:
        """Send one text message made of ``parts`` as a fragmented message, ~64 KiB a frame.

        Nothing holds the whole message: each frame goes out as soon as it is
        full. Pushes of this connection wait meanwhile (frames of two
        messages must not interleave); control frames need not.
        """
        with self._lock:
            if self._closed:
                return
            opcode = OP_TEXT
            pending: list[bytes] = []
            size = 0
            for part in parts:
                if size >= CHUNK_BYTES:
                    self._write_fragment(opcode, pending, size, fin=False)
                    opcode, pending, size = OP_CONTINUATION, [], 0
                pending.append(part)
                size += len(part)
            self._write_fragment(opcode, pending, size, fin=True)

    def _write_fragment(self, opcode: int, pending: list[bytes], size: int, *, fin: bool) -> None:
        self._write(frame_header(size, opcode, fin=fin) + b"".join(pending))

    def charge(self, topic: str, records: int) -> _Charged:
        """``with session.charge(topic, n) as charge:`` hold an answer's bytes of the in-flight budget."""
        return _Charged(self.budget, self._share, topic, records)

    def end_subscription(self, pusher: _Pusher, text: str) -> None:
        """End ``pusher``'s subscription from its own greenlet and tell the client why."""
        for where, held in list(self._pushers.items()):
            if held is pusher:
                del self._pushers[where]
        pusher.stop()
        self._metrics.ws_errors.inc()
        message: dict[str, Any] = {"type": "error", "topic": pusher.topic.name}
        if pusher.key is not None:
            message["key"] = pusher.key
        if pusher.ident is not _MISSING:
            message["id"] = pusher.ident
        message["error"] = text
        self._answer(message)

    def _send_raw(self, data: bytes) -> None:
        with self._lock:
            if not self._closed:
                self._write(data)

    def _answer(self, message: dict[str, Any]) -> None:
        self.send(dumps(message))

    def _error(self, ident: Any, text: str) -> None:
        self._metrics.ws_errors.inc()
        message: dict[str, Any] = {"type": "error"}
        if ident is not _MISSING:
            message["id"] = ident
        message["error"] = text
        self._answer(message)

    # --- client messages ------------------------------------------------------------------

    def _handle(self, data: bytes) -> None:
        try:
            message = _decode(data)
        except msgspec.DecodeError as exc:
            self._error(_MISSING, f"malformed JSON: {exc}")
            return
        if not isinstance(message, dict):
            self._error(_MISSING, "a message must be a JSON object")
            return
        ident = message.get("id", _MISSING)
        action = message.get("action")
        handler = {"subscribe": self._subscribe, "unsubscribe": self._unsubscribe, "query": self._query}.get(
            action if isinstance(action, str) else ""
        )
        if handler is None:
            what = "missing" if action is None else f"unknown action {action!r}"
            self._error(ident, f"action: {what}; known: query, subscribe, unsubscribe")
            return
        try:
            handler(message, ident)
        except (ClientError, QueryError, UnknownTopic, InflightLimit) as exc:
            self._error(ident, str(exc))
        except (ConnectionGone, gevent.GreenletExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a storage failure answers this request, not the connection
            if self._closed or (isinstance(exc, OSError) and not isinstance(exc, StorageError)):
                raise  # this connection's own socket failed (or timed out): it ends
            _server_error_log("WebSocket %s: %s failed: %r", self.peer, action, exc)
            self._error(ident, f"server error: {type(exc).__name__}: {exc}")

    @staticmethod
    def _check_fields(message: Mapping[str, Any], allowed: frozenset[str]) -> None:
        for name in message:
            if name not in allowed:
                raise ClientError(f"{name}: unknown field; known: {', '.join(sorted(allowed))}")

    @staticmethod
    def _topic_and_key(message: Mapping[str, Any]) -> tuple[str, str | None]:
        topic = message.get("topic")
        if not isinstance(topic, str) or not topic:
            raise ClientError("topic: must be a non-empty string")
        key = message.get("key")
        if key is not None and (not isinstance(key, str) or not key):
            raise ClientError("key: must be a non-empty string")
        return topic, key

    @staticmethod
    def _int_field(message: Mapping[str, Any], name: str, *, minimum: int | None = None) -> int | None:
        value = message.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
            raise ClientError(f"{name}: must be an integer")
        if not INT64_MIN <= value <= INT64_MAX:  # 1e30 is "an integer" to JSON, not to a storage
            raise ClientError(f"{name}: must fit in a signed 64-bit integer")
        if minimum is not None and value < minimum:
            raise ClientError(f"{name}: must be at least {minimum}")
        return int(value)

    def _answer_head(self, kind: str, topic: str, key: str | None, ident: Any) -> dict[str, Any]:
        head: dict[str, Any] = {"type": kind, "topic": topic}
        if key is not None:
            head["key"] = key
        if ident is not _MISSING:
            head["id"] = ident
        return head

    def _subscribe(self, message: Mapping[str, Any], ident: Any) -> None:
        self._check_fields(message, _SUBSCRIBE_FIELDS)
        name, key = self._topic_and_key(message)
        policy_name = message.get("policy", OverflowPolicy.DROP.value)
        try:
            policy = OverflowPolicy.parse(policy_name)
        except ValueError:
            policy = None
        if policy is None or policy not in WS_POLICIES:
            known = ", ".join(p.value for p in WS_POLICIES)
            raise ClientError(f"policy: unknown policy {policy_name!r}; known: {known}")
        since_seq = self._int_field(message, "since_seq", minimum=0)
        since_ts = self._int_field(message, "since_ts")
        epoch = message.get("epoch")
        if since_seq is not None and since_ts is not None:
            raise ClientError("since_seq: give since_seq or since_ts, not both")
        if epoch is not None and not isinstance(epoch, str):
            raise ClientError("epoch: must be a string")
        if epoch is not None and since_seq is None:
            raise ClientError("epoch: only with since_seq (the seq it belongs to)")
        if (name, key) in self._pushers:
            raise ClientError(f"topic: already subscribed to {name!r}" + (f" with key {key!r}" if key else ""))
        if len(self._pushers) >= self._options.max_ws_subscriptions:
            raise ClientError(f"topic: at most {self._options.max_ws_subscriptions} subscriptions per connection")
        topic = self._registry.get(name)
        lossless = policy is OverflowPolicy.BACK_PRESSURE
        queue_policy = OverflowPolicy.DROP if lossless else policy  # the publisher never waits for a client
        subscription = topic.subscribe(key=key, policy=queue_policy, capacity=self._options.ws_queue_size, kind="ws")
        pusher = _Pusher(self, topic, subscription, since_seq=since_seq, since_ts=since_ts, ident=ident, lossless=lossless)
        self._pushers[(name, key)] = pusher
        try:
            if epoch is not None and epoch != topic.epoch:
                self._answer({"type": "reset", "topic": name, "epoch": topic.epoch})
                pusher.since_seq = 0
            answer = self._answer_head("subscribed", name, key, ident)
            answer.update(epoch=topic.epoch, first_seq=topic.bounds()[0], last_seq=subscription.start_seq)
            self._answer(answer)
        except BaseException:
            self._pushers.pop((name, key), None)
            pusher.stop()
            raise
        if not self._closed:
            pusher.start()

    def _unsubscribe(self, message: Mapping[str, Any], ident: Any) -> None:
        self._check_fields(message, _UNSUBSCRIBE_FIELDS)
        name, key = self._topic_and_key(message)
        pusher = self._pushers.pop((name, key), None)
        if pusher is None:
            raise ClientError(f"topic: not subscribed to {name!r}" + (f" with key {key!r}" if key else ""))
        pusher.stop()
        self._answer(self._answer_head("unsubscribed", name, key, ident))

    def _query(self, message: Mapping[str, Any], ident: Any) -> None:
        self._check_fields(message, _QUERY_FIELDS)
        name, key = self._topic_and_key(message)
        # JSON numbers only, as in subscribe: TopicQuery.from_params also reads the strings of REST query strings.
        from_ms, to_ms = self._int_field(message, "from"), self._int_field(message, "to")
        since_seq, limit = self._int_field(message, "since_seq", minimum=0), self._int_field(message, "limit")
        query = TopicQuery(
            key=key, from_ms=from_ms, to_ms=to_ms, since_seq=since_seq,
            limit=DEFAULT_QUERY_LIMIT if limit is None else limit,
        )  # fmt: skip
        topic = self._registry.get(name)
        with self.charge(name, query.limit) as charge:
            result = topic.query(query)
            records, truncated = result.records, result.truncated
            del result
            charge.resize(self.budget.estimate(name, len(records)))
            head = self._answer_head("result", name, key, ident)
            on_measure = self.budget.measured(charge, name, records)
            self.send_parts(records_message_parts(head, records, {"truncated": truncated}, on_measure=on_measure))

    # --- slow clients ------------------------------------------------------------------------

    def _watch(self) -> None:
        grace = self._options.ws_overflow_grace_s
        interval = min(0.5, max(0.02, grace / 4))
        overflowing_since: float | None = None
        while not self._closed:
            gevent.sleep(interval)
            overflowing = False
            for pusher in list(self._pushers.values()):
                sub = pusher.subscription
                dropped = sub.dropped
                if dropped != pusher.seen_dropped or sub.depth >= sub.capacity:
                    overflowing = True
                pusher.seen_dropped = dropped
            now = time.monotonic()
            if not overflowing:
                overflowing_since = None
                continue
            if overflowing_since is None:
                overflowing_since = now
            if now - overflowing_since >= grace:
                self.slow = True
                self._metrics.ws_slow_disconnects.inc()
                _slow_log("WebSocket client %s disconnected: its queue overflowed for %.1f s", self.peer, now - overflowing_since)
                self.close()
                return
