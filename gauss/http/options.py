"""The ``[api]`` options of the HTTP/WebSocket API, parsed once and checked.

``bind`` and ``port`` are the engine's (:class:`gauss.config.ApiSettings`);
every other key of the table is read here, so a typo is a configuration
error naming the key, not a silent default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Mapping

from gauss.errors import ConfigError
from gauss.records import OverflowPolicy
from gauss.registry import Options

__all__ = ["ApiOptions", "TOKEN_ENV", "WS_POLICIES"]

TOKEN_ENV = "GAUSS_API_TOKEN"
"""Environment variable that sets (and overrides) ``[api] token``."""

WS_POLICIES = (OverflowPolicy.DROP, OverflowPolicy.DROP_OLDEST, OverflowPolicy.CONFLATE)
"""Overflow policies a WebSocket client may choose (never ``back_pressure``: SPEC section 5)."""


@dataclass(frozen=True)
class ApiOptions:
    """Everything the API server needs besides where it listens."""

    token: str | None = None
    """Bearer token required by every route but ``/api/health``; None: no auth.

    An empty string locks the API (every route but health answers 401): what
    ``token_env`` yields when its variable is not set, so a misconfigured
    deployment fails closed rather than open.
    """
    token_env: str | None = None
    """Environment variable the token was read from (``[api] token_env``), for messages."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from a browser (``"*"`` for any); empty: no CORS headers."""
    ws_queue_size: int = 10_000
    """Records each WebSocket subscription may hold before its policy sheds."""
    ws_overflow_grace_s: float = 10.0
    """A client whose queue overflows continuously this long is disconnected."""
    max_ws_subscriptions: int = 64
    """Subscriptions one WebSocket connection may hold."""
    max_ws_message_bytes: int = 65_536
    """Largest message a WebSocket client may send."""
    max_connections: int = 1024
    """HTTP and WebSocket connections served at once.

    At the limit a new connection closes the longest-idle connection (an HTTP
    one waiting for a request head, a WebSocket without subscriptions waiting
    for a message) to take its place; when none is idle it is answered 503
    at once. The accept loop never stops.
    """
    allowed_hosts: tuple[str, ...] = ()
    """``Host`` names a tokenless API answers besides the loopback ones (``"*"``: any)."""
    request_timeout_s: float = 10.0
    """A connection must deliver a whole request head within this many seconds."""
    keepalive_s: float = 60.0
    """An idle keep-alive connection is closed after this many seconds without a new request."""
    write_timeout_s: float = 30.0
    """A client that takes no bytes of an answer (or a WebSocket push) for this long is cut off."""
    max_inflight_bytes: int = 128 << 20
    """Bytes of answers (REST records, WebSocket queries and replays) all connections may hold at once."""
    max_inflight_bytes_per_connection: int = 32 << 20
    """The share of ``max_inflight_bytes`` one connection may hold (one answer is always admitted alone)."""
    inflight_wait_s: float = 1.0
    """How long a request waits for room under ``max_inflight_bytes`` before it gets 503."""

    @classmethod
    def parse(cls, table: Mapping[str, Any], *, environ: Mapping[str, str] | None = None) -> ApiOptions:
        """Read ``table`` (the ``[api]`` keys other than bind/port); raise ConfigError naming a bad key."""
        opts = Options(table)
        token = opts.str("token", None)
        token_env = opts.str("token_env", None)
        if token is not None and token_env is not None:
            raise ConfigError("token_env", "give token or token_env, not both")
        origins = opts.str_list("cors_origins", [])
        options = cls(
            token=token,
            cors_origins=tuple(origins),
            ws_queue_size=opts.int("ws_queue_size", cls.ws_queue_size, min=1, max=10_000_000),
            ws_overflow_grace_s=opts.float("ws_overflow_grace_s", cls.ws_overflow_grace_s, min=0.0),
            max_ws_subscriptions=opts.int("max_ws_subscriptions", cls.max_ws_subscriptions, min=1),
            max_ws_message_bytes=opts.int("max_ws_message_bytes", cls.max_ws_message_bytes, min=1024),
            max_connections=opts.int("max_connections", cls.max_connections, min=1),
            allowed_hosts=tuple(h.strip().lower() for h in opts.str_list("allowed_hosts", [])),
            request_timeout_s=opts.float("request_timeout_s", cls.request_timeout_s, min=0.01),
            keepalive_s=opts.float("keepalive_s", cls.keepalive_s, min=0.01),
            write_timeout_s=opts.float("write_timeout_s", cls.write_timeout_s, min=0.01),
            max_inflight_bytes=opts.int("max_inflight_bytes", cls.max_inflight_bytes, min=65_536),
            max_inflight_bytes_per_connection=opts.int(
                "max_inflight_bytes_per_connection", cls.max_inflight_bytes_per_connection, min=65_536
            ),
            inflight_wait_s=opts.float("inflight_wait_s", cls.inflight_wait_s, min=0.0),
        )
        opts.done()
        if "*" in origins and len(origins) > 1:
            raise ConfigError("cors_origins", "'*' allows every origin; list it alone")
        if "*" in options.allowed_hosts and len(options.allowed_hosts) > 1:
            raise ConfigError("allowed_hosts", "'*' allows every host; list it alone")
        if "" in options.allowed_hosts:
            raise ConfigError("allowed_hosts", "a host name must not be empty")
        env = os.environ if environ is None else environ
        if token_env is not None:
            options = replace(options, token=env.get(token_env, ""), token_env=token_env)
        env_token = env.get(TOKEN_ENV)
        if env_token:
            options = replace(options, token=env_token, token_env=TOKEN_ENV)
        return options
