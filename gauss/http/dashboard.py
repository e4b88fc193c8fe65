"""The dashboard of SPEC section 8: ``GET /`` and its static files, served from the package.

The page is plain ES modules and CSS under ``gauss/http/static/`` (no build
step); the chart library is vendored under ``static/vendor/`` with a manifest
of its version and checksums. Every file is read once, when the app is built,
into an immutable table keyed by its URL path: a request can only name a
file that is in the table, so no path can leave the directory.

Every answer carries a Content-Security-Policy that allows only the page's
own origin (no ``'unsafe-inline'``: the page has no inline script or style),
``X-Content-Type-Options: nosniff`` and an ETag (a hash of the content);
``If-None-Match`` with that ETag is answered 304 without a body.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import falcon

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "DASHBOARD_ROUTES",
    "STATIC_DIR",
    "STATIC_PREFIX",
    "Dashboard",
    "StaticFile",
    "add_dashboard_routes",
    "load_static",
]

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PREFIX = "/static/"
DASHBOARD_ROUTES = ("/", "/index.html")
"""Paths that answer the page itself."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""Only the page's own origin (``connect-src 'self'`` covers ``ws://`` to it); never ``'unsafe-inline'``."""

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".LICENSE": "text/plain; charset=utf-8",
}

_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True)
class StaticFile:
    """One file of the dashboard, read into memory with its type and ETag."""

    body: bytes
    content_type: str
    etag: str
    """Quoted strong ETag: the first 32 hex digits of the content's SHA-256."""


def load_static(directory: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """Every file under ``directory`` by URL path (``/static/js/app.js``); dot files are skipped."""
    files: dict[str, StaticFile] = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        body = path.read_bytes()
        suffix = path.suffix if path.suffix in _TYPES else ""
        content_type = _TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[STATIC_PREFIX + relative.as_posix()] = StaticFile(body, content_type, etag)
    return files


def _serve(req: falcon.Request, resp: falcon.Response, item: StaticFile) -> None:
    resp.set_headers(_SECURITY_HEADERS)
    # NOTE: "no-cache" is "revalidate every time": a new release changes a file's
    # ETag, so the browser never runs a stale module beside fresh ones.
    resp.cache_control = ["no-cache"]
    resp.etag = item.etag
    resp.content_type = item.content_type
    if _etag_matches(req.get_header("If-None-Match"), item.etag):
        resp.status = falcon.HTTP_304
        return
    resp.data = item.body if req.method != "HEAD" else b""
    if req.method == "HEAD":
        resp.content_length = len(item.body)


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


TOKEN_META = b'<meta name="gauss-auth" content="token">'
"""Put in the page's head when the API takes a token: the page asks for one before its first request.

Otherwise its first request would be the one to find out, with a 401 that
the browser logs as a console error (SPEC section 8: no console error).
"""


class Dashboard:
    """``GET /`` (and ``/index.html``): the page; open without a token, it asks for one itself."""

    def __init__(self, files: Mapping[str, StaticFile], *, token_required: bool = False) -> None:
        page = files[STATIC_PREFIX + "index.html"]
        if token_required:
            body = page.body.replace(b'<meta charset="utf-8">', b'<meta charset="utf-8">\n  ' + TOKEN_META, 1)
            page = StaticFile(body, page.content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
        self._page = page

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _serve(req, resp, self._page)

    on_head = on_get


class StaticFiles:
    """``GET /static/{path}``: one of the files loaded at start, else 404."""

    def __init__(self, files: Mapping[str, StaticFile]) -> None:
        self._files = dict(files)

    def on_get(self, req: falcon.Request, resp: falcon.Response, path: str) -> None:
        item = self._files.get(STATIC_PREFIX + path)
        if item is None:
            raise falcon.HTTPNotFound(description=f"not found: {req.path}")
        _serve(req, resp, item)

    on_head = on_get


def add_dashboard_routes(app: falcon.App, directory: Path = STATIC_DIR, *, token_required: bool = False) -> None:
    """Route the page and its static files on ``app`` (``token_required``: the API takes a token)."""
    files = load_static(directory)
    page = Dashboard(files, token_required=token_required)
    for route in DASHBOARD_ROUTES:
        app.add_route(route, page)
    app.add_route(STATIC_PREFIX + "{path:path}", StaticFiles(files))
