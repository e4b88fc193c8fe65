"""Log lines in the JSON form Grafana ingests from a plugin's stderr (hclog).

go-plugin reads each stderr line; a JSON object with ``@level``, ``@message``
and ``@timestamp`` becomes a Grafana log entry at that level, any other line
is logged raw. Extra keys become key/value pairs of the entry.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

__all__ = ["HclogFormatter", "configure"]

_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _level_name(levelno: int) -> str:
    if levelno < logging.DEBUG:
        return "trace"
    for threshold in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= threshold:
            return _LEVELS[threshold]
    return "debug"


class HclogFormatter(logging.Formatter):
    """Format a record as one hclog JSON line (``@timestamp`` like Go's ``2006-01-02T15:04:05.000000Z07:00``)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=timezone.utc)
        entry: dict[str, Any] = {
            "@level": _level_name(record.levelno),
            "@message": record.getMessage(),
            "@timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "@module": record.name,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send every log record of the process to ``stream`` (stderr) as hclog JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(HclogFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
