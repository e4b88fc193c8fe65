"""The HTTP API of Gauss: REST (SPEC section 4) and WebSocket (section 5) on one port.

:class:`ApiServer` runs a Falcon WSGI app under gevent's WSGI server, with
``/ws`` upgraded by gevent-websocket before Falcon sees the request.
"""

from __future__ import annotations

from gauss.http.options import TOKEN_ENV, ApiOptions
from gauss.http.server import ApiServer

__all__ = ["ApiServer", "ApiOptions", "TOKEN_ENV"]
