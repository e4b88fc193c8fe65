"""The REST API of SPEC section 4 as a Falcon WSGI app.

Every answer is JSON; every error is ``{"error": "<message>"}`` with a 4xx
status naming what was wrong (a bad parameter by name, an unknown topic or
path), never a 500 or a traceback for a client mistake. Record lists are
streamed in ~64 KiB chunks (:mod:`gauss.http.encoding`).
"""

from __future__ import annotations

import logging
import traceback
from typing import TYPE_CHECKING, Any, Collection, Iterator, Mapping, Sequence

import falcon
from prometheus_client import CONTENT_TYPE_LATEST

from gauss.core import TopicRecord
from gauss.errors import QueryError, StorageError, StorageUnavailable, UnknownTopic
from gauss.http.dashboard import add_dashboard_routes
from gauss.http.encoding import dumps, records_message_parts
from gauss.http.guard import GuardMiddleware
from gauss.http.limits import SHARE_KEY, ChargedStream, InflightBudget, InflightLimit, Share
from gauss.http.metrics import ApiMetrics
from gauss.http.middleware import AuthMiddleware, CorsMiddleware, MetricsMiddleware
from gauss.http.options import ApiOptions
from gauss.ratelimit import RateLimitedLog
from gauss.records import KeyInfo, TopicQuery

if TYPE_CHECKING:
    from gauss.hub import Hub
    from gauss.topics import Topic

__all__ = ["create_app"]

log = logging.getLogger(__name__)
_storage_failures = RateLimitedLog(log)
_internal_failures = RateLimitedLog(log, level=logging.ERROR)

QUERY_PARAMS = frozenset({"key", "from", "to", "since_seq", "limit"})
_ALWAYS_ALLOWED = frozenset({"token"})


def create_app(hub: Hub, options: ApiOptions, metrics: ApiMetrics, *, budget: InflightBudget | None = None) -> falcon.App:
    """The Falcon app serving ``hub``'s topics (``/ws`` is routed before it sees the request).

    ``budget`` caps the bytes record answers hold at once (the server shares
    one with its WebSocket sessions; by default one from ``options``).
    """
    if budget is None:
        budget = InflightBudget(
            options.max_inflight_bytes, options.max_inflight_bytes_per_connection, options.inflight_wait_s
        )
    middleware: list[Any] = [MetricsMiddleware(metrics), GuardMiddleware(options, "/ws")]
    if options.cors_origins == ("*",):
        middleware.append(falcon.CORSMiddleware(allow_origins="*", expose_headers=["Content-Type"]))
    elif options.cors_origins:
        middleware.append(CorsMiddleware(allow_origins=list(options.cors_origins), expose_headers=["Content-Type"]))
    if options.token is not None:
        middleware.append(AuthMiddleware(options.token))
    app = falcon.App(middleware=middleware, router=_HeadAsGetRouter())
    app.req_options.auto_parse_qs_csv = False
    app.req_options.keep_blank_qs_values = True
    app.set_error_serializer(_serialize_error)
    app.add_error_handler(Exception, _internal_error)
    app.add_error_handler(QueryError, _query_error)
    app.add_error_handler(UnknownTopic, _unknown_topic)
    app.add_error_handler(InflightLimit, _inflight_limit)
    app.add_error_handler(StorageError, _storage_error)
    app.add_route("/api/health", Health())
    app.add_route("/api/topics", TopicList(hub))
    app.add_route("/api/topics/{name}", TopicRecords(hub, budget))
    app.add_route("/api/topics/{name}/keys", TopicKeys(hub, budget))
    app.add_route("/api/topics/{name}/latest", TopicLatest(hub, budget))
    app.add_route("/metrics", MetricsExposition(hub))
    app.add_route("/ws", WebSocketOnly())
    add_dashboard_routes(app, token_required=options.token is not None)  # GET / and /static/*: SPEC section 8
    return app


class _HeadAsGetRouter(falcon.routing.CompiledRouter):
    """Falcon's router, answering HEAD with a resource's ``on_get`` where it has no ``on_head``.

    HTTP expects HEAD wherever GET works (RFC 9110 section 9.3.2); Falcon
    answers 405 instead, and drops the body of a HEAD answer itself.
    """

    def map_http_methods(self, resource: object, **kwargs: Any) -> Any:
        methods: dict[str, Any] = super().map_http_methods(resource, **kwargs)
        if "GET" in methods:
            methods.setdefault("HEAD", methods["GET"])
        return methods


# --- errors ------------------------------------------------------------------------

def _serialize_error(req: falcon.Request, resp: falcon.Response, exception: falcon.HTTPError) -> None:
    message = exception.description
    if not message:
        if isinstance(exception, falcon.HTTPNotFound):
            message = f"not found: {req.path}"
        elif isinstance(exception, falcon.HTTPMethodNotAllowed):
            message = f"method {req.method} not allowed on {req.path}"
        else:
            message = exception.title or "error"
    resp.data = dumps({"error": message})
    resp.content_type = falcon.MEDIA_JSON


def _query_error(req: falcon.Request, resp: falcon.Response, exc: QueryError, params: dict[str, Any]) -> None:
    raise falcon.HTTPBadRequest(description=str(exc))


def _unknown_topic(req: falcon.Request, resp: falcon.Response, exc: UnknownTopic, params: dict[str, Any]) -> None:
    raise falcon.HTTPNotFound(description=str(exc))


def _storage_error(req: falcon.Request, resp: falcon.Response, exc: StorageError, params: dict[str, Any]) -> None:
    """A storage that cannot answer: 503 when it may later (ClickHouse down, say), else 500; one log line per 10 s."""
    if isinstance(exc, StorageUnavailable):
        _storage_failures("%s %s: storage unavailable: %s", req.method, req.path, exc)
        raise falcon.HTTPServiceUnavailable(description=f"storage unavailable: {exc}")
    _storage_failures("%s %s: storage failed: %s", req.method, req.path, exc)
    raise falcon.HTTPInternalServerError(description=f"storage failed: {exc}")


def _inflight_limit(req: falcon.Request, resp: falcon.Response, exc: InflightLimit, params: dict[str, Any]) -> None:
    """Answers in flight hold ``max_inflight_bytes`` and none gave way within ``inflight_wait_s``."""
    raise falcon.HTTPServiceUnavailable(description=str(exc), retry_after=1)


def _internal_error(req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict[str, Any]) -> None:
    if isinstance(exc, (falcon.HTTPError, falcon.HTTPStatus)):
        raise exc
    # A bug, not a client mistake; still at most one traceback per 10 s however often it is hit.
    _internal_failures("%s %s failed: %s", req.method, req.path, traceback.format_exc().rstrip())
    raise falcon.HTTPInternalServerError(description=f"internal error: {type(exc).__name__}")


def checked_params(req: falcon.Request, allowed: Collection[str]) -> dict[str, str]:
    """The query parameters, each given once and each one this route knows (else 400 naming it)."""
    params: dict[str, str] = {}
    for name, value in req.params.items():
        if name in _ALWAYS_ALLOWED:
            continue
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise falcon.HTTPBadRequest(description=f"{name}: unknown parameter; known: {known}")
        if isinstance(value, list):
            raise falcon.HTTPBadRequest(description=f"{name}: given more than once")
        params[name] = value
    return params


def _key_param(params: Mapping[str, str]) -> str | None:
    key = params.get("key")
    if key is None:
        return None
    if not key:
        raise falcon.HTTPBadRequest(description="key: must be a non-empty string")
    return key


# --- resources ---------------------------------------------------------------------


class Health:
    """``GET /api/health``: open even when a token is configured."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checked_params(req, ())
        resp.data = b'{"status":"ok"}'
        resp.content_type = falcon.MEDIA_JSON


class TopicList:
    """``GET /api/topics``: name, storage, format and record count of every topic."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checked_params(req, ())
        resp.data = dumps([_listing_entry(t) for t in self._hub.registry.topics()])
        resp.content_type = falcon.MEDIA_JSON


def _listing_entry(topic: Topic) -> dict[str, Any]:
    """One topic of the listing; a storage that cannot count gives ``"records": null`` and ``"error"`` (SPEC 4)."""
    entry: dict[str, Any] = {"name": topic.name, "storage": topic.storage_type, "format": topic.format.value}
    try:
        entry["records"] = topic.count()
    except StorageError as exc:
        _storage_failures("GET /api/topics: topic %s: %s", topic.name, exc)
        entry["records"] = None
        entry["error"] = f"storage unavailable: {exc}"
    return entry


class _TopicResource:
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def topic(self, name: str) -> Topic:
        return self._hub.registry.get(name)


class _RecordsResource(_TopicResource):
    """A route answering record lists: each answer holds its bytes of the in-flight budget."""

    def __init__(self, hub: Hub, budget: InflightBudget) -> None:
        super().__init__(hub)
        self._budget = budget

    def charged_answer(
        self, req: falcon.Request, resp: falcon.Response, name: str, expected: int, fetch: Any, tail: Any
    ) -> None:
        """Admit an answer of about ``expected`` records (503 when no room), ``fetch()`` it, stream it."""
        budget = self._budget
        share = req.env.get(SHARE_KEY) or Share()
        charge = budget.admit(share, budget.estimate(name, expected))
        try:
            records = fetch()
            charge.resize(budget.estimate(name, len(records)))
            parts = records_message_parts(
                {"topic": name}, records, tail(), on_measure=budget.measured(charge, name, records)
            )
        except BaseException:
            charge.close()
            raise
        resp.content_type = falcon.MEDIA_JSON
        resp.stream = ChargedStream(parts, charge)


class TopicRecords(_RecordsResource):
    """``GET /api/topics/{name}?key=&from=&to=&since_seq=&limit=``, streamed."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        query = TopicQuery.from_params(checked_params(req, QUERY_PARAMS))
        topic = self.topic(name)
        truncated = False

        def fetch() -> Sequence[TopicRecord]:
            nonlocal truncated
            result = topic.query(query)
            truncated = result.truncated
            return result.records

        self.charged_answer(req, resp, name, query.limit, fetch, lambda: {"truncated": truncated})


KEY_ENTRY_BYTES = 256
"""What one key of a ``/keys`` answer holds while it is served (its KeyInfo, dict and JSON), for the in-flight budget."""

_KEY_CHUNK = 2_000
"""Keys written to the answer at once."""


class TopicKeys(_RecordsResource):
    """``GET /api/topics/{name}/keys``: the keys a topic holds.

    A topic of 300,000 keys answers ~20 MB: the answer holds its bytes of the
    in-flight budget (503 when there is no room) and is written and sent in
    chunks, so clients that ask and never read cannot pile up memory or
    hold the loop (issue 11).
    """

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        checked_params(req, ())
        topic = self.topic(name)
        budget = self._budget
        charge = budget.admit(req.env.get(SHARE_KEY) or Share(), KEY_ENTRY_BYTES * _KEY_CHUNK)
        try:
            keys = topic.keys()
            charge.resize(KEY_ENTRY_BYTES * len(keys))
        except BaseException:
            charge.close()
            raise
        resp.content_type = falcon.MEDIA_JSON
        resp.stream = ChargedStream(_key_chunks(keys), charge)


def _key_chunks(keys: Sequence[KeyInfo]) -> Iterator[bytes]:
    yield b"["
    for start in range(0, len(keys), _KEY_CHUNK):
        entries = [{"key": k.key, "records": k.records, "last_ts_ms": k.last_ts_ms} for k in keys[start : start + _KEY_CHUNK]]
        yield (b"," if start else b"") + dumps(entries)[1:-1]
    yield b"]"


class TopicLatest(_RecordsResource):
    """``GET /api/topics/{name}/latest?key=``: the newest record of each key (or of ``key``)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        key = _key_param(checked_params(req, ("key",)))
        topic = self.topic(name)
        expected = 1 if key is not None else 1000  # one per key; the real count resizes the charge
        self.charged_answer(req, resp, name, expected, lambda: topic.latest(key), dict)


class MetricsExposition:
    """``GET /metrics``: the hub's Prometheus registry in the text format."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checked_params(req, ())
        resp.data = self._hub.metrics.exposition()
        resp.content_type = CONTENT_TYPE_LATEST


class WebSocketOnly:
    """``/ws`` reached without a WebSocket upgrade."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise falcon.HTTPBadRequest(description="/ws: a WebSocket upgrade is required (Upgrade: websocket)")
