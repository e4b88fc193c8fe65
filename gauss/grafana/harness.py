"""Grafana's side of the plugin protocol, for tests and for checking a deployment without Grafana.

:func:`start_plugin` execs a plugin executable the way go-plugin's client
does (magic cookie, ``PLUGIN_PROTOCOL_VERSIONS``, port range), reads the
handshake line from stdout within a timeout and connects over gRPC;
:class:`PluginProcess` holds the stubs and stops the plugin as Grafana's
``Kill()`` does (``GRPCController.Shutdown``, 2 s, then SIGKILL).
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2_grpc

from gauss.errors import GaussError
from gauss.grafana.pluginv2 import backend_pb2 as pb
from gauss.grafana.pluginv2 import backend_pb2_grpc as pb_grpc
from gauss.grafana.pluginv2 import grpc_controller_pb2 as controller_pb
from gauss.grafana.pluginv2 import grpc_controller_pb2_grpc as controller_grpc

__all__ = ["HandshakeError", "PluginProcess", "plugin_env", "start_plugin", "plugin_context"]

HANDSHAKE_TIMEOUT = 60.0  # go-plugin's StartTimeout
KILL_GRACE_SECONDS = 2.0  # go-plugin waits this long after Shutdown before killing


class HandshakeError(GaussError, RuntimeError):
    """The plugin did not print a valid handshake line in time."""


def plugin_env(base: Mapping[str, str] | None = None, *, cookie: bool = True) -> dict[str, str]:
    """The environment go-plugin gives a plugin: the magic cookie, protocol versions, port range."""
    env = dict(os.environ if base is None else base)
    env.pop("grafana_plugin_type", None)
    if cookie:
        env["grafana_plugin_type"] = "datasource"
    env["PLUGIN_PROTOCOL_VERSIONS"] = "2"
    env["PLUGIN_MIN_PORT"] = "10000"
    env["PLUGIN_MAX_PORT"] = "25000"
    return env


@dataclass
class PluginProcess:
    """A running plugin as Grafana sees it: the process, its handshake line and gRPC stubs."""

    process: subprocess.Popen[bytes]
    handshake: str
    channel: grpc.Channel
    stderr_lines: list[str] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.handshake.split("|")[3]

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)

    @property
    def diagnostics(self) -> pb_grpc.DiagnosticsStub:
        return pb_grpc.DiagnosticsStub(self.channel)

    @property
    def data(self) -> pb_grpc.DataStub:
        return pb_grpc.DataStub(self.channel)

    @property
    def stream(self) -> pb_grpc.StreamStub:
        return pb_grpc.StreamStub(self.channel)

    @property
    def resource(self) -> pb_grpc.ResourceStub:
        return pb_grpc.ResourceStub(self.channel)

    @property
    def controller(self) -> controller_grpc.GRPCControllerStub:
        return controller_grpc.GRPCControllerStub(self.channel)

    def kill(self) -> float:
        """Stop the plugin as Grafana's Kill() does; return the seconds it took to exit."""
        started = time.monotonic()
        try:
            self.controller.Shutdown(controller_pb.Empty(), timeout=KILL_GRACE_SECONDS)
        except grpc.RpcError:
            pass
        try:
            self.process.wait(KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        elapsed = time.monotonic() - started
        self.close()
        return elapsed

    def close(self) -> None:
        """Release the channel and pipes (killing the process if it still runs)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.channel.close()
        for reader in self.readers:
            reader.join(5)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def start_plugin(
    command: list[str], env: Mapping[str, str] | None = None, *, timeout: float = HANDSHAKE_TIMEOUT
) -> PluginProcess:
    """Exec ``command``, read and check the handshake line, connect over gRPC."""
    process = subprocess.Popen(
        command,
        env=dict(env) if env is not None else plugin_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = process.stdout, process.stderr
    assert stdout is not None and stderr is not None
    first_line: queue.Queue[str] = queue.Queue()
    stderr_lines: list[str] = []

    def read_stdout() -> None:
        first_line.put(stdout.readline().decode(errors="replace"))
        for _ in stdout:  # later stdout lines are only logged by go-plugin; keep the pipe drained
            pass

    def read_stderr() -> None:
        stderr_lines.extend(line.decode(errors="replace") for line in stderr)

    readers = [threading.Thread(target=read_stdout, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for reader in readers:
        reader.start()
    try:
        handshake = first_line.get(timeout=timeout).strip()
    except queue.Empty:
        _abandon(process, readers)
        raise HandshakeError(f"no handshake line within {timeout}s; stderr: {stderr_lines}") from None
    parts = handshake.split("|")
    if len(parts) < 5 or parts[0] != "1" or parts[1] != "2" or parts[2] != "tcp" or parts[4] != "grpc":
        _abandon(process, readers)
        raise HandshakeError(f"bad handshake line {handshake!r}; stderr: {stderr_lines}")
    channel = grpc.insecure_channel(parts[3])
    grpc.channel_ready_future(channel).result(timeout=timeout)
    return PluginProcess(process, handshake, channel, stderr_lines, readers)


def _abandon(process: subprocess.Popen[bytes], readers: list[threading.Thread]) -> None:
    process.kill()
    process.wait(10)
    for reader in readers:
        reader.join(5)
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def plugin_context(url: str, *, uid: str = "gauss", token: str | None = None, json_data: bytes = b"") -> pb.PluginContext:
    """A ``pluginContext`` as Grafana sends it for a datasource instance with this URL and token."""
    secure = {"token": token} if token else {}
    settings = pb.DataSourceInstanceSettings(
        id=1,
        name="Gauss",
        url=url,
        uid=uid,
        jsonData=json_data,
        decryptedSecureJsonData=secure,
        lastUpdatedMS=int(time.time() * 1000),
    )
    return pb.PluginContext(orgId=1, pluginId="gauss-market-datasource", dataSourceInstanceSettings=settings)
