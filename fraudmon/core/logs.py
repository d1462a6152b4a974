"""Logging setup: human-readable by default, one JSON object per line on request (`--json-logs`)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "INFO", json_logs: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_logs else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(OutageLogFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def json_logging_config(level: str = "INFO") -> dict:
    """The same JSON lines as a `logging.config.dictConfig` mapping, for Faust's worker (which sets up logging
    itself and would otherwise replace ours)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }


OUTAGE_WINDOW_S = 10.0
_CLIENT_LOGGERS = {"aiokafka": "kafka", "kafka": "kafka", "faust.transport": "kafka", "redis": "redis"}


class OutageLogFilter(logging.Filter):
    """At most one warning or error line per dependency every `window_s` seconds, with the count it held back.

    A dependency is named by a record's `dependency` attribute (`log.warning(..., extra={"dependency": "redis"})`)
    or by the client library's logger (aiokafka, kafka, faust.transport, redis). An outage of Kafka otherwise
    writes about a hundred lines a second."""

    def __init__(self, window_s: float = OUTAGE_WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        dependency = getattr(record, "dependency", None) or next(
            (name for prefix, name in _CLIENT_LOGGERS.items()
             if record.name == prefix or record.name.startswith(prefix + ".")), None)
        if dependency is None:
            return True
        last = self._last.get(dependency)
        if last is not None and record.created - last < self.window_s:
            self._held[dependency] = self._held.get(dependency, 0) + 1
            return False
        self._last[dependency] = record.created
        held = self._held.pop(dependency, 0)
        if held:
            record.msg = f"{record.msg} [{held} more {dependency} warnings in the last {self.window_s:.0f}s]"
        return True


def install_outage_filter(window_s: float = OUTAGE_WINDOW_S) -> None:
    """Put one `OutageLogFilter` on every handler of the root logger (Faust installs its own handlers)."""
    shared = OutageLogFilter(window_s)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, OutageLogFilter) for f in handler.filters):
            handler.addFilter(shared)
