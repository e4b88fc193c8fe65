"""A private ClickHouse server for tests and benchmarks, and the fixtures that start it.

Shared by tests/plugins/storage (the storage itself) and tests/e2e (through
gauss-serve); ``bench/bench_clickhouse.py`` starts :class:`ClickHouseServer` too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Iterator

import pytest

from support.net import free_ports

__all__ = [
    "ClickHouseServer",
    "clickhouse_binary",
    "clickhouse_factory",
    "clickhouse_server",
    "clickhouse_unavailable_reason",
]


CLICKHOUSE_CONFIG_DIR = Path("/etc/clickhouse-server")


def clickhouse_binary() -> str | None:
    """The clickhouse-server executable (Debian puts it in /usr/sbin, often not on PATH)."""
    found = shutil.which("clickhouse-server")
    if found:
        return found
    for candidate in ("/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class ClickHouseServer:
    """A private clickhouse-server: the packaged config rewritten into ``root``.

    Listens on 127.0.0.1 only, on a free HTTP port (the native TCP port too:
    the server needs one), with no interserver port, no clusters, no query
    log and small caches. ``stop()`` and ``start()`` keep the data, so a test
    can take ClickHouse away mid-stream and bring it back on the same port.
    """

    USER = "gauss"
    PASSWORD = "gauss-test-password"

    def __init__(self, root: Path, binary: str) -> None:
        self.root = root
        self.binary = binary
        self.http_port, self.tcp_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_config(self) -> None:
        for sub in ("data", "tmp", "user_files", "format_schemas", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        tree = ET.parse(CLICKHOUSE_CONFIG_DIR / "config.xml")
        root = tree.getroot()

        def put(tag: str, value: object) -> None:
            element = root.find(tag)
            if element is None:
                element = ET.SubElement(root, tag)
            element.text = str(value)

        for tag in (
            "listen_host", "interserver_http_port", "https_port", "tcp_port_secure", "remote_servers",
            "zookeeper", "macros", "distributed_ddl", "graphite_rollup_example", "query_log",
            "query_thread_log", "part_log", "openSSL",
        ):  # fmt: skip
            for element in root.findall(tag):
                root.remove(element)
        ET.SubElement(root, "listen_host").text = "127.0.0.1"
        put("http_port", self.http_port)
        put("tcp_port", self.tcp_port)
        put("path", f"{self.root}/data/")
        put("tmp_path", f"{self.root}/tmp/")
        put("user_files_path", f"{self.root}/user_files/")
        put("format_schema_path", f"{self.root}/format_schemas/")
        put("uncompressed_cache_size", 64 << 20)
        put("mark_cache_size", 64 << 20)
        put("users_config", f"{self.root}/users.xml")
        logger = root.find("logger")
        if logger is None:
            logger = ET.SubElement(root, "logger")
        for tag, name in (("log", "server.log"), ("errorlog", "server.err.log")):
            element = logger.find(tag)
            if element is None:
                element = ET.SubElement(logger, tag)
            element.text = f"{self.root}/log/{name}"
        tree.write(self.root / "config.xml")

        users = ET.parse(CLICKHOUSE_CONFIG_DIR / "users.xml")
        uroot = users.getroot()
        for profile in uroot.iter("max_memory_usage"):
            profile.text = str(1 << 30)
        user_list = uroot.find("users")
        assert user_list is not None
        user = ET.SubElement(user_list, self.USER)
        ET.SubElement(user, "password").text = self.PASSWORD
        networks = ET.SubElement(user, "networks")
        ET.SubElement(networks, "ip").text = "127.0.0.1"
        ET.SubElement(user, "profile").text = "default"
        ET.SubElement(user, "quota").text = "default"
        users.write(self.root / "users.xml")

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.root / "log" / "stdout.log", "ab")
        self.process = subprocess.Popen(
            [self.binary, f"--config-file={self.root / 'config.xml'}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.root / "log" / "stdout.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"clickhouse-server exited with {self.process.returncode}: {tail}")
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"clickhouse-server did not answer /ping on {self.url} within {timeout} s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def query(self, sql: str, body: bytes | None = None) -> str:
        """Run one statement as the default user; the answer as text (raises on an error status)."""
        if body is None:
            request = urllib.request.Request(self.url + "/", data=sql.encode())
        else:
            request = urllib.request.Request(
                self.url + "/?" + urllib.parse.urlencode({"query": sql}), data=body
            )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read().decode()


def clickhouse_unavailable_reason() -> str | None:
    """Why the ClickHouse tests cannot run here, or None. In CI a missing server is a failure."""
    if clickhouse_binary() is not None and (CLICKHOUSE_CONFIG_DIR / "config.xml").exists():
        return None
    reason = "clickhouse-server is not installed (apt-get install clickhouse-server)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI must run the ClickHouse tests", pytrace=False)
    return reason


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """A running private ClickHouse for the whole session (skips only outside CI when absent)."""
    reason = clickhouse_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    binary = clickhouse_binary()
    assert binary is not None
    server = ClickHouseServer(tmp_path_factory.mktemp("clickhouse"), binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clickhouse_factory(tmp_path: Path) -> Iterator[Callable[[], ClickHouseServer]]:
    """Start private servers a test may stop and restart: ``server = clickhouse_factory()``."""
    reason = clickhouse_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    binary = clickhouse_binary()
    assert binary is not None
    servers: list[ClickHouseServer] = []

    def make() -> ClickHouseServer:
        server = ClickHouseServer(tmp_path / f"clickhouse{len(servers)}", binary)
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
