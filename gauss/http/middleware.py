"""Falcon middleware of the API: bearer-token access control, CORS and request metrics.

CORS is Falcon's own :class:`falcon.CORSMiddleware`, configured from
``[api] cors_origins`` by :func:`gauss.http.app.create_app`, plus ``Vary: Origin``.
"""

from __future__ import annotations

import hmac
from typing import Any, Mapping

import falcon

from gauss.http.metrics import ApiMetrics

__all__ = ["OPEN_ROUTES", "AuthMiddleware", "CorsMiddleware", "MetricsMiddleware", "token_matches", "bearer_token"]

OPEN_ROUTES = frozenset({"/api/health", "/", "/index.html"})
"""Routes that stay open when a token is configured (the dashboard page asks for the token itself)."""
OPEN_PREFIXES = ("/static/",)
"""Path prefixes that stay open: the dashboard's static files (no data in them)."""


def bearer_token(authorization: str | None, query_token: str | None) -> str | None:
    """The token a request presents: ``Authorization: Bearer <t>``, else ``?token=<t>``."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None


def token_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison (a timing side channel must not leak the token)."""
    if not presented or not expected:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def query_param(query_string: str, name: str) -> str | None:
    """One parameter of a raw query string (for the WebSocket upgrade, before Falcon)."""
    value = falcon.uri.parse_query_string(query_string).get(name)
    return value if isinstance(value, str) else None


class AuthMiddleware:
    """Refuse requests without the configured bearer token (401), except open routes and preflights."""

    def __init__(self, token: str) -> None:
        self._token = token

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in OPEN_ROUTES or req.path.startswith(OPEN_PREFIXES):
            return
        if req.method == "OPTIONS" and req.get_header("Access-Control-Request-Method"):
            return  # CORS preflight: browsers never send credentials with it
        presented = bearer_token(req.get_header("Authorization"), req.get_param("token"))
        if not token_matches(self._token, presented):
            raise falcon.HTTPUnauthorized(
                title="missing or invalid API token",
                description="send 'Authorization: Bearer <token>' (or ?token=<token>)",
                challenges=['Bearer realm="gauss"'],
            )


class CorsMiddleware(falcon.CORSMiddleware):
    """Falcon's CORS for a list of origins, whose answers differ by ``Origin``: so they say ``Vary: Origin`` (a cache must not mix them)."""

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool) -> None:
        super().process_response(req, resp, resource, req_succeeded)
        resp.append_header("Vary", "Origin")


class MetricsMiddleware:
    """Count every answer by route template, method and status."""

    def __init__(self, metrics: ApiMetrics) -> None:
        self._metrics = metrics

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool) -> None:
        route = req.uri_template or "unmatched"
        status = str(resp.status_code if hasattr(resp, "status_code") else resp.status).split(" ", 1)[0]
        self._metrics.http_requests.labels(route, req.method, status).inc()


def header(environ: Mapping[str, Any], name: str) -> str | None:
    """A request header from a WSGI environ (``Authorization`` -> ``HTTP_AUTHORIZATION``)."""
    value = environ.get("HTTP_" + name.upper().replace("-", "_"))
    return value if isinstance(value, str) else None
