"""Logs as text (the default) or as one JSON object per line (``KEYFOB_LOG_FORMAT=json``),
each carrying the request id.

The request id of a gateway call is its ledger row's id, the ``x-keyfob-request-id`` an
app sees, so a person's complaint, the ledger and the log line meet on one value; other
requests get a random one. It travels in a context variable (each request is its own
task), so nothing passes it around. Secrets never reach a log: messages carry ids and
types, never keys, tokens or bodies.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("keyfob_request_id", default=None)

#: Loggers Keyfob configures: its own and uvicorn's.
LOGGERS = ("keyfob", "uvicorn", "uvicorn.error")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            out["request_id"] = request_id
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = record.exc_info[0].__name__  # the type only: a trace may hold data
        return json.dumps(out, ensure_ascii=False)


def uvicorn_log_config(level: str, fmt: str) -> dict[str, Any] | None:
    """uvicorn's ``log_config`` for the JSON format (None: uvicorn's own text config)."""
    if fmt != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "keyfob.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            name: {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
            for name in LOGGERS
        },
    }


def configure(level: str, fmt: str) -> None:
    """Give Keyfob's loggers the chosen format (when no one configured them already)."""
    if fmt != "json":
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
            continue
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
