"""The one log line format of the long-running commands (``serve``, ``sync``): ``--log-format text|json``.

``json``: one JSON object per line, ``{"ts": <unix seconds, ms precision>, "level": "info", "msg": "...", ...}``
followed by the record's structured fields (``logging`` ``extra={"fields": {...}}``) at the top level, so
``jq 'select(.source == "...")'`` works; a field that would shadow ``ts``/``level``/``msg`` is renamed
``field_<name>``. ``text``: ``<local time> [LEVEL] <msg> key=value ...`` (level unless INFO); values with
spaces are JSON-quoted so a line still splits unambiguously. Secrets never reach either: callers log none.
"""

from __future__ import annotations

import json
import logging
from typing import Any

FORMATS = ("text", "json")
_RESERVED = ("ts", "level", "msg")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts, level, msg, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                               "msg": record.getMessage()}
        for k, v in _fields(record).items():
            out[f"field_{k}" if k in _RESERVED else str(k)] = v
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, sort_keys=False, default=str)


class TextFormatter(logging.Formatter):
    """``2026-01-02 03:04:05,678 msg key=value``: the line serve always printed, plus the fields; the level is
    named only when it is not INFO (``... WARNING msg``), so access-log lines keep their old shape."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if record.levelno != logging.INFO:
            stamp, _, rest = line.partition(" ")
            time_part, _, msg = rest.partition(" ")
            line = f"{stamp} {time_part} {record.levelname} {msg}"
        parts = []
        for k, v in _fields(record).items():
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            if not text or any(c.isspace() or c in '"=' for c in text):
                text = json.dumps(text)
            parts.append(f"{k}={text}")
        return " ".join([line, *parts])


def formatter(kind: str) -> logging.Formatter:
    if kind not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, not {kind!r}")
    return JSONFormatter() if kind == "json" else TextFormatter()


def use(kind: str, *loggers: str) -> None:
    """Give every handler of the named loggers the ``kind`` formatter (after the command set its handlers up)."""
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter(kind))


__all__ = ["FORMATS", "JSONFormatter", "TextFormatter", "formatter", "use"]
