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
    """HTTP and WebSocket connections served at once."""

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
        )
        opts.done()
        if "*" in origins and len(origins) > 1:
            raise ConfigError("cors_origins", "'*' allows every origin; list it alone")
        env = os.environ if environ is None else environ
        if token_env is not None:
            options = replace(options, token=env.get(token_env, ""), token_env=token_env)
        env_token = env.get(TOKEN_ENV)
        if env_token:
            options = replace(options, token=env_token, token_env=TOKEN_ENV)
        return options
