"""The container files, checked without a Docker engine (none runs in CI).

What can be checked here: the Dockerfiles and docker-compose.yml parse; every
file they COPY or mount exists; the commands they run are real console
scripts whose arguments those scripts accept; the ports and names they use
are the ones the configurations and the Grafana provisioning use.
"""

from __future__ import annotations

import glob
import json
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gauss.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ["Dockerfile.alpine", "Dockerfile.grafana"]
SPEC_PORTS = {9100, 9200, 9300}


def instructions(name: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile: continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{name}: ends inside a continued line"
    return out


def stages(name: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for word, rest in instructions(name):
        if word == "FROM":
            found.append([])
        assert found, f"{name}: {word} before the first FROM"
        found[-1].append((word, rest))
    return found


def copy_sources(rest: str) -> list[str] | None:
    """The build-context sources of a COPY (None when it copies from another stage)."""
    words = shlex.split(rest)
    if any(w.startswith("--from=") for w in words):
        return None
    words = [w for w in words if not w.startswith("--")]
    if words[0].startswith("["):
        words = json.loads(rest[rest.index("[") :])
    return words[:-1]


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def console_scripts() -> dict[str, str]:
    """The console scripts setup.py declares (read from its PLUGINS table)."""
    namespace: dict[str, Any] = {}
    source = (ROOT / "setup.py").read_text()
    start = source.index("PLUGINS = {")
    end = source.index("\n}\n", start) + 3
    exec(source[start:end], namespace)  # noqa: S102 - a literal dict from our own setup.py
    return dict(line.replace(" ", "").split("=", 1) for line in namespace["PLUGINS"]["console_scripts"])


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_only_files_that_exist(name: str) -> None:
    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    copies = 0
    for word, rest in instructions(name):
        if word in ("COPY", "ADD"):
            sources = copy_sources(rest)
            if sources is None:
                continue
            for source in sources:
                source = source.replace("${PLUGIN_DIR}", "")
                assert glob.glob(str(ROOT / source)), f"{name}: COPY {source}: no such file in the repository"
                assert source.rstrip("/") not in ignored, f"{name}: COPY {source} is excluded by .dockerignore"
                copies += 1
    assert copies >= 2


def test_server_image_is_multi_stage_alpine_with_the_real_entrypoint() -> None:
    build, runtime = stages("Dockerfile.alpine")
    assert "alpine" in build[0][1] and " AS build" in build[0][1]
    assert "alpine" in runtime[0][1]
    build_runs = " ".join(rest for word, rest in build if word == "RUN")
    assert "pip install" in build_runs and "Cython" in build_runs
    assert "gauss.CORE == 'cython'" in build_runs, "the build must fail if the kernels did not compile"
    runtime_copies = [rest for word, rest in runtime if word == "COPY"]
    assert any(rest.startswith("--from=build /opt/gauss") for rest in runtime_copies)
    local = [copy_sources(rest) for rest in runtime_copies]
    assert sorted(s for sources in local if sources for s in sources) == ["config.container.toml", "schemas"]
    assert ("COPY", "config.container.toml ./config.toml") in runtime
    entrypoint = json.loads(dict(runtime)["ENTRYPOINT"])
    assert entrypoint == ["gauss-serve", "--config", "config.toml"]
    assert console_scripts()["gauss-serve"] == "gauss.cli.serve:main"
    from gauss.cli.serve import _parser

    assert _parser().parse_args(entrypoint[1:]).config == "config.toml"
    exposed = {int(p) for word, rest in runtime if word == "EXPOSE" for p in rest.split()}
    assert exposed == SPEC_PORTS


def test_container_config_binds_everything_to_all_interfaces_and_takes_the_token_from_the_environment() -> None:
    config = load_config(ROOT / "config.container.toml")
    assert config.api is not None and config.api.bind == "0.0.0.0" and config.api.port == 9200
    assert config.api.token_env == "GAUSS_API_TOKEN"
    listeners = [s.transport for s in config.sources] + [s.plugin.config.transport for s in config.sinks]  # type: ignore[union-attr, attr-defined]
    assert all(t.config.bind == "0.0.0.0" for t in listeners if t.type == "tcp-server")
    ports = {config.api.port} | {t.config.port for t in listeners}
    assert ports == SPEC_PORTS
    # Every storage table is a valid plugin configuration (built, not opened).
    for spec in config.topics:
        names = spec.create or (spec.name,)
        for name in names:
            spec.build_storage(name)


def test_container_api_token_comes_from_gauss_api_token_and_fails_closed_without_it() -> None:
    from gauss.http.options import TOKEN_ENV, ApiOptions

    config = load_config(ROOT / "config.container.toml")  # the loader checks [api] with the API's own parser
    assert isinstance(config.api, ApiOptions)
    with_token = config.api.with_environ({TOKEN_ENV: "s3cret"})
    assert with_token.token == "s3cret" and with_token.token_env == TOKEN_ENV
    without = config.api.with_environ({})
    assert without.token == "", "no GAUSS_API_TOKEN must lock the API (empty token), not open it"


def test_clickhouse_example_config_stores_one_minute_candles_and_up_in_clickhouse() -> None:
    config = load_config(ROOT / "config.clickhouse.toml")
    storage_of: dict[str, str] = {}
    for spec in config.topics:
        for name in spec.create or (spec.name,):
            storage_of[name] = spec.storage_type
            spec.build_storage(name)
    for timeframe in ("1m", "5m", "15m", "1h", "4h", "1d"):
        assert storage_of[f"ohlc.{timeframe}"] == "clickhouse"
    assert storage_of["ohlc.1s"] == storage_of["ohlc.5s"] == "file"
    assert storage_of["quotes.raw"] == "memory"


def test_compose_services_commands_and_ports() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"gauss-server", "quotes-gen", "clickhouse", "grafana"}
    server = services["gauss-server"]
    assert server["build"]["dockerfile"] == "Dockerfile.alpine"
    published = {int(p.split(":")[1]) for p in server["ports"]}
    assert published == SPEC_PORTS

    gen = services["quotes-gen"]
    command = gen["entrypoint"]
    assert command[:2] == ["gauss-quotes-gen", "auto"]
    assert "gauss-quotes-gen" in console_scripts()
    from gauss.cli.quotes_gen import build_parser

    args = build_parser().parse_args(command[1:])
    assert args.mode == "auto" and args.target == ("gauss-server", 9100)

    config = load_config(ROOT / "config.container.toml")
    clickhouse_urls = {
        spec.storage.config.url for spec in config.topics if spec.storage_type == "clickhouse"  # type: ignore[attr-defined]
    }
    assert clickhouse_urls == {"http://clickhouse:8123"}
    assert "clickhouse" in services
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: mounts missing {source}"
            else:
                assert source in doc.get("volumes", {}), f"{name}: undeclared volume {source}"


def test_grafana_service_loads_the_unsigned_plugin_and_reaches_gauss() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    assert grafana["build"]["dockerfile"] == "Dockerfile.grafana"
    plugin = json.loads((ROOT / "grafana" / "plugin.json").read_text())
    assert grafana["environment"]["GF_PLUGINS_ALLOW_LOADING_UNSIGNED_PLUGINS"] == plugin["id"]

    steps = instructions("Dockerfile.grafana")
    assert steps[0][0] == "FROM" and steps[0][1].startswith("grafana/grafana")
    text = " ".join(rest for _, rest in steps)
    assert '".[grafana]"' in text, "the image must install gauss[grafana]"
    assert "/etc/grafana/provisioning/datasources/" in text
    for arch in ("amd64", "arm64"):
        assert (ROOT / "grafana" / f"{plugin['executable']}_linux_{arch}").is_file()

    provisioning = yaml.safe_load((ROOT / "grafana/provisioning/datasources/gauss.yaml").read_text())
    (datasource,) = provisioning["datasources"]
    assert datasource["type"] == plugin["id"]
    url = urlsplit(datasource["url"])
    server = services["gauss-server"]
    names = {"gauss-server", *server.get("networks", {}).get("default", {}).get("aliases", [])}
    assert url.hostname in names, f"the datasource URL {datasource['url']} names no host of the compose network"
    assert url.port == load_config(ROOT / "config.container.toml").api.port
    assert "GAUSS_API_TOKEN" in grafana["environment"]


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data"} <= ignored

