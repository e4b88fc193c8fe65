"""A small blocking client for Gauss's REST API (SPEC section 4), as the datasource uses it.

Plain ``urllib``: the plugin is a separate process without gevent, each gRPC
call runs on its own worker thread, and a request is a handful of bytes.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from gauss.errors import GaussError

__all__ = ["GaussClient", "GaussRejected", "GaussUnavailable", "normalize_base_url"]

# The largest ``limit`` the REST API accepts (SPEC section 4).
MAX_LIMIT = 100_000
# Answers larger than this are refused rather than read into memory.
MAX_BODY_BYTES = 256 * 1024 * 1024


class GaussUnavailable(GaussError, ConnectionError):
    """Gauss could not be reached, timed out or failed (5xx): the fault is downstream."""


class GaussRejected(GaussError, ValueError):
    """Gauss answered 4xx: the request was wrong (unknown topic, bad parameter, bad token)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"Gauss answered {status}: {message}")


def normalize_base_url(url: str) -> str:
    """Return ``url`` with a scheme (``http://`` when missing) and without a trailing slash."""
    url = url.strip()
    if not url:
        raise ValueError("the datasource URL is empty; set it to Gauss's API, e.g. http://127.0.0.1:9200")
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the datasource URL {url!r} is not an http(s) URL")
    return url.rstrip("/")


@dataclass(frozen=True)
class GaussClient:
    """Talks to one Gauss API at ``base_url`` (``http://host:9200``), with an optional bearer token."""

    base_url: str
    token: str | None = None
    timeout: float = 10.0

    def headers(self) -> dict[str, str]:
        """Headers every request carries: JSON, and the API token when one is configured."""
        headers = {"Accept": "application/json", "User-Agent": "gauss-grafana-datasource"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def url(self, path: str, params: dict[str, Any] | None = None) -> str:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        suffix = "?" + urllib.parse.urlencode(query) if query else ""
        return f"{self.base_url}{path}{suffix}"

    def ws_url(self) -> str:
        """The WebSocket endpoint ``/ws`` on the same host (``ws://`` or ``wss://``)."""
        parts = urllib.parse.urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))

    def get(self, path: str, params: dict[str, Any] | None = None) -> bytes:
        """GET ``path`` and return the body; raise GaussUnavailable or GaussRejected."""
        request = urllib.request.Request(self.url(path, params), headers=self.headers(), method="GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read(MAX_BODY_BYTES + 1)
        except urllib.error.HTTPError as exc:
            message = _error_message(exc.read(64 * 1024), exc.reason)
            exc.close()
            if 400 <= exc.code < 500:
                raise GaussRejected(exc.code, message) from None
            raise GaussUnavailable(f"Gauss at {self.base_url} failed: {exc.code} {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise GaussUnavailable(f"cannot reach Gauss at {self.base_url}: {reason}") from None
        if len(body) > MAX_BODY_BYTES:
            raise GaussUnavailable(f"Gauss's answer to {path} exceeds {MAX_BODY_BYTES} bytes")
        return body

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        body = self.get(path, params)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise GaussUnavailable(f"Gauss answered {path} with invalid JSON: {exc}") from None

    def health(self) -> dict[str, Any]:
        """``GET /api/health``."""
        answer = self.get_json("/api/health")
        if not isinstance(answer, dict):
            raise GaussUnavailable(f"unexpected /api/health answer: {answer!r}")
        return answer

    def topics(self) -> list[dict[str, Any]]:
        """``GET /api/topics``: name, storage, format and record count of every topic."""
        return list(self.get_json("/api/topics"))

    def keys(self, topic: str) -> list[dict[str, Any]]:
        """``GET /api/topics/{topic}/keys``: the symbols a topic holds."""
        return list(self.get_json(f"/api/topics/{urllib.parse.quote(topic, safe='')}/keys"))

    def records(
        self,
        topic: str,
        *,
        key: str | None = None,
        from_ms: int | None = None,
        to_ms: int | None = None,
        limit: int | None = None,
        since_seq: int | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """``GET /api/topics/{topic}``: the records (ascending ``ts_ms``) and whether they were truncated."""
        params = {"key": key, "from": from_ms, "to": to_ms, "limit": limit, "since_seq": since_seq}
        answer = self.get_json(f"/api/topics/{urllib.parse.quote(topic, safe='')}", params)
        if not isinstance(answer, dict) or not isinstance(answer.get("records"), list):
            raise GaussUnavailable(f"unexpected answer for topic {topic!r}: not a records object")
        return answer["records"], bool(answer.get("truncated", False))


def _error_message(body: bytes, fallback: object) -> str:
    try:
        answer = json.loads(body)
    except ValueError:
        return str(fallback)
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return answer["error"]
    return str(fallback)
