"""The ``[api]`` table of the HTTP/WebSocket API: one frozen struct, checked when the configuration is read.

A typo is a configuration error naming the key, not a silent default. The
token may come from the environment (``token_env``, ``GAUSS_API_TOKEN``):
:meth:`ApiOptions.with_environ` reads it when the API starts.
"""

from __future__ import annotations

import copy
import os
from typing import Annotated, Any, Mapping

import msgspec

from gauss.errors import ConfigError
from gauss.records import OverflowPolicy
from gauss.registry import PluginConfig, check_bind, convert

__all__ = ["ApiOptions", "TOKEN_ENV", "WS_POLICIES"]

TOKEN_ENV = "GAUSS_API_TOKEN"
"""Environment variable that sets (and overrides) ``[api] token``."""

WS_POLICIES = (OverflowPolicy.DROP, OverflowPolicy.DROP_OLDEST, OverflowPolicy.CONFLATE, OverflowPolicy.BACK_PRESSURE)
"""Overflow policies a WebSocket client may choose (SPEC section 5).

A client never makes the publisher wait (a slow client never slows ingest):
its ``back_pressure`` subscription gets every record with no gap, or, once
its queue overflows, ends with an error naming the seq to resume from.
"""

_Timeout = Annotated[float, msgspec.Meta(ge=0.01)]


class ApiOptions(PluginConfig, frozen=True):
    """``[api]``: where the API listens and how it treats its clients."""

    bind: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9200
    token: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    """Bearer token required by every route but ``/api/health``; None: no auth.

    An empty string locks the API (every route but health answers 401): what
    ``token_env`` yields when its variable is not set, so a misconfigured
    deployment fails closed rather than open.
    """
    token_env: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    """Environment variable the token was read from (``[api] token_env``), for messages."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from a browser (``"*"`` for any); empty: no CORS headers."""
    ws_queue_size: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 10_000
    """Records each WebSocket subscription may hold before its policy sheds."""
    ws_send_buffer: Annotated[int, msgspec.Meta(ge=0, le=1 << 30)] = 131_072
    """``SO_SNDBUF`` of each WebSocket connection, bytes (Linux doubles it); 0: the kernel's autotuning.

    What a client that stops reading costs is the bytes its socket takes
    before it blocks: autotuned, ~2-4 MB each on loopback (200 stalled clients
    halved ingest); capped here, ~0.3 MB. A fast client far away is bounded by
    ``2 * ws_send_buffer / RTT`` (~5 MB/s at 50 ms): raise it for those.
    """
    ws_overflow_grace_s: Annotated[float, msgspec.Meta(ge=0.0)] = 10.0
    """A client whose queue overflows continuously this long is disconnected."""
    max_ws_subscriptions: Annotated[int, msgspec.Meta(ge=1)] = 64
    """Subscriptions one WebSocket connection may hold."""
    max_ws_message_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 65_536
    """Largest message a WebSocket client may send."""
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 1024
    """HTTP and WebSocket connections served at once.

    At the limit a new connection closes the longest-idle connection (an HTTP
    one waiting for a request head, a WebSocket without subscriptions waiting
    for a message) to take its place; when none is idle it is answered 503
    at once. The accept loop never stops.
    """
    allowed_hosts: tuple[str, ...] = ()
    """``Host`` names a tokenless API answers besides the loopback ones (``"*"``: any)."""
    request_timeout_s: _Timeout = 10.0
    """A connection must deliver a whole request head within this many seconds."""
    keepalive_s: _Timeout = 60.0
    """An idle keep-alive connection is closed after this many seconds without a new request."""
    write_timeout_s: _Timeout = 30.0
    """A client that takes no bytes of an answer (or a WebSocket push) for this long is cut off."""
    max_inflight_bytes: Annotated[int, msgspec.Meta(ge=65_536)] = 128 << 20
    """Bytes of answers (REST records, WebSocket queries and replays) all connections may hold at once."""
    max_inflight_bytes_per_connection: Annotated[int, msgspec.Meta(ge=65_536)] = 32 << 20
    """The share of ``max_inflight_bytes`` one connection may hold (one answer is always admitted alone)."""
    inflight_wait_s: Annotated[float, msgspec.Meta(ge=0.0)] = 1.0
    """How long a request waits for room under ``max_inflight_bytes`` before it gets 503."""

    def listen_address(self) -> tuple[str, int]:
        return (self.bind, self.port)

    def __post_init__(self) -> None:
        check_bind("bind", self.bind)
        if self.token is not None and self.token_env is not None:
            raise ConfigError("token_env", "give token or token_env, not both")
        if "*" in self.cors_origins and len(self.cors_origins) > 1:
            raise ConfigError("cors_origins", "'*' allows every origin; list it alone")
        hosts = tuple(h.strip().lower() for h in self.allowed_hosts)
        if "*" in hosts and len(hosts) > 1:
            raise ConfigError("allowed_hosts", "'*' allows every host; list it alone")
        if "" in hosts:
            raise ConfigError("allowed_hosts", "a host name must not be empty")
        msgspec.structs.force_setattr(self, "allowed_hosts", hosts)

    @classmethod
    def parse(cls, table: Mapping[str, Any], *, environ: Mapping[str, str] | None = None) -> ApiOptions:
        """``table`` (an ``[api]`` table) checked, with the token read from ``environ``; raises ConfigError naming a bad key."""
        return convert(table, cls).with_environ(environ)

    def with_environ(self, environ: Mapping[str, str] | None = None) -> ApiOptions:
        """These options with the token ``token_env`` or ``GAUSS_API_TOKEN`` names in ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        token = env.get(TOKEN_ENV) or (env.get(self.token_env, "") if self.token_env is not None else self.token)
        if token == self.token:
            return self
        options = copy.copy(self)  # not replace(): the token is now set beside token_env, which a table may not do
        msgspec.structs.force_setattr(options, "token", token)
        if env.get(TOKEN_ENV):
            msgspec.structs.force_setattr(options, "token_env", TOKEN_ENV)
        return options
