"""The plugin process Grafana starts: go-plugin handshake, gRPC server, clean shutdown.

Grafana execs the plugin with the magic cookie ``grafana_plugin_type=datasource``
in the environment, reads the first stdout line
``1|2|tcp|127.0.0.1:<port>|grpc`` and talks gRPC to that port: health service
"plugin", then the ``pluginv2`` services. ``plugin.GRPCController/Shutdown``,
SIGTERM or SIGINT stop the server within two seconds (Grafana kills after 2 s).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gauss.grafana import logs
from gauss.grafana.pluginv2 import backend_pb2_grpc as pb_grpc
from gauss.grafana.pluginv2 import grpc_controller_pb2 as controller_pb
from gauss.grafana.pluginv2 import grpc_controller_pb2_grpc as controller_grpc
from gauss.grafana.service import DataService, DiagnosticsService, PluginMetrics, ResourceService, StreamService

__all__ = ["MAGIC_COOKIE_KEY", "MAGIC_COOKIE_VALUE", "PROTOCOL_VERSION", "PluginServer", "main"]

log = logging.getLogger("gauss.grafana")

MAGIC_COOKIE_KEY = "grafana_plugin_type"
MAGIC_COOKIE_VALUE = "datasource"
CORE_PROTOCOL_VERSION = 1
PROTOCOL_VERSION = 2
# Each live channel holds one worker thread for its lifetime (RunStream is a blocking generator).
DEFAULT_WORKERS = 64
SHUTDOWN_GRACE_SECONDS = 1.0

_NOT_A_PLUGIN = (
    "This binary is a plugin. These are not meant to be executed directly.\n"
    "Please execute the program that consumes these plugins, which will\n"
    "load any plugins automatically\n"
)


class ControllerService(controller_grpc.GRPCControllerServicer):
    """go-plugin's ``plugin.GRPCController``: Shutdown asks the process to stop."""

    def __init__(self, stopping: threading.Event) -> None:
        self.stopping = stopping

    def Shutdown(self, request: controller_pb.Empty, context: grpc.ServicerContext) -> controller_pb.Empty:
        log.info("shutdown requested by Grafana")
        self.stopping.set()
        return controller_pb.Empty()


class PluginServer:
    """The gRPC server with every service registered, bound to 127.0.0.1."""

    def __init__(self, *, workers: int = DEFAULT_WORKERS) -> None:
        self.stopping = threading.Event()
        self.metrics = PluginMetrics()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gauss-grafana"),
            # NOTE: gRPC sets SO_REUSEPORT by default; two plugins on one port would split traffic.
            options=[("grpc.so_reuseport", 0), ("grpc.max_send_message_length", 256 * 1024 * 1024)],
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        pb_grpc.add_DiagnosticsServicer_to_server(DiagnosticsService(self.metrics), self.server)
        pb_grpc.add_DataServicer_to_server(DataService(self.metrics), self.server)
        pb_grpc.add_StreamServicer_to_server(StreamService(self.metrics, self.stopping), self.server)
        pb_grpc.add_ResourceServicer_to_server(ResourceService(), self.server)
        controller_grpc.add_GRPCControllerServicer_to_server(ControllerService(self.stopping), self.server)
        self.port = 0

    def bind(self, min_port: int = 0, max_port: int = 0) -> int:
        """Bind 127.0.0.1 on a port in ``[min_port, max_port]`` (any free port when unset); return it."""
        candidates = range(min_port, max_port + 1) if 0 < min_port <= max_port else [0]
        for candidate in candidates:
            if candidate and not _port_free(candidate):
                continue  # probing first keeps gRPC's own "address in use" errors out of the log
            try:
                port = self.server.add_insecure_port(f"127.0.0.1:{candidate}")
            except RuntimeError:
                continue
            if port:
                self.port = port
                return port
        raise OSError(f"no free port on 127.0.0.1 in {min_port}..{max_port}")

    def start(self) -> None:
        self.server.start()
        for service in ("plugin", ""):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def handshake_line(self) -> str:
        return f"{CORE_PROTOCOL_VERSION}|{PROTOCOL_VERSION}|tcp|127.0.0.1:{self.port}|grpc"

    def wait(self) -> None:
        """Block until Shutdown, SIGTERM or SIGINT."""
        while not self.stopping.wait(0.5):
            pass

    def stop(self) -> None:
        """Refuse new calls, let running ones end (live streams are told to stop), wait briefly."""
        self.stopping.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(SHUTDOWN_GRACE_SECONDS).wait(SHUTDOWN_GRACE_SECONDS + 0.5)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _env_int(name: str) -> int:
    try:
        return int(os.environ.get(name, "0") or 0)
    except ValueError:
        return 0


def main(argv: list[str] | None = None) -> int:
    """Run the plugin until Grafana stops it; exit 1 without the magic cookie or protocol 2."""
    if os.environ.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE_VALUE:
        sys.stderr.write(_NOT_A_PLUGIN)
        return 1
    offered = os.environ.get("PLUGIN_PROTOCOL_VERSIONS", str(PROTOCOL_VERSION))
    if str(PROTOCOL_VERSION) not in {v.strip() for v in offered.split(",")}:
        sys.stderr.write(f"gauss-grafana-datasource speaks plugin protocol {PROTOCOL_VERSION}; Grafana offers {offered}\n")
        return 1
    level = logging.DEBUG if os.environ.get("GAUSS_GRAFANA_DEBUG") else logging.INFO
    logs.configure(level)
    workers = _env_int("GAUSS_GRAFANA_WORKERS") or DEFAULT_WORKERS
    plugin = PluginServer(workers=workers)
    try:
        plugin.bind(_env_int("PLUGIN_MIN_PORT"), _env_int("PLUGIN_MAX_PORT"))
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    plugin.start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: plugin.stopping.set())
    # The handshake must be the first stdout line, flushed at once; nothing else goes to stdout.
    sys.stdout.write(plugin.handshake_line() + "\n")
    sys.stdout.flush()
    log.info("gauss datasource plugin listening on 127.0.0.1:%d", plugin.port)
    plugin.wait()
    plugin.stop()
    log.info("gauss datasource plugin stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
