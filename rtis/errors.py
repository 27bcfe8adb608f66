"""The exceptions rtis raises, and the one error shape every endpoint answers with.

Every user-facing failure is an :class:`RtisError` carrying an HTTP status, a
stable machine-readable ``code``, a concrete message and optional per-item
details. ``server.py`` turns any of them into
``{"error": {"status", "code", "message", "details"}}``; nothing here does I/O.
"""

from __future__ import annotations

from typing import Any


class RtisError(Exception):
    """Base class: an error with an HTTP status and a stable code."""

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": self.status,
            "code": self.code,
            "message": self.message,
        }
        if self.details:
            body["details"] = self.details
        return {"error": body}


class ConfigError(RtisError, ValueError):
    """The configuration is invalid; ``errors`` lists every problem found, each
    starting with its key path."""

    status = 500
    code = "config_error"

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(self.errors)


class BadRequest(RtisError, ValueError):
    status = 400
    code = "malformed_body"


class NotFound(RtisError, LookupError):
    status = 404
    code = "not_found"


class PayloadTooLarge(RtisError, ValueError):
    status = 413
    code = "too_large"


class UnsupportedMediaType(RtisError, ValueError):
    status = 415
    code = "unsupported_media_type"


class InvalidEvents(RtisError, ValueError):
    status = 422
    code = "invalid_events"


class Overloaded(RtisError):
    """Too many writes are pending; the client should retry shortly."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)


class StoreUnavailable(RtisError):
    status = 503
    code = "store_unavailable"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)


class StoreClosed(StoreUnavailable):
    """The store was closed; no more writes are accepted."""

    code = "store_closed"
