"""One logging set-up for every hotlink process (``hotlink server`` and ``hotlink client``).

Two formats, one timestamp: ISO 8601 in UTC with the date and milliseconds
(``2025-01-31T09:08:07.123Z``), so lines of a relay and of clients on other machines sort
and compare without knowing their time zones.

* ``text``: ``<time> <LEVEL> <logger>: <message>``, the traceback (if any) on the lines after.
  Harnesses wait on the message part; :data:`LINE_TIME` and :func:`parse_time` read the
  prefix back.
* ``json``: one object per line, ``{"time", "level", "logger", "message"}`` plus
  ``"exception"`` (the formatted traceback) when the record carries one; for log collectors.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal, TextIO

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

TIME_PATTERN = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
# The stamp at the start of a text log line (group 1), for harnesses that time events.
LINE_TIME = re.compile(rf"^({TIME_PATTERN}) ", re.MULTILINE)
_STRPTIME = "%Y-%m-%dT%H:%M:%S.%f%z"

# Library loggers that chat at INFO about every request; they still show warnings.
CLIENT_QUIET = ("aiohttp", "asyncio")
SERVER_QUIET = ("aiohttp.access",)


def format_time(created: float) -> str:
    """``created`` (epoch seconds) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    moment = datetime.fromtimestamp(created, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def parse_time(stamp: str) -> float:
    """The epoch seconds of a stamp written by :func:`format_time`."""
    return datetime.strptime(stamp, _STRPTIME).timestamp()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return format_time(record.created)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, str] = {
            "time": format_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii=False keeps "→" and "…" of session lines readable; newlines in a
        # message are escaped, so a record is always exactly one line.
        return json.dumps(doc, ensure_ascii=False, default=str)


def setup_logging(
    level: LogLevel = "info",
    fmt: LogFormat = "text",
    *,
    quiet: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Send every record at ``level`` or above to ``stream`` (stderr) in ``fmt``.

    Replaces any handler set up before (a process configures logging once, after its
    settings are known). ``quiet`` loggers are held at WARNING whatever ``level`` says.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Python warnings (deprecations in a library, say) take the same way out.
    logging.captureWarnings(True)


def json_logging() -> bool:
    """Whether the root logger writes JSON (then a fatal error is logged, not printed)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


def report_fatal(message: str, logger: str = "hotlink") -> None:
    """The one line a process ends with when a user error stops it.

    Text logs (or none yet): ``error: <message>`` on stderr, for a person. JSON logs: an
    ERROR record, so a log collector still sees one object per line.
    """
    if json_logging():
        logging.getLogger(logger).error("%s", message)
    else:
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
