"""Logging set-up for ``rtis serve``: plain or JSON lines, the startup summary,
and the request log (off unless asked for).

Log records go to stderr; stdout stays for the one ``rtis listening on ...``
line that scripts read. In JSON mode each record is one object per line with
``time``, ``level``, ``logger`` and ``message``, plus the fields a record was
given with ``extra=`` (the startup summary and the request log give theirs),
so a log pipeline never parses free text. Nothing here reads request bodies,
headers or query strings, so secrets (API keys, tokens) never reach the log.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from . import __version__
from .config import Config

ACCESS_LOGGER = "rtis.access"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


def _rfc3339(created: float) -> str:
    ms = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


def setup_logging(level: str = "info", fmt: str = "plain", stream: IO[str] | None = None) -> None:
    """Send every log record to ``stream`` (stderr) as plain text or JSON lines."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def startup_summary(config: Config, url: str) -> None:
    """Log what this server is: version, config, database, streams, queries, address."""
    streams = {
        name: {
            k: v
            for k, v in (
                ("retention_s", s.retention),
                ("dedupe_key", s.dedupe_key),
                ("on_invalid", s.on_invalid),
            )
            if v is not None
        }
        for name, s in config.streams.items()
    }
    fields = {
        "version": __version__,
        "config": config.path or "(embedded default)",
        "database": str(config.database_path()),
        "durability": config.server.durability,
        "streams": sorted(config.streams),
        "queries": sorted(config.queries),
        "listen": url,
        "auth": getattr(config, "auth", None) is not None,
    }
    logging.getLogger("rtis").info(
        "rtis %s listening on %s; config %s; database %s (durability %s); streams: %s; queries: %s",
        __version__,
        url,
        fields["config"],
        fields["database"],
        fields["durability"],
        ", ".join(streams) or "none",
        ", ".join(config.queries) or "none",
        extra={"event": "startup", **fields},
    )


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path (without its query string), status, time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        ms = round(time * 1000, 2)
        self.logger.info(
            "%s %s %s %d %.2fms",
            request.remote,
            request.method,
            request.path,
            response.status,
            ms,
            extra={
                "event": "request",
                "remote": request.remote,
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "ms": ms,
                "bytes": response.body_length,
            },
        )


def access_log_args(enabled: bool) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner``: no request log unless ``enabled``."""
    if not enabled:
        return {"access_log": None}
    return {"access_log": logging.getLogger(ACCESS_LOGGER), "access_log_class": AccessLogger}
