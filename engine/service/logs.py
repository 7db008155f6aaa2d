"""The service's log lines: JSON objects or text, each with the call's request id.

``service.log_format = "json"`` makes `mmrec serve` write one JSON object a line on stderr
(:class:`JsonFormatter`: ``ts``, ``level``, ``logger``, ``message``, ``request_id``,
``rpc``, and ``code`` and ``ms`` on a call's access line; ``error`` with the traceback when
there is one), for a log collector; every call has its access line. ``"text"`` keeps the
terminal format of :func:`engine.runtime.logs.configure_logging`, adds ``[request id]`` to
the lines written during a call, and shows access lines only for the server's faults
(INTERNAL, UNKNOWN, DATA_LOSS, UNAVAILABLE), so a terminal is not flooded. Both read the
call from :mod:`engine.service.calls`' context variables, so a line logged deep in the
engine, on a lane's thread, still names its call.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from engine.runtime.logs import NOISY_LOGGERS, configure_logging
from engine.service.calls import ACCESS_LOGGER, REQUEST_ID, RPC

CALL_FIELDS = ("code", "ms")
"""Extra fields a call's access line carries (``extra=`` of the log call)."""


class CallFilter(logging.Filter):
    """Stamps each record with the current call's ``request_id`` and ``rpc`` ("" outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields; never drops a record."""
        record.request_id = REQUEST_ID.get()
        record.rpc = RPC.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ISO 8601), level, logger, message, call fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "") or REQUEST_ID.get(),
            "rpc": getattr(record, "rpc", "") or RPC.get(),
        }
        for name in CALL_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The message, with ``[request id]`` after it during a call."""

    def format(self, record: logging.LogRecord) -> str:
        """The plain message (the handler adds time and level), tagged with the call."""
        message = super().format(record)
        rid = getattr(record, "request_id", "")
        return f"{message} [{rid}]" if rid else message


def configure_service_logging(level: str, log_format: str) -> None:
    """Set up the root logger for `mmrec serve`: ``"json"`` lines or ``"text"`` (rich)."""
    if log_format == "json":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(level.upper())
        for noisy in NOISY_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)
    else:  # a terminal: a line per call would bury the rest; the server's faults still show
        configure_logging(level)
        handler = logging.getLogger().handlers[0]
        handler.setFormatter(TextFormatter("%(message)s"))
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING)
    handler.addFilter(CallFilter())
