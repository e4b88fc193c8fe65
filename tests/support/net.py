"""Free TCP ports on 127.0.0.1 for servers a test starts."""

from __future__ import annotations

import socket

__all__ = ["free_port", "free_ports"]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all probes stay bound until every port is chosen, so none repeats."""
    probes = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probes.append(probe)
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def free_port() -> int:
    """One free port (it may be taken again before the caller binds it; tests use it at once)."""
    return free_ports(1)[0]
