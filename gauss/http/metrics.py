"""Prometheus series of the API, registered on the hub's own registry.

Labels are bounded: HTTP requests by route template (never the raw path)
and status, WebSocket figures as totals (never per client).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ApiMetrics"]


class ApiMetrics:
    """Counters and gauges of one API server."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.http_requests = Counter(
            "gauss_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.ws_connections = Counter("gauss_ws_connections", "WebSocket connections accepted", registry=r)
        self.ws_open = Gauge("gauss_ws_open_connections", "WebSocket connections open now", registry=r)
        self.ws_slow_disconnects = Counter(
            "gauss_ws_slow_disconnects",
            "WebSocket clients disconnected because their queue overflowed for too long",
            registry=r,
        )
        self.ws_messages_in = Counter("gauss_ws_messages_received", "Messages WebSocket clients sent", registry=r)
        self.ws_errors = Counter(
            "gauss_ws_client_errors", "Malformed or refused WebSocket messages (answered with an error)", registry=r
        )
        self.ws_records_sent = Counter(
            "gauss_ws_records_sent", "Records pushed to WebSocket clients (live and replayed)", registry=r
        )
        self.http_connections_refused = Counter(
            "gauss_http_connections_refused",
            "Connections answered 503 at once: max_connections reached and none idle",
            registry=r,
        )
        self.http_connections_evicted = Counter(
            "gauss_http_connections_evicted",
            "Idle connections closed to admit a new one at max_connections (longest idle first)",
            registry=r,
        )
        self.http_timeouts = Counter(
            "gauss_http_timeouts",
            "Connections closed by a time limit (request_head, request_body, keepalive, write, ws_write)",
            ["kind"],
            registry=r,
        )
        self.http_bad_requests = Counter(
            "gauss_http_bad_requests", "Malformed HTTP request heads (answered 400, connection closed)", registry=r
        )
        self.inflight_refusals = Counter(
            "gauss_http_inflight_refusals",
            "Requests refused (503 or a WebSocket error) because max_inflight_bytes stayed full",
            registry=r,
        )
        self._open = Gauge("gauss_http_open_connections", "HTTP and WebSocket connections open now", registry=r)
        self._inflight = Gauge(
            "gauss_http_inflight_bytes", "Estimated bytes held by answers in flight (max_inflight_bytes)", registry=r
        )

    def watch(self, connections: Any, budget: Any) -> None:
        """Expose ``connections.open`` and ``budget.held`` as gauges (read at scrape time)."""
        self._open.set_function(lambda: connections.open)
        self._inflight.set_function(lambda: budget.held)
