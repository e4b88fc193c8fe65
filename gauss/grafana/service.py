"""The gRPC services Grafana calls: Diagnostics, Data, Stream, Resource (package ``pluginv2``).

Every call carries the datasource's settings in ``pluginContext``; nothing is
cached between calls, so an edited datasource takes effect at once. Query
errors are per-query answers (status and ``errorSource``), never gRPC failures.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from gauss.grafana.frames import candle_frame, quote_frame, to_arrow
from gauss.grafana.gauss_api import GaussClient, GaussRejected, GaussUnavailable, normalize_base_url
from gauss.grafana.pluginv2 import backend_pb2 as pb
from gauss.grafana.pluginv2 import backend_pb2_grpc as pb_grpc
from gauss.grafana.queries import (
    TIMEFRAMES,
    BadQuery,
    CandleQuery,
    QuoteQuery,
    StreamPath,
    parse_query,
    parse_stream_path,
)
from gauss.grafana.streams import stream_packets

__all__ = ["DatasourceSettings", "PluginMetrics", "DiagnosticsService", "DataService", "StreamService", "ResourceService"]

log = logging.getLogger("gauss.grafana")

DEFAULT_TIMEOUT = 10.0
FETCH_WORKERS = 8


@dataclass(frozen=True)
class DatasourceSettings:
    """What a call needs from ``pluginContext.dataSourceInstanceSettings``: the Gauss client and the uid."""

    uid: str
    client: GaussClient

    @classmethod
    def from_context(cls, context: pb.PluginContext) -> DatasourceSettings:
        """Read URL, token (``decryptedSecureJsonData.token``) and ``jsonData.timeoutSeconds``; ValueError if unusable."""
        settings = context.dataSourceInstanceSettings
        json_data: dict[str, Any] = {}
        if settings.jsonData:
            try:
                loaded = json.loads(settings.jsonData)
            except ValueError as exc:
                raise ValueError(f"datasource jsonData is not JSON: {exc}") from None
            json_data = loaded if isinstance(loaded, dict) else {}
        timeout = json_data.get("timeoutSeconds", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
            raise ValueError(f"jsonData.timeoutSeconds: expected a number of seconds in (0, 300], got {timeout!r}")
        token = settings.decryptedSecureJsonData.get("token") or None
        base_url = normalize_base_url(settings.url or str(json_data.get("url", "")))
        return cls(settings.uid, GaussClient(base_url, token, float(timeout)))


class PluginMetrics:
    """The plugin's own Prometheus metrics, answered by CollectMetrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.queries = Counter("gauss_grafana_queries", "Panel queries answered", ["kind"], registry=self.registry)
        self.query_errors = Counter(
            "gauss_grafana_query_errors", "Panel queries answered with an error", ["source"], registry=self.registry
        )
        self.streams_active = Gauge("gauss_grafana_streams_active", "Running live channels", registry=self.registry)
        self.stream_packets = Counter("gauss_grafana_stream_packets", "Stream packets sent", registry=self.registry)
        self.stream_reconnects = Counter(
            "gauss_grafana_stream_reconnects", "Gauss WebSocket reconnects of live channels", registry=self.registry
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class DiagnosticsService(pb_grpc.DiagnosticsServicer):
    """CheckHealth asks Gauss's ``/api/health``; CollectMetrics returns the plugin's metrics."""

    def __init__(self, metrics: PluginMetrics) -> None:
        self.metrics = metrics

    def CheckHealth(self, request: pb.CheckHealthRequest, context: grpc.ServicerContext) -> pb.CheckHealthResponse:
        error = pb.CheckHealthResponse.ERROR
        try:
            settings = DatasourceSettings.from_context(request.pluginContext)
        except ValueError as exc:
            return pb.CheckHealthResponse(status=error, message=str(exc))
        client = settings.client
        try:
            answer = client.health()
            topics = client.topics()
        except GaussRejected as exc:
            hint = " (check the API token)" if exc.status in (401, 403) else ""
            return pb.CheckHealthResponse(status=error, message=f"Gauss at {client.base_url} refused: {exc.message}{hint}")
        except GaussUnavailable as exc:
            return pb.CheckHealthResponse(status=error, message=str(exc))
        if answer.get("status") != "ok":
            return pb.CheckHealthResponse(status=error, message=f"Gauss at {client.base_url} reports {answer!r}")
        details = json.dumps({"url": client.base_url, "topics": len(topics)}).encode()
        return pb.CheckHealthResponse(
            status=pb.CheckHealthResponse.OK,
            message=f"Gauss is up at {client.base_url} ({len(topics)} topics)",
            jsonDetails=details,
        )

    def CollectMetrics(self, request: pb.CollectMetricsRequest, context: grpc.ServicerContext) -> pb.CollectMetricsResponse:
        payload = pb.CollectMetricsResponse.Payload(prometheus=self.metrics.exposition())
        return pb.CollectMetricsResponse(metrics=payload)


def _error_response(status: int, message: str, source: str) -> pb.DataResponse:
    return pb.DataResponse(error=message, status=status, errorSource=source)


class DataService(pb_grpc.DataServicer):
    """QueryData: candles and quotes over the REST API, one Arrow frame per symbol.

    The symbols of a query are fetched concurrently (a dashboard of ten
    symbols costs one round trip, not ten), on a small shared pool.
    """

    def __init__(self, metrics: PluginMetrics, fetch_workers: int = FETCH_WORKERS) -> None:
        self.metrics = metrics
        self.fetchers = futures.ThreadPoolExecutor(max_workers=fetch_workers, thread_name_prefix="gauss-fetch")

    def QueryData(self, request: pb.QueryDataRequest, context: grpc.ServicerContext) -> pb.QueryDataResponse:
        response = pb.QueryDataResponse()
        try:
            settings: DatasourceSettings | None = DatasourceSettings.from_context(request.pluginContext)
            settings_error = ""
        except ValueError as exc:
            settings, settings_error = None, str(exc)
        for query in request.queries:
            if settings is None:
                answer = _error_response(400, settings_error, "downstream")
            else:
                answer = self._answer(settings, query)
            if answer.error:
                self.metrics.query_errors.labels(answer.errorSource).inc()
            response.responses[query.refId].CopyFrom(answer)
        return response

    def _answer(self, settings: DatasourceSettings, query: pb.DataQuery) -> pb.DataResponse:
        try:
            parsed = parse_query(
                query.json,
                ref_id=query.refId,
                query_type=query.queryType,
                from_ms=query.timeRange.fromEpochMS,
                to_ms=query.timeRange.toEpochMS,
                max_points=int(query.maxDataPoints),
                interval_ms=int(query.intervalMS),
            )
        except BadQuery as exc:
            return _error_response(400, str(exc), "downstream")
        kind = "candles" if isinstance(parsed, CandleQuery) else "quotes"
        self.metrics.queries.labels(kind).inc()
        try:
            if isinstance(parsed, CandleQuery):
                frames = self._candles(settings, parsed)
            else:
                frames = self._quotes(settings, parsed)
        except BadQuery as exc:
            return _error_response(400, str(exc), "downstream")
        except GaussRejected as exc:
            return _error_response(exc.status, f"Gauss rejected the query: {exc.message}", "downstream")
        except GaussUnavailable as exc:
            return _error_response(502, str(exc), "downstream")
        except Exception as exc:  # noqa: BLE001 - a bug must not fail the whole gRPC call
            log.exception("query %s failed", query.refId)
            return _error_response(500, f"internal error: {exc}", "plugin")
        return pb.DataResponse(frames=frames, status=200)

    def _candles(self, settings: DatasourceSettings, query: CandleQuery) -> list[bytes]:
        def frame(symbol: str, records: list[dict[str, Any]], truncated: bool, url: str) -> bytes:
            meta = _meta(
                url,
                settings.client.base_url,
                StreamPath.candles(query.timeframe, symbol, query.topic_prefix).channel(settings.uid),
                {"topic": query.topic, "timeframe": query.timeframe, "requestedTimeframe": query.requested,
                 "truncated": truncated},
                query.reason,
                truncated and f"only the most recent {query.limit} candles of the range are shown",
            )  # fmt: skip
            return to_arrow(candle_frame(symbol, records, ref_id=query.ref_id, meta=meta))

        return self._frames(settings, query.topic, query.symbols, query.bucket_from_ms, query.to_ms, query.limit, frame)

    def _quotes(self, settings: DatasourceSettings, query: QuoteQuery) -> list[bytes]:
        def frame(symbol: str, records: list[dict[str, Any]], truncated: bool, url: str) -> bytes:
            payload = records[0].get("data") if records else None
            if records and not (isinstance(payload, dict) and "bid" in payload):
                # A candle (or any other) topic would give rows of nulls: say what was asked wrongly.
                raise BadQuery(f"topic: {query.topic!r} holds no quotes (its records have no bid); candles are kind 'candles'")
            meta = _meta(
                url,
                settings.client.base_url,
                StreamPath.quotes(symbol, query.topic).channel(settings.uid),
                {"topic": query.topic, "truncated": truncated},
                "",
                truncated and f"only the most recent {query.limit} quotes of the range are shown (maxDataPoints)",
            )
            return to_arrow(quote_frame(symbol, records, ref_id=query.ref_id, meta=meta))

        return self._frames(settings, query.topic, query.symbols, query.from_ms, query.to_ms, query.limit, frame)

    def _frames(
        self,
        settings: DatasourceSettings,
        topic: str,
        symbols: Sequence[str],
        from_ms: int,
        to_ms: int,
        limit: int,
        frame: Callable[[str, list[dict[str, Any]], bool, str], bytes],
    ) -> list[bytes]:
        """One frame per symbol, fetched in parallel: ``frame(symbol, records, truncated, url)`` of each answer."""
        params = {"from": from_ms, "to": to_ms + 1, "limit": limit}

        def fetch(symbol: str) -> bytes:
            records, truncated = settings.client.records(topic, key=symbol, from_ms=params["from"], to_ms=params["to"], limit=limit)
            return frame(symbol, records, truncated, settings.client.url(f"/api/topics/{topic}", {"key": symbol, **params}))

        return list(self.fetchers.map(fetch, symbols))

def _meta(url: str, base_url: str, channel: str, custom: dict[str, Any], reason: str, notice: str | bool) -> dict[str, Any]:
    executed = "GET " + url[len(base_url):]
    if reason:
        executed += f"  # timeframe {custom['timeframe']}: {reason}"
    meta: dict[str, Any] = {
        "type": "timeseries-wide",
        "typeVersion": [0, 0],
        "channel": channel,
        "executedQueryString": executed,
        "custom": custom,
    }
    if notice:
        meta["notices"] = [{"severity": "warning", "text": notice}]
    return meta


class StreamService(pb_grpc.StreamServicer):
    """Live channels ``candles/<tf>/<SYM>`` and ``quotes/<SYM>``: subscribe, run, and refuse publishing."""

    def __init__(self, metrics: PluginMetrics, stopping: threading.Event) -> None:
        self.metrics = metrics
        self.stopping = stopping

    def SubscribeStream(self, request: pb.SubscribeStreamRequest, context: grpc.ServicerContext) -> pb.SubscribeStreamResponse:
        try:
            parse_stream_path(request.path)
        except ValueError:
            return pb.SubscribeStreamResponse(status=pb.SubscribeStreamResponse.NOT_FOUND)
        return pb.SubscribeStreamResponse(status=pb.SubscribeStreamResponse.OK)

    def PublishStream(self, request: pb.PublishStreamRequest, context: grpc.ServicerContext) -> pb.PublishStreamResponse:
        # Gauss's channels are read-only: quotes enter Gauss through its sources.
        return pb.PublishStreamResponse(status=pb.PublishStreamResponse.PERMISSION_DENIED)

    def RunStream(self, request: pb.RunStreamRequest, context: grpc.ServicerContext) -> Iterator[pb.StreamPacket]:
        try:
            path = parse_stream_path(request.path)
            settings = DatasourceSettings.from_context(request.pluginContext)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.info("stream %s started", path.path)
        self.metrics.streams_active.inc()
        try:
            packets = stream_packets(
                settings.client,
                path,
                lambda: context.is_active() and not self.stopping.is_set(),
                context.add_callback,
                self.metrics.stream_reconnects.inc,
            )
            for data in packets:
                self.metrics.stream_packets.inc()
                yield pb.StreamPacket(data=data)
        finally:
            self.metrics.streams_active.dec()
            log.info("stream %s ended", path.path)


class ResourceService(pb_grpc.ResourceServicer):
    """CallResource for the query editor: ``topics``, ``topics/<name>/keys``, ``symbols?topic=``, ``timeframes``."""

    def CallResource(self, request: pb.CallResourceRequest, context: grpc.ServicerContext) -> Iterator[pb.CallResourceResponse]:
        code, body = self._call(request)
        headers = {"Content-Type": pb.StringList(values=["application/json"])}
        yield pb.CallResourceResponse(code=code, headers=headers, body=json.dumps(body).encode())

    def _call(self, request: pb.CallResourceRequest) -> tuple[int, Any]:
        if request.method not in ("GET", ""):
            return 405, {"error": f"method {request.method} not allowed; resources are read-only"}
        parts = [p for p in request.path.strip("/").split("/") if p]
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query)
        try:
            if parts == ["timeframes"]:
                return 200, list(TIMEFRAMES)
            client = DatasourceSettings.from_context(request.pluginContext).client
            if parts == ["topics"]:
                return 200, client.topics()
            if len(parts) == 3 and parts[0] == "topics" and parts[2] == "keys":
                return 200, client.keys(urllib.parse.unquote(parts[1]))
            if parts == ["symbols"]:
                topic = (query.get("topic") or ["quotes.raw"])[0]
                return 200, sorted(str(k.get("key")) for k in client.keys(topic))
        except ValueError as exc:
            if isinstance(exc, GaussRejected):
                return exc.status, {"error": exc.message}
            return 400, {"error": str(exc)}
        except GaussUnavailable as exc:
            return 502, {"error": str(exc)}
        return 404, {"error": f"unknown resource {request.path!r}; known: topics, topics/<name>/keys, symbols, timeframes"}
