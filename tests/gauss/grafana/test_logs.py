"""hclog JSON lines (what Grafana ingests from a plugin's stderr) and rate-limited logging."""

from __future__ import annotations

import io
import json
import logging
import re
import sys

from gauss.grafana.logs import HclogFormatter, configure
from gauss.ratelimit import RateLimitedLog


def test_record_becomes_one_hclog_json_line() -> None:
    record = logging.LogRecord("gauss.grafana", logging.WARNING, __file__, 1, "stream %s lost", ("q/X",), None)
    record.topic = "quotes.raw"
    line = HclogFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["@level"] == "warn" and entry["@message"] == "stream q/X lost" and entry["@module"] == "gauss.grafana"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", entry["@timestamp"])
    assert entry["topic"] == "quotes.raw"


def test_levels_and_exceptions() -> None:
    formatter = HclogFormatter()
    levels = {logging.DEBUG: "debug", logging.INFO: "info", logging.ERROR: "error", logging.CRITICAL: "error", 5: "trace"}
    for levelno, name in levels.items():
        assert json.loads(formatter.format(logging.LogRecord("x", levelno, "", 1, "m", None, None)))["@level"] == name
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "", 1, "failed", None, sys.exc_info())
    entry = json.loads(formatter.format(record))
    assert "ValueError: boom" in entry["error"]


def test_rate_limited_log_holds_back_repeats_and_counts_them() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure(logging.INFO, stream)
    now = [1000.0]
    try:
        limited = RateLimitedLog(logging.getLogger("gauss.grafana.test"), interval=10, clock=lambda: now[0])
        for _ in range(5):
            limited.log(logging.WARNING, "k", "gauss down")
        limited.log(logging.WARNING, "other", "other key")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [line["@message"] for line in lines] == ["gauss down", "other key"]
        now[0] += 11
        limited.log(logging.WARNING, "k", "gauss down")
        last = json.loads(stream.getvalue().splitlines()[-1])
        assert last["@message"] == "gauss down (4 similar messages held back)"
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
