"""Structured logs: every ``twisted.logger`` event as one JSON object per line.

Run the server with ``twistd --logger livetx.logs.json_observer -n live``.
Each line has ``time``, ``level``, ``namespace`` and the formatted
``message``, then the event's own fields: a finished turn is one line with
``"livetx_event": "turn"``, its outcome, latencies and metrics (see
:mod:`livetx.metrics`). Only plain JSON values are copied, never an object's
``repr``, so nothing reaches the log that was not put there as data; the
code that logs keeps credentials and conversation text out of its fields.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import implementer

_PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any) -> bool:
    """Whether a value is JSON data all the way down."""
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event as one line of JSON and flushes, for log shippers."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(),
            "level": getattr(level, "name", "info"),
            "namespace": event.get("log_namespace", ""),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if not key.startswith(("log_", "_")) and key not in record and _plain(value):
                record[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            record["error"] = failure.getErrorMessage()
            record["traceback"] = failure.getTraceback()
        self._out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._out.flush()


def json_observer() -> JSONLinesObserver:
    """For ``twistd --logger``: JSON lines on standard output."""
    return JSONLinesObserver(sys.stdout)
