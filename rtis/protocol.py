"""The WebSocket message protocol, with no sockets: text in, commands out; frames out.

Client frames are parsed into small command objects; anything malformed is a
:class:`ProtocolError` carrying the close code (4400) and a message that says
what was wrong. Server frames are built as bytes so that a batch of messages
serialised once can be shared by every subscriber.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

CLOSE_BAD_MESSAGE = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_SLOW = 4408
CLOSE_RATE_LIMITED = 4429
CLOSE_GOING_AWAY = 1001

MAX_WHERE_LENGTH = 4096


class ProtocolError(ValueError):
    """A client frame that breaks the protocol or is refused (auth, scope, rate):
    an error frame with ``code`` is sent, then the connection closes with ``close_code``."""

    def __init__(
        self,
        message: str,
        close_code: int = CLOSE_BAD_MESSAGE,
        *,
        code: str = "bad_message",
        id: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.close_code = close_code
        self.code = code
        self.id = id


@dataclass(frozen=True, slots=True)
class Subscribe:
    topic: str
    since: int | None
    where: str | None
    id: Any


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    topic: str
    id: Any


@dataclass(frozen=True, slots=True)
class Ping:
    id: Any


@dataclass(frozen=True, slots=True)
class Auth:
    token: str
    id: Any


Command = Subscribe | Unsubscribe | Ping | Auth


def _id(msg: dict[str, Any]) -> Any:
    value = msg.get("id")
    if (value is not None and not isinstance(value, str | int)) or isinstance(value, bool):
        raise ProtocolError("'id' must be a string or an integer")
    return value


def _topic(msg: dict[str, Any]) -> str:
    topic = msg.get("topic")
    if not isinstance(topic, str) or not topic:
        raise ProtocolError(f"'{msg.get('op')}' needs a 'topic' string")
    return topic


def parse_command(text: str | bytes) -> Command:
    """Parse one client frame; raise ProtocolError if it breaks the protocol."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"frame is not valid JSON: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("frame must be a JSON object with an 'op'")
    op = msg.get("op")
    if op == "subscribe":
        since = msg.get("since")
        if since is not None and (
            not isinstance(since, int) or isinstance(since, bool) or since < 0
        ):
            raise ProtocolError("'since' must be a non-negative integer offset")
        where = msg.get("where")
        if where is not None:
            if not isinstance(where, str):
                raise ProtocolError("'where' must be a string holding a SQL condition")
            if len(where) > MAX_WHERE_LENGTH:
                raise ProtocolError(f"'where' is longer than {MAX_WHERE_LENGTH} characters")
            if not where.strip():
                where = None
        return Subscribe(_topic(msg), since, where, _id(msg))
    if op == "unsubscribe":
        return Unsubscribe(_topic(msg), _id(msg))
    if op == "ping":
        return Ping(_id(msg))
    if op == "auth":
        token = msg.get("token")
        if not isinstance(token, str):
            raise ProtocolError("'auth' needs a 'token' string")
        return Auth(token, _id(msg))
    if op is None:
        raise ProtocolError("frame has no 'op'")
    raise ProtocolError(f"unknown op {op!r}; expected subscribe, unsubscribe, ping or auth")


def reply(op: str, id: Any = None, **fields: Any) -> bytes:
    body: dict[str, Any] = {"op": op, **fields}
    if id is not None:
        body["id"] = id
    return orjson.dumps(body)


def error_frame(code: str, message: str, id: Any = None, **fields: Any) -> bytes:
    return reply("error", id, code=code, message=message, **fields)


def events_frame(topic_json: bytes, chunks: list[bytes]) -> bytes:
    """One ``events`` frame from message chunks (each ``{"offset":..}`` or several
    joined by commas); ``topic_json`` is the topic already encoded as JSON."""
    return b'{"op":"events","topic":%s,"events":[%s]}' % (topic_json, b",".join(chunks))
