"""Listening sockets: the one place a TCP port is bound (the tcp-server transport, the API).

An address the OS refuses because of the configuration (in use, not an
address of this machine, a port below 1024 without the privilege) is a
:class:`~gauss.errors.ConfigError` naming the key that chose it, so
``gauss-serve`` exits 2 with it (SPEC section 3) instead of a bare OSError.
"""

from __future__ import annotations

import errno
import socket as _stdsocket

import gevent.socket

from gauss.errors import ConfigError

__all__ = ["listen"]

_REFUSED = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def listen(bind: str, port: int, backlog: int, *, key: str) -> gevent.socket.socket:
    """A (gevent) socket bound to ``bind``:``port`` and listening; nothing is left open when it fails."""
    family = _stdsocket.AF_INET6 if ":" in bind else _stdsocket.AF_INET
    listener = gevent.socket.socket(family, _stdsocket.SOCK_STREAM)
    try:
        listener.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEADDR, 1)
        listener.bind((bind, port))
        listener.listen(backlog)
    except OSError as exc:
        listener.close()
        if exc.errno in _REFUSED:
            raise ConfigError(key, f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from None
        raise
    return listener
