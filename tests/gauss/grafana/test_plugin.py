"""The plugin process under Grafana's harness: handshake, health, shutdown, per-query errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from gauss.grafana.harness import PluginProcess, plugin_context, plugin_env, start_plugin
from gauss.grafana.pluginv2 import backend_pb2 as pb
from gauss.grafana.pluginv2 import grpc_controller_pb2 as controller_pb

context_for = plugin_context


def test_without_magic_cookie_exits_1_without_handshake(gpx: Path, grafana_env: dict[str, str]) -> None:
    del grafana_env["grafana_plugin_type"]
    result = subprocess.run([str(gpx)], env=grafana_env, capture_output=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"This binary is a plugin" in result.stderr


def test_refuses_when_protocol_2_is_not_offered(gpx: Path, grafana_env: dict[str, str]) -> None:
    grafana_env["PLUGIN_PROTOCOL_VERSIONS"] = "1"
    result = subprocess.run([str(gpx)], env=grafana_env, capture_output=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == b""


def test_handshake_line_and_health_service_plugin_serving(plugin: PluginProcess) -> None:
    host, port = plugin.address.split(":")
    assert host == "127.0.0.1" and 10000 <= int(port) <= 25000
    answer = plugin.health.Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_stderr_lines_are_hclog_json(plugin: PluginProcess) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any('"@message"' in line for line in plugin.stderr_lines):
        time.sleep(0.05)
    entries = [json.loads(line) for line in plugin.stderr_lines if line.startswith("{")]
    assert entries, plugin.stderr_lines
    for entry in entries:
        assert entry["@level"] in ("trace", "debug", "info", "warn", "error")
        assert isinstance(entry["@message"], str)
        assert entry["@timestamp"].endswith("Z") and len(entry["@timestamp"]) == len("2006-01-02T15:04:05.000000Z")


def test_check_health_reports_error_with_message_when_gauss_is_down(plugin: PluginProcess, closed_url: str) -> None:
    answer = plugin.diagnostics.CheckHealth(pb.CheckHealthRequest(pluginContext=context_for(closed_url)), timeout=30)
    assert answer.status == pb.CheckHealthResponse.ERROR
    assert "cannot reach Gauss" in answer.message and closed_url in answer.message


def test_check_health_reports_error_for_empty_url(plugin: PluginProcess) -> None:
    answer = plugin.diagnostics.CheckHealth(pb.CheckHealthRequest(pluginContext=context_for("")), timeout=30)
    assert answer.status == pb.CheckHealthResponse.ERROR
    assert "URL is empty" in answer.message


def test_grpc_controller_shutdown_exits_within_2_seconds(plugin: PluginProcess) -> None:
    started = time.monotonic()
    plugin.controller.Shutdown(controller_pb.Empty(), timeout=5)
    assert plugin.process.wait(5) == 0
    assert time.monotonic() - started < 2.0


def test_sigterm_exits_within_2_seconds(plugin: PluginProcess) -> None:
    started = time.monotonic()
    plugin.process.send_signal(signal.SIGTERM)
    assert plugin.process.wait(5) == 0
    assert time.monotonic() - started < 2.0


def query(ref_id: str, model: dict | bytes, *, from_ms: int = 0, to_ms: int = 3_600_000, max_points: int = 1000) -> pb.DataQuery:
    raw = model if isinstance(model, bytes) else json.dumps(model).encode()
    return pb.DataQuery(
        refId=ref_id, maxDataPoints=max_points, intervalMS=1000,
        timeRange=pb.TimeRange(fromEpochMS=from_ms, toEpochMS=to_ms), json=raw,
    )


def test_bad_queries_are_per_query_400_errors_not_grpc_failures(plugin: PluginProcess, closed_url: str) -> None:
    request = pb.QueryDataRequest(
        pluginContext=context_for(closed_url),
        queries=[
            query("A", b"{not json"),
            query("B", {"kind": "trades", "symbols": ["EURUSD"]}),
            query("C", {"kind": "candles", "timeframe": "7m", "symbols": ["EURUSD"]}),
            query("D", {"kind": "candles", "symbols": []}),
            query("E", {"kind": "quotes", "topic": "../etc", "symbols": "EURUSD"}),
            query("F", {"kind": "candles", "symbols": "EURUSD"}, from_ms=10, to_ms=5),
        ],
    )
    answer = plugin.data.QueryData(request, timeout=30)
    assert set(answer.responses) == set("ABCDEF")
    expected = {"A": "query JSON", "B": "kind", "C": "timeframe", "D": "symbols", "E": "topic", "F": "timeRange"}
    for ref_id, word in expected.items():
        response = answer.responses[ref_id]
        assert response.status == 400, ref_id
        assert word in response.error, (ref_id, response.error)
        assert not response.frames


def test_gauss_down_is_a_downstream_error_per_query(plugin: PluginProcess, closed_url: str) -> None:
    request = pb.QueryDataRequest(
        pluginContext=context_for(closed_url),
        queries=[query("A", {"kind": "candles", "timeframe": "1m", "symbols": "EURUSD"}),
                 query("B", {"kind": "quotes", "symbols": ["EURUSD"]})],
    )
    answer = plugin.data.QueryData(request, timeout=30)
    for ref_id in "AB":
        response = answer.responses[ref_id]
        assert response.errorSource == "downstream"
        assert response.status == 502
        assert "cannot reach Gauss" in response.error


def test_subscribe_stream_accepts_our_paths_only(plugin: PluginProcess, closed_url: str) -> None:
    ctx = context_for(closed_url)
    ok, not_found = pb.SubscribeStreamResponse.OK, pb.SubscribeStreamResponse.NOT_FOUND
    for path, status in [
        ("candles/1m/EURUSD", ok),
        ("quotes/EURUSD", ok),
        ("quotes/BTC=2FUSD/quotes.csv", ok),
        ("candles/7m/EURUSD", not_found),
        ("candles/1m", not_found),
        ("trades/EURUSD", not_found),
        ("quotes/BTC%2FUSD", not_found),
    ]:
        answer = plugin.stream.SubscribeStream(pb.SubscribeStreamRequest(pluginContext=ctx, path=path), timeout=10)
        assert answer.status == status, path


def test_publish_stream_is_refused(plugin: PluginProcess, closed_url: str) -> None:
    request = pb.PublishStreamRequest(pluginContext=context_for(closed_url), path="quotes/EURUSD", data=b"{}")
    answer = plugin.stream.PublishStream(request, timeout=10)
    assert answer.status == pb.PublishStreamResponse.PERMISSION_DENIED


def call_resource(plugin: PluginProcess, url: str, path: str, method: str = "GET") -> tuple[int, object]:
    request = pb.CallResourceRequest(pluginContext=context_for(url), path=path, method=method, url=path)
    answers = list(plugin.resource.CallResource(request, timeout=30))
    assert len(answers) == 1
    assert list(answers[0].headers["Content-Type"].values) == ["application/json"]
    return answers[0].code, json.loads(answers[0].body)


def test_call_resource_timeframes_unknown_paths_and_gauss_down(plugin: PluginProcess, closed_url: str) -> None:
    assert call_resource(plugin, closed_url, "timeframes") == (200, ["1s", "5s", "1m", "5m", "15m", "1h", "4h", "1d"])
    code, body = call_resource(plugin, closed_url, "nothing/here")
    assert code == 404 and "unknown resource" in body["error"]  # type: ignore[index]
    code, body = call_resource(plugin, closed_url, "topics", method="POST")
    assert code == 405
    code, body = call_resource(plugin, closed_url, "topics")
    assert code == 502 and "cannot reach Gauss" in body["error"]  # type: ignore[index]


def test_collect_metrics_counts_queries(plugin: PluginProcess, closed_url: str) -> None:
    request = pb.QueryDataRequest(pluginContext=context_for(closed_url), queries=[query("A", {"kind": "trades"})])
    plugin.data.QueryData(request, timeout=30)
    answer = plugin.diagnostics.CollectMetrics(pb.CollectMetricsRequest(pluginContext=context_for(closed_url)), timeout=10)
    text = answer.metrics.prometheus.decode()
    assert 'gauss_grafana_query_errors_total{source="downstream"} 1.0' in text
    assert "gauss_grafana_streams_active 0.0" in text


def test_run_stream_with_gauss_down_ends_when_cancelled(plugin: PluginProcess, closed_url: str) -> None:
    request = pb.RunStreamRequest(pluginContext=context_for(closed_url), path="quotes/EURUSD")
    call = plugin.stream.RunStream(request)
    time.sleep(0.5)
    call.cancel()
    with pytest.raises(grpc.RpcError) as caught:
        next(call)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        metrics = plugin.diagnostics.CollectMetrics(pb.CollectMetricsRequest(), timeout=10)
        text = metrics.metrics.prometheus.decode()
        if "gauss_grafana_streams_active 0.0" in text:
            break
        time.sleep(0.1)
    assert "gauss_grafana_streams_active 0.0" in text


def test_shutdown_within_2_seconds_while_a_stream_runs(plugin: PluginProcess, closed_url: str) -> None:
    call = plugin.stream.RunStream(pb.RunStreamRequest(pluginContext=context_for(closed_url), path="candles/1m/EURUSD"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("stream candles/1m/EURUSD started" in line for line in plugin.stderr_lines):
        time.sleep(0.05)
    time.sleep(1.0)  # let it reach its reconnect back-off
    started = time.monotonic()
    plugin.controller.Shutdown(controller_pb.Empty(), timeout=5)
    assert plugin.process.wait(5) == 0
    assert time.monotonic() - started < 2.0
    assert list(call) == []  # the stream ended with the process (no packet: Gauss was down)


def test_console_script_is_the_same_plugin(grafana_env: dict[str, str]) -> None:
    script = Path(sys.executable).with_name("gauss-grafana-datasource")
    assert script.is_file()
    del grafana_env["grafana_plugin_type"]
    result = subprocess.run([str(script)], env=grafana_env, capture_output=True, timeout=60)
    assert result.returncode == 1 and result.stdout == b"" and b"This binary is a plugin" in result.stderr
    plugin = start_plugin([str(script)], plugin_env())
    try:
        assert plugin.health.Check(health_pb2.HealthCheckRequest(service="plugin"), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert plugin.kill() < 2.0
