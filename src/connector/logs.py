"""Logging set-up: one line per record, outside text escaped, plain text or JSON lines.

What a peer or a local caller sends (paths, headers, token claims, termination reasons)
reaches log messages as arguments. A newline in it would start a line that looks like our
own (log forging, CWE-117), and an ANSI escape would rewrite a terminal. So every record is
escaped once, centrally, where it is written: ``EscapingFilter`` renders the message with its
arguments and replaces each control character (C0, DEL, C1, and the Unicode line and paragraph
separators) by a visible escape such as ``\\n`` or ``\\x1b``. Call sites still log outside
values with ``%r`` where quoting helps the reader; the filter is what guarantees one line.

``[log] format = "json"`` in connector.toml writes one JSON object per line (``time``,
``level``, ``logger``, ``event``, and when known ``process_id``, ``peer``, ``reason``,
``error_id``) for a log pipeline; plain text is the default. A record's ``exc_info`` goes into
the same object (``traceback``), so a JSON log stays one object per line.

The request context (the peer's DID once its token is verified, the process id in the path)
is kept in a context variable that each aiohttp request task has its own copy of:
``bind(peer=..., process_id=...)`` adds to it, and every record logged while handling that
request carries the values in JSON mode.

aiohttp logs a request it cannot parse (a control character in a header, a bad request line)
or a caller hanging up mid-request with a traceback at ERROR. Both are the caller's doing,
not ours: ``CallerFaultFilter`` turns such a record into one INFO line naming the error.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from aiohttp.http_exceptions import HttpProcessingError

LOG_FORMATS = ("text", "json")
# Libraries whose DEBUG records carry the data they handle: aiosqlite logs every statement
# with its parameters (data-plane tokens, seen token ids). They stay at WARNING whatever
# [log] level says, so that no level ever writes a token.
QUIET_LIBRARIES = ("aiosqlite", "asyncpg")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields a record may carry (``extra=`` or ``bind``) that the JSON form writes out.
CONTEXT_FIELDS = ("process_id", "consumer_pid", "provider_pid", "peer", "status", "reason",
                  "error_id")

# C0 controls, DEL, C1 controls, and U+2028/U+2029 (line breaks to many log viewers).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_context: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "connector_log_context", default=None)


@dataclass(frozen=True)
class LogSettings:
    """The ``[log]`` table of connector.toml."""

    format: str = "text"
    level: str = "INFO"


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every control character replaced by a visible escape; one line."""
    return _CONTROL.sub(_escape_char, text)


def bind(**values: str | None) -> None:
    """Add values (peer DID, process id) to the current request's log context."""
    fresh = {k: escape(v) for k, v in values.items() if v}
    if fresh:
        _context.set({**context(), **fresh})


def context() -> Mapping[str, str]:
    """The current request's log context (empty outside a request)."""
    return _context.get() or {}


class EscapingFilter(logging.Filter):
    """Render each record's message once and escape it (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: keep what we can, visibly
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = escape(message)
        record.args = None
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, escape(value))
        return True


class CallerFaultFilter(logging.Filter):
    """aiohttp's traceback for a caller's malformed request or hang-up: one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ConnectionError) or (
                isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500):
            record.msg = f"{record.getMessage()}: the caller's fault: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        doc.update(context())
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def handler(settings: LogSettings, stream: TextIO | None = None) -> logging.Handler:
    """A stream handler writing escaped records in the configured format."""
    out = logging.StreamHandler(stream or sys.stderr)
    out.addFilter(CallerFaultFilter())
    out.addFilter(EscapingFilter())
    out.setFormatter(JsonFormatter() if settings.format == "json"
                     else logging.Formatter(TEXT_FORMAT))
    return out


def setup(settings: LogSettings, stream: TextIO | None = None) -> None:
    """Route every logger (ours, aiohttp's, asyncio's) through one escaping handler."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler(settings, stream))
    root.setLevel(settings.level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
