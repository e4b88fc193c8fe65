"""Prometheus series of the API, registered on the hub's own registry.

Labels are bounded: HTTP requests by route template (never the raw path)
and status, WebSocket figures as totals (never per client).
"""

from __future__ import annotations

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
