"""Ingest: turn a ``POST /events/{stream}`` body into events ready for the store.

This module owns the body formats (JSON, NDJSON, CloudEvents structured, batch
and binary, gzip), the size and count limits on them, per-event validation
(JSON Schema, CloudEvents attributes, event time, dedupe key), the event-time
format (``parse_time``/``format_time``) and the 422 error listing every invalid
event. It is pure: bytes and mappings in, values or ``RtisError`` out. It must
not do I/O, use asyncio or import aiohttp or any other part of rtis that does;
``server.py`` pumps requests through it.

Two calls per request: ``decode_body`` (format -> list of JSON values, raising
400/413/415) then ``prepare`` (values -> ``Prepared`` rows and ``Invalid``
reports, never raising for a bad event so that all of them are reported).
"""

from __future__ import annotations

import base64
import math
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import unquote

import orjson
from fastjsonschema import JsonSchemaValueException

from .config import StreamConfig
from .errors import BadRequest, InvalidEvents, PayloadTooLarge, UnsupportedMediaType

__all__ = [
    "MAX_DETAILS",
    "Decoded",
    "Invalid",
    "Limits",
    "Prepared",
    "decode_body",
    "format_time",
    "invalid_error",
    "parse_time",
    "prepare",
]

MAX_DETAILS = 100  # invalid events listed in one 422 body

JSON = "application/json"
CE_STRUCTURED = "application/cloudevents+json"
CE_BATCH = "application/cloudevents-batch+json"
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})
CE_REQUIRED = ("id", "source", "type")
SUPPORTED = (
    "use application/json, application/x-ndjson, application/cloudevents+json "
    "or application/cloudevents-batch+json"
)

MIN_MS = 0  # 1970-01-01T00:00:00.000Z
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_SECONDS = MAX_MS // 1000
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
TIME_EXAMPLE = "'2026-12-03T16:20:00.123Z'"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_batch_events: int


@dataclass(frozen=True)
class Decoded:
    events: list[Any]  # parsed JSON values in request order; prepare() reports non-objects
    cloudevents: bool  # the body was CloudEvents (structured, batch or binary)


@dataclass(slots=True)
class Prepared:
    time_ms: int  # event time, epoch milliseconds
    key: str | None  # dedupe key (JSON-encoded, see prepare), or None
    data: bytes  # the event as stored and published


@dataclass(slots=True)
class Invalid:
    index: int  # position in the request
    path: str  # "$", "$.amount", "$.items[2].sku"
    message: str
    data: bytes  # the offending event, serialised

    def detail(self) -> dict[str, Any]:
        return {"index": self.index, "path": self.path, "message": self.message}


# --------------------------------------------------------------------------- decoding


def decode_body(
    body: bytes,
    *,
    content_type: str | None,
    content_encoding: str | None,
    headers: Mapping[str, str],
    limits: Limits,
) -> Decoded:
    """Decode a request body into JSON values, by Content-Encoding and Content-Type.

    ``headers`` is the request's header mapping: case-insensitive (aiohttp's
    ``request.headers``) or a plain dict (then looked up case-insensitively).
    Raises BadRequest (400), PayloadTooLarge (413) or UnsupportedMediaType (415).
    """
    cap = limits.max_body_bytes
    if len(body) > cap:
        raise PayloadTooLarge(f"body of {len(body)} bytes exceeds max_body_bytes = {cap}")
    if content_encoding:
        encoding = content_encoding.strip().lower()
        if encoding in ("gzip", "x-gzip"):
            body = _gunzip(body, cap)
        elif encoding not in ("", "identity"):
            raise UnsupportedMediaType(
                f"content encoding {content_encoding.strip()!r} is not supported; "
                "use gzip or identity"
            )

    media = content_type.split(";", 1)[0].strip().lower() if content_type else ""
    if media == CE_STRUCTURED:
        value = _loads(body)
        if not isinstance(value, dict):
            raise BadRequest(
                f"expected one CloudEvent as a JSON object, got {_kind(value)}"
                + (
                    "; send a batch as application/cloudevents-batch+json"
                    if isinstance(value, list)
                    else ""
                )
            )
        return Decoded([value], True)
    if media == CE_BATCH:
        value = _loads(body)
        if not isinstance(value, list):
            raise BadRequest(f"expected a JSON array of CloudEvents, got {_kind(value)}")
        _check_count(len(value), limits)
        return Decoded(value, True)
    if _header(headers, "ce-specversion") is not None:
        return Decoded([_binary_event(body, content_type, media, headers)], True)
    if media == JSON or not media:
        value = _loads(body)
        if isinstance(value, dict):
            return Decoded([value], False)
        if isinstance(value, list):
            _check_count(len(value), limits)
            return Decoded(value, False)
        raise BadRequest(f"expected a JSON object or an array of objects, got {_kind(value)}")
    if media in NDJSON_TYPES:
        return Decoded(_ndjson(body, limits), False)
    raise UnsupportedMediaType(f"content type {media!r} is not supported; {SUPPORTED}")


def _gunzip(body: bytes, cap: int) -> bytes:
    """Decompress gzip (several members allowed) without ever holding more than cap + 1 bytes."""
    parts: list[bytes] = []
    size = 0
    data = body
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            # max_length bounds what one call may allocate: a gzip bomb stops at the cap.
            part = inflater.decompress(data, cap + 1 - size)
        except zlib.error as e:
            raise BadRequest(f"body is not valid gzip: {e}") from None
        size += len(part)
        if size > cap:
            raise PayloadTooLarge(
                f"body of more than {cap} bytes after gzip exceeds max_body_bytes = {cap}"
            )
        if not inflater.eof:
            raise BadRequest("body is not valid gzip: the compressed data is truncated")
        parts.append(part)
        data = inflater.unused_data
        if not data:
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if not body.strip():
            raise BadRequest(
                "body is empty; expected a JSON object or an array of objects"
            ) from None
        line, column, where, reason = _json_error(body, e)
        raise BadRequest(
            f"malformed JSON at line {line} column {column} ({where}): {reason}"
        ) from None


def _json_error(text: bytes, e: orjson.JSONDecodeError) -> tuple[int, int, str, str]:
    """(line, column, offset text, reason) of a parse error.

    orjson reports invalid UTF-8 at char 0 whatever its place, so find it here.
    """
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as u:
        line = text.count(b"\n", 0, u.start) + 1
        column = u.start - text.rfind(b"\n", 0, u.start)
        return line, column, f"byte {u.start}", f"not valid UTF-8 ({u.reason})"
    return e.lineno, e.colno, f"char {e.pos}", e.msg


def _ndjson(body: bytes, limits: Limits) -> list[Any]:
    lines = body.split(b"\n")
    if len(lines) > limits.max_batch_events:
        # Count before parsing anything: an oversized batch costs one pass over bytes.
        _check_count(sum(1 for line in lines if line.strip()), limits)
    events: list[Any] = []
    append = events.append
    loads = orjson.loads
    for number, line in enumerate(lines, 1):
        try:
            append(loads(line))
        except orjson.JSONDecodeError as e:
            if not line.strip():
                continue
            _, column, _, reason = _json_error(line, e)
            raise BadRequest(
                f"line {number}: malformed JSON at column {column}: {reason}"
            ) from None
    return events


def _check_count(count: int, limits: Limits) -> None:
    if count > limits.max_batch_events:
        raise PayloadTooLarge(
            f"batch of {count} events exceeds max_batch_events = {limits.max_batch_events}",
            code="too_many_events",
        )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and isinstance(headers, dict):
        # A plain dict is case-sensitive; aiohttp's CIMultiDictProxy is not.
        items: Mapping[str, str] = headers
        for key, v in items.items():
            if key.lower() == name:
                return v
    return value


def _binary_event(
    body: bytes, content_type: str | None, media: str, headers: Mapping[str, str]
) -> dict[str, Any]:
    """A CloudEvent in binary mode: attributes from ce-* headers, data from the body."""
    event: dict[str, Any] = {}
    for key, value in headers.items():
        name = key.lower()
        if name.startswith("ce-") and len(name) > 3:
            if "%" in value:
                # The HTTP binding percent-encodes header values outside printable ASCII.
                try:
                    value = unquote(value, errors="strict")
                except UnicodeDecodeError:
                    raise BadRequest(
                        f"header {key}: percent-encoded value is not valid UTF-8"
                    ) from None
            event[name[3:]] = value
    event.pop("data", None)
    event.pop("data_base64", None)
    if content_type and content_type.strip():
        event["datacontenttype"] = content_type.strip()
    if not body:
        return event
    if media == JSON or not media or media.endswith("+json"):
        event["data"] = _loads(body)
    else:
        try:
            event["data"] = body.decode("utf-8")
        except UnicodeDecodeError:
            event["data_base64"] = base64.b64encode(body).decode("ascii")
    return event


# --------------------------------------------------------------------------- preparing


def prepare(
    decoded: Decoded, stream: StreamConfig, now_ms: int
) -> tuple[list[Prepared], list[Invalid]]:
    """Validate every event; return the storable ones and one Invalid per bad event.

    Keys are JSON text, so a plain key ``"7"`` differs from ``7``, and a
    CloudEvents key (``["source","id"]``) never equals a plain one. An event with
    several problems gets one Invalid naming the first, its message listing the rest.
    """
    prepared: list[Prepared] = []
    invalid: list[Invalid] = []
    validator = stream.validator
    time_field = stream.time_field
    dedupe_key = stream.dedupe_key
    cloudevents = decoded.cloudevents
    dumps = orjson.dumps
    for index, event in enumerate(decoded.events):
        if not isinstance(event, dict):
            invalid.append(
                Invalid(index, "$", f"expected a JSON object, got {_kind(event)}", _dump(event))
            )
            continue
        problems: list[tuple[str, str]] | None = None
        time_ms = now_ms
        key: str | None = None
        if cloudevents:
            time_ms, key, problems = _cloudevent_meta(event, now_ms)
        if validator is not None:
            try:
                validator(event)
            except JsonSchemaValueException as e:
                problems = problems or []
                problems.append(_schema_problem(e, event))
        if not cloudevents:
            if time_field is not None:
                try:
                    time_ms = _event_time(event.get(time_field))
                except ValueError as e:
                    problems = problems or []
                    problems.append((_member_path("$", time_field), str(e)))
            if dedupe_key is not None:
                value = event.get(dedupe_key)
                if isinstance(value, str):
                    key = dumps(value).decode()
                elif isinstance(value, int) and not isinstance(value, bool):
                    key = str(value)  # JSON text of an int, also beyond orjson's 64 bits
                else:
                    problems = problems or []
                    problems.append((_member_path("$", dedupe_key), _key_reason(value)))
        try:
            data = dumps(event)
        except orjson.JSONEncodeError as e:
            problems = problems or []
            problems.append(("$", f"cannot be stored as JSON: {e}"))
            data = _dump(event)
        if problems is None:
            prepared.append(Prepared(time_ms, key, data))
        else:
            invalid.append(_invalid(index, problems, data))
    return prepared, invalid


def _invalid(index: int, problems: list[tuple[str, str]], data: bytes) -> Invalid:
    path, message = problems[0]
    if len(problems) > 1:
        message += "; also " + "; ".join(f"{p}: {m}" for p, m in problems[1:])
    return Invalid(index, path, message, data)


def _cloudevent_meta(
    event: dict[str, Any], now_ms: int
) -> tuple[int, str | None, list[tuple[str, str]] | None]:
    """Event time, dedupe key and problems of a structured CloudEvent."""
    problems: list[tuple[str, str]] | None = None
    specversion = event.get("specversion")
    if specversion != "1.0":
        problems = [
            (
                "$.specversion",
                "required CloudEvents attribute is missing"
                if specversion is None
                else f'must be "1.0", got {_describe(specversion)}',
            )
        ]
    for name in CE_REQUIRED:
        value = event.get(name)
        if not isinstance(value, str) or not value:
            problems = problems or []
            problems.append(
                (
                    f"$.{name}",
                    "required CloudEvents attribute is missing"
                    if value is None
                    else f"must be a non-empty string, got {_describe(value)}",
                )
            )
    time_ms = now_ms
    value = event.get("time")
    if value is not None:
        try:
            if not isinstance(value, str):
                raise ValueError(f"expected an RFC 3339 string, got {_describe(value)}")
            time_ms = parse_time(value)
        except ValueError as e:
            problems = problems or []
            problems.append(("$.time", str(e)))
    if problems is not None:
        return time_ms, None, problems
    return time_ms, orjson.dumps([event["source"], event["id"]]).decode(), None


def _event_time(value: Any) -> int:
    if value is None:
        raise ValueError(
            f"missing; expected epoch seconds or an RFC 3339 string like {TIME_EXAMPLE}"
        )
    return parse_time(value)


def _key_reason(value: Any) -> str:
    if value is None:
        return "missing; the dedupe key must be a string or an integer"
    return f"the dedupe key must be a string or an integer, got {_describe(value)}"


# Rules whose message gains from naming the offending value.
VALUE_RULES = frozenset(
    {
        "type",
        "enum",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "multipleOf",
    }
)


def _schema_problem(e: JsonSchemaValueException, event: Any) -> tuple[str, str]:
    """fastjsonschema's ("data.items.2.sku", "data.items[2].sku must be string") -> JSONPath."""
    segments = list(getattr(e, "path", None) or ["data"])[1:]
    path = "$"
    node = event
    for segment in segments:
        if isinstance(node, list):
            path += f"[{segment}]"
            try:
                node = node[int(segment)]
            except (ValueError, IndexError):
                node = None
        else:
            path = _member_path(path, str(segment))
            node = node.get(segment) if isinstance(node, dict) else None
    message = e.message
    name = e.name or ""
    if name and message.startswith(name + " "):
        message = message[len(name) + 1 :]
    if e.rule == "required" and isinstance(e.value, dict) and isinstance(e.rule_definition, list):
        missing = [k for k in e.rule_definition if k not in e.value]
        if len(missing) == 1:
            return _member_path(path, str(missing[0])), "required property is missing"
        if missing:
            return path, "required properties are missing: " + ", ".join(map(repr, missing))
    if e.rule in VALUE_RULES:
        message += f", got {_describe(e.value)}"
    return path, message


def _member_path(path: str, name: str) -> str:
    if name.isidentifier():
        return f"{path}.{name}"
    return f"{path}[{orjson.dumps(name).decode()}]"


# --------------------------------------------------------------------------- errors


def invalid_error(stream: str, invalid: list[Invalid], total: int) -> InvalidEvents:
    """The 422 for a request with invalid events: a count, and details for the first 100."""
    count = len(invalid)
    verb = "is" if count == 1 else "are"
    message = f"{count} of {total} events {verb} invalid in stream {stream!r}"
    if count > MAX_DETAILS:
        message += f"; details list the first {MAX_DETAILS}"
    return InvalidEvents(message, details=[i.detail() for i in invalid[:MAX_DETAILS]])


def _dump(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        try:
            text = repr(value)
        except RecursionError:
            text = "<too deeply nested to show>"
        return orjson.dumps(text[:10_000])


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _describe(value: Any) -> str:
    """The kind and, for scalars, the value: "string 'x'", "number 12", "an array"."""
    if value is None or isinstance(value, list | dict):
        return _kind(value)
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"string {shown!r}"
    if isinstance(value, int | float):
        return f"number {value}"
    return type(value).__name__


# --------------------------------------------------------------------------- time


def parse_time(value: Any) -> int:
    """Epoch seconds (int or float) or an RFC 3339 string -> epoch milliseconds.

    Raises ValueError saying why for anything else, and for times outside the
    years 1970..9999. Fractions below a millisecond are truncated.
    """
    if isinstance(value, bool):
        raise ValueError("expected epoch seconds or an RFC 3339 string, got a boolean")
    if isinstance(value, int):
        if 0 <= value <= MAX_SECONDS:
            return value * 1000
        raise ValueError(_out_of_range(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"epoch seconds must be a finite number, got {value}")
        if 0 <= value < MAX_SECONDS + 1:
            ms = round(value * 1000)
            if ms <= MAX_MS:
                return ms
        raise ValueError(_out_of_range(value))
    if isinstance(value, str):
        return _parse_rfc3339(value)
    raise ValueError(f"expected epoch seconds or an RFC 3339 string, got {_describe(value)}")


def _out_of_range(seconds: float) -> str:
    message = f"epoch seconds {seconds} is outside the years 1970..9999"
    if 0 <= seconds / 1000 <= MAX_SECONDS:
        message += " (milliseconds? the time must be in seconds)"
    return message


# "2026-12-03T16:20:00" -> epoch seconds of that wall-clock time, already checked.
# Events of one batch or one producer share seconds, so most strings skip the date work.
_SECONDS: dict[str, int] = {}
_MAX_CACHED = 4096


def _parse_rfc3339(s: str) -> int:
    n = len(s)
    if n < 19 or n > 64 or not s.isascii():
        raise ValueError(f"expected an RFC 3339 time like {TIME_EXAMPLE}, got {_describe(s)}")
    head = s[:19]
    seconds = _SECONDS.get(head)
    if seconds is None:
        seconds = _parse_date_time(head, s)
        if len(_SECONDS) >= _MAX_CACHED:
            _SECONDS.clear()
        _SECONDS[head] = seconds
    if n == 24 and s[19] == "." and s[23] in "Zz" and s[20:23].isdigit():
        result = seconds * 1000 + int(s[20:23])  # the common "…:00.123Z"
    else:
        result = _apply_tail(s, seconds)
    if not MIN_MS <= result <= MAX_MS:
        raise ValueError(f"time {s!r} is outside the years 1970..9999")
    return result


def _parse_date_time(head: str, s: str) -> int:
    """ "YYYY-MM-DDTHH:MM:SS" -> epoch seconds, as if it were UTC."""
    if (
        head[4] != "-"
        or head[7] != "-"
        or head[10] not in "Tt "
        or head[13] != ":"
        or head[16] != ":"
        or not (
            head[0:4] + head[5:7] + head[8:10] + head[11:13] + head[14:16] + head[17:19]
        ).isdigit()
    ):
        raise ValueError(f"expected an RFC 3339 time like {TIME_EXAMPLE}, got {_describe(s)}")
    hour, minute, second = int(head[11:13]), int(head[14:16]), int(head[17:19])
    if hour > 23 or minute > 59 or second > 60:  # 60: a leap second, counted as the next one
        raise ValueError(f"time of day out of range in {s!r}")
    try:
        days = date(int(head[0:4]), int(head[5:7]), int(head[8:10])).toordinal() - EPOCH_ORDINAL
    except ValueError as e:
        raise ValueError(f"invalid date in {s!r}: {e}") from None
    return days * 86400 + hour * 3600 + minute * 60 + second


def _apply_tail(s: str, seconds: int) -> int:
    """Fraction and offset after the seconds: ".5Z", "Z", "+01:00", ".123456-05:30"."""
    n = len(s)
    if s[-1] in "Zz":
        offset = 0
        end = n - 1
    elif n >= 25 and s[-6] in "+-" and s[-3] == ":" and (s[-5:-3] + s[-2:]).isdigit():
        offset_hours, offset_minutes = int(s[-5:-3]), int(s[-2:])
        if offset_hours > 23 or offset_minutes > 59:
            raise ValueError(f"time zone offset out of range in {s!r}")
        offset = (offset_hours * 60 + offset_minutes) * 60
        if s[-6] == "-":
            offset = -offset
        end = n - 6
    else:
        raise ValueError(
            f"RFC 3339 time needs 'Z' or an offset like '+01:00' at the end, got {s!r}"
        )
    ms = 0
    if end != 19:
        fraction = s[20:end]
        if s[19] != "." or not fraction.isdigit():
            raise ValueError(f"expected an RFC 3339 time like {TIME_EXAMPLE}, got {_describe(s)}")
        ms = int((fraction + "00")[:3])  # truncated to the millisecond
    return (seconds - offset) * 1000 + ms


_MS_SUFFIX = tuple(f".{i:03d}Z" for i in range(1000))
_PREFIXES: dict[int, str] = {}


def format_time(ms: int) -> str:
    """Epoch milliseconds -> "2026-12-03T16:20:00.123Z" (RFC 3339 UTC, 3 decimals)."""
    seconds, fraction = divmod(ms, 1000)
    prefix = _PREFIXES.get(seconds)
    if prefix is None:
        t = time.gmtime(seconds)
        prefix = (
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
            f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        )
        if len(_PREFIXES) >= _MAX_CACHED:
            _PREFIXES.clear()
        _PREFIXES[seconds] = prefix
    return prefix + _MS_SUFFIX[fraction]
