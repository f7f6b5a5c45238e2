"""
Structured logs: one JSON object per line, for log shippers.

Use it with twistd's C{--logger} option::

    twistd --logger=xsoar_lr.logs.json_observer -n xsoar-lr --config FILE

Each line holds C{time} (ISO 8601, UTC), C{level}, C{namespace}, the
rendered C{message}, the event's own fields (C{instance}, C{code},
C{port}, ...) and, for failures, the C{traceback}.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

__all__ = ["JSONLinesObserver", "json_observer"]

# Twisted's own bookkeeping keys, which are rendered into other fields or are
# of no use outside the process.
_INTERNAL = frozenset(
    {
        "log_format",
        "log_level",
        "log_namespace",
        "log_time",
        "log_source",
        "log_logger",
        "log_failure",
        "log_flattened",
        "log_trace",
        "log_io",
        "log_text",
        "log_legacy",
        "log_system",
        "format",
        "message",
        "isError",
        "system",
        "time",
        "why",
        "failure",
    }
)

#: Field names that may carry a credential; never written, whatever logs them.
SECRET_FIELDS = frozenset(
    {"password", "secret", "token", "authorization", "credentials", "bot_password"}
)


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each log event as one line of JSON.
    """

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(
                event.get("log_time", 0), datetime.timezone.utc
            ).isoformat(timespec="milliseconds"),
            "level": getattr(level, "name", "info"),
            "namespace": event.get("log_namespace", "log_legacy"),
            "message": formatEvent(event),
        }
        if event.get("why") and isinstance(event["why"], str):
            record["why"] = event["why"]
        for key, value in event.items():
            if key in _INTERNAL or key.startswith("_") or key in record:
                continue
            if key.lower() in SECRET_FIELDS:
                continue
            record[key] = _plain(value)
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.out.flush()


def json_observer() -> JSONLinesObserver:
    """
    The observer for twistd's C{--logger} option: JSON lines on standard
    output.
    """
    return JSONLinesObserver(sys.stdout)
