"""The plugin directory against GRAFANA.md's rules, and the committed gRPC stubs against their .proto."""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
PLUGIN_DIR = REPO / "grafana"
PROTO_DIR = REPO / "gauss" / "grafana" / "pluginv2"


@pytest.fixture(scope="module")
def plugin_json() -> dict:
    return json.loads((PLUGIN_DIR / "plugin.json").read_text())


def test_plugin_json_required_fields(plugin_json: dict) -> None:
    assert re.fullmatch(r"[0-9a-z]+-([0-9a-z]+-)?datasource", plugin_json["id"])
    assert plugin_json["id"] == "gauss-market-datasource"
    assert plugin_json["type"] == "datasource"
    assert isinstance(plugin_json["name"], str) and plugin_json["name"]
    info = plugin_json["info"]
    assert set(info["logos"]) >= {"small", "large"}
    for logo in info["logos"].values():
        assert (PLUGIN_DIR / logo).is_file(), logo
    assert re.fullmatch(r"\d+\.\d+\.\d+", info["version"])
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", info["updated"])
    assert isinstance(info["keywords"], list) and len(info["keywords"]) >= 1
    assert re.fullmatch(r">=\s*\d+\.\d+\.\d+", plugin_json["dependencies"]["grafanaDependency"])
    assert plugin_json["dependencies"]["grafanaDependency"] == ">=10.0.0"


def test_plugin_json_backend_streaming_alerting_metrics(plugin_json: dict) -> None:
    for flag in ("backend", "streaming", "alerting", "metrics"):
        assert plugin_json[flag] is True, flag
    assert plugin_json["executable"] == "gpx_gauss"


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_executables_exist_for_each_arch_and_exec_python(plugin_json: dict, arch: str) -> None:
    path = PLUGIN_DIR / f"{plugin_json['executable']}_linux_{arch}"
    assert path.is_file() and os.access(path, os.X_OK)
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n") and "exec " in text and "gauss.grafana.plugin" in text
    assert filecmp.cmp(path, PLUGIN_DIR / "gpx_gauss_linux_amd64", shallow=False)


def test_provisioning_names_the_plugin_and_sends_the_token() -> None:
    text = (PLUGIN_DIR / "provisioning" / "datasources" / "gauss.yaml").read_text()
    assert re.search(r"^apiVersion: 1$", text, re.M)
    assert re.search(r"^\s+type: gauss-market-datasource$", text, re.M)
    assert re.search(r"^\s+url: http://\S+:9200$", text, re.M)
    assert re.search(r"^\s+secureJsonData:\n\s+token: ", text, re.M)


def test_module_js_is_amd_and_valid_javascript() -> None:
    text = (PLUGIN_DIR / "module.js").read_text()
    assert re.search(r"define\(\['@grafana/data', '@grafana/runtime', 'react'\]", text)
    assert "new data.DataSourcePlugin(GaussDataSource)" in text
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed: syntax not checked")
    subprocess.run([node, "--check", str(PLUGIN_DIR / "module.js")], check=True, capture_output=True, timeout=60)


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    """The committed stubs describe exactly what the .proto files say.

    Compared as descriptors, not as text: a newer grpcio-tools writes other
    version guards and layout, which must not fail CI until someone regenerates.
    """
    pytest.importorskip("grpc_tools")
    from google.protobuf import descriptor_pb2

    from gauss.grafana.pluginv2 import backend_pb2, backend_pb2_grpc, grpc_controller_pb2, grpc_controller_pb2_grpc

    descriptor_set = tmp_path / "pluginv2.pb"
    command = [sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO), f"--descriptor_set_out={descriptor_set}"]
    command += [f"gauss/grafana/pluginv2/{name}" for name in ("backend.proto", "grpc_controller.proto")]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    from_proto = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    for expected, module, grpc_module in zip(
        from_proto.file, (backend_pb2, grpc_controller_pb2), (backend_pb2_grpc, grpc_controller_pb2_grpc), strict=True
    ):
        committed = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        _drop_json_names(expected.message_type)  # protoc adds them to descriptor sets, not to stubs
        assert committed == expected, f"{module.__name__} is stale; regenerate it (command in backend.proto)"
        for service in expected.service:
            servicer = getattr(grpc_module, f"{service.name}Servicer")
            assert all(hasattr(servicer, method.name) for method in service.method), service.name


def _drop_json_names(messages: Any) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _drop_json_names(message.nested_type)


def test_stub_service_names_match_grafana() -> None:
    from gauss.grafana.pluginv2 import backend_pb2, grpc_controller_pb2

    services = {s.full_name: [m.name for m in s.methods] for s in backend_pb2.DESCRIPTOR.services_by_name.values()}
    assert services == {
        "pluginv2.Resource": ["CallResource"],
        "pluginv2.Data": ["QueryData"],
        "pluginv2.Diagnostics": ["CheckHealth", "CollectMetrics"],
        "pluginv2.Stream": ["SubscribeStream", "RunStream", "PublishStream"],
    }
    assert grpc_controller_pb2.DESCRIPTOR.services_by_name["GRPCController"].full_name == "plugin.GRPCController"
    numbers = {f.name: f.number for f in backend_pb2.DataQuery.DESCRIPTOR.fields}
    assert numbers == {"refId": 1, "maxDataPoints": 2, "intervalMS": 3, "timeRange": 4, "json": 5, "queryType": 6}
    numbers = {f.name: f.number for f in backend_pb2.DataResponse.DESCRIPTOR.fields}
    assert numbers == {"frames": 1, "error": 2, "jsonMeta": 3, "status": 4, "errorSource": 5}
