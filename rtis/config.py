"""Configuration: read ``config.toml`` once, validate every key, freeze the result.

This module owns the settings table (every key, its type, default and help
text), the embedded default configuration and the key-path error messages.
It reads one file and imports no other part of rtis's I/O. Every problem in a
file is collected before failing, so one run of ``rtis check`` lists them all.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastjsonschema
import jwt

from .auth import (
    HASH_RE,
    MIN_SECRET_BYTES,
    ApiKey,
    JwtSettings,
    load_jwks,
    resolve_rate,
    scope_problem,
)
from .errors import ConfigError

DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class Setting:
    """One configuration key: its type, default and the help text shown in docs."""

    key: str
    kind: str  # "str" | "int" | "number" | "bool" | "duration" | "str_list" | one of "a|b|c"
    default: Any
    help: str


SERVER_SETTINGS: tuple[Setting, ...] = (
    Setting("host", "str", "127.0.0.1", "Address to listen on."),
    Setting("port", "int", 8080, "TCP port to listen on; 0 picks a free one."),
    Setting("database", "str", "rtis.db", "SQLite database file, relative to the config file."),
    Setting(
        "durability",
        "full|normal",
        "full",
        "full: fsync before acknowledging (power-loss safe); normal: process-crash safe.",
    ),
    Setting(
        "max_body_bytes", "int", 10 * 1024 * 1024, "Largest request body accepted (after gzip)."
    ),
    Setting("max_batch_events", "int", 10_000, "Most events accepted in one request."),
    Setting(
        "max_pending_events",
        "int",
        100_000,
        "Most events waiting for their commit; past it ingest answers 503.",
    ),
    Setting(
        "allowed_origins",
        "str_list",
        [],
        "Browser Origins allowed on /ws and for CORS; [] means same origin only.",
    ),
    Setting(
        "max_queued_messages",
        "int",
        10_000,
        "Messages a WebSocket connection may have waiting to be sent before it is closed (4408).",
    ),
    Setting(
        "max_connections",
        "int",
        10_000,
        "Most WebSocket connections at once; past it the upgrade is answered 503.",
    ),
    Setting(
        "max_subscriptions",
        "int",
        100,
        "Most topics one WebSocket connection may subscribe to (error too_many_subscriptions).",
    ),
    Setting(
        "max_frame_bytes",
        "int",
        64 * 1024,
        "Largest WebSocket frame a client may send; a larger one closes the connection (1009).",
    ),
    Setting(
        "heartbeat_interval", "duration", 20.0, "WebSocket ping interval; a dead peer is dropped."
    ),
    Setting(
        "shutdown_timeout",
        "duration",
        10.0,
        "On SIGINT/SIGTERM, how long in-flight requests get to finish.",
    ),
    Setting(
        "dead_letter_retention",
        "duration",
        None,
        "Dead letters older than this are purged; absent = kept.",
    ),
    Setting(
        "retention_interval",
        "duration",
        10.0,
        "How often expired messages and dead letters are purged (1000 rows per transaction).",
    ),
    Setting(
        "access_log",
        "bool",
        False,
        "Log one line per HTTP request (also: rtis serve --access-log).",
    ),
)

STREAM_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "time_field",
        "str",
        None,
        "Field holding event time: epoch seconds or an RFC 3339 string; absent = arrival time.",
    ),
    Setting(
        "dedupe_key",
        "str",
        None,
        "Field whose value identifies an event; an event with a stored key is not stored again.",
    ),
    Setting(
        "on_invalid",
        "reject|dead_letter",
        "reject",
        "reject: a request with any invalid event is refused whole (422); "
        "dead_letter: valid events are stored, invalid ones kept with their reason.",
    ),
    Setting(
        "retention",
        "duration",
        None,
        "Raw events older than this (by event time) are purged; absent = kept.",
    ),
    Setting("schema", "table", None, "JSON Schema that each event must satisfy."),
)

QUERY_SETTINGS: tuple[Setting, ...] = (
    Setting("sql", "str", None, "The continuous query (see docs/sql.md). Required."),
    Setting("lateness", "duration", 0.0, "How long a window waits for out-of-order events."),
    Setting(
        "emit", "final|changes", "final", "final: one row per closed window; changes: every update."
    ),
    Setting(
        "late", "drop|update", "drop", "Events later than lateness: drop (dead letter) or update."
    ),
    Setting(
        "emit_interval", "duration", 1.0, "With emit = changes, the least time between updates."
    ),
    Setting(
        "idle_timeout",
        "duration",
        5.0,
        "After this long without events the watermark advances with the wall clock.",
    ),
    Setting(
        "retention",
        "duration",
        None,
        "Output messages and result rows older than this are purged; absent = kept.",
    ),
)

AUTH_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "ws_auth_timeout",
        "duration",
        5.0,
        "A /ws connection without credentials on the upgrade must send its auth message "
        "within this time, else it is closed (4401).",
    ),
    Setting(
        "rate",
        "number",
        0,
        "Default rate limit of each key and token subject, in events per second "
        "(an HTTP request or WebSocket frame counts 1, a POST counts its events); 0 = unlimited.",
    ),
    Setting(
        "burst", "int", 0, "Default bucket size: events allowed at once; 0 = one second's worth."
    ),
    Setting("keys", "table", None, "API keys, one [auth.keys.NAME] table each (below)."),
    Setting("jwt", "table", None, "JWT bearer tokens (below)."),
)

AUTH_KEY_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "hash",
        "str",
        None,
        'Hash of the key as printed by `rtis keys new` ("sha256:" and 64 hex digits). Required.',
    ),
    Setting(
        "scopes",
        "str_list",
        None,
        "What the key may do: `publish:STREAM`, `subscribe:TOPIC`, `read:TOPIC`, `admin`, `*`; "
        "fnmatch patterns such as `publish:*` are allowed. Required.",
    ),
    Setting("rate", "number", None, "This key's events per second; absent = auth.rate."),
    Setting("burst", "int", None, "This key's bucket size; absent = auth.burst."),
)

AUTH_JWT_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "secret_env",
        "str",
        None,
        "Name of the environment variable holding the HS256 secret (at least 32 bytes).",
    ),
    Setting(
        "jwks_file",
        "str",
        None,
        "JWKS file of RSA (RS256) and EC P-256 (ES256) public keys, relative to the config file.",
    ),
    Setting("issuer", "str", None, "Required 'iss' claim; absent = not checked."),
    Setting("audience", "str", None, "Required 'aud' claim; absent = not checked."),
    Setting("leeway", "duration", 30.0, "Clock skew allowed on exp, nbf and iat."),
    Setting("rate", "number", None, "Events per second of each token subject; absent = auth.rate."),
    Setting("burst", "int", None, "Bucket size of each token subject; absent = auth.burst."),
)

SECTIONS = ("server", "streams", "queries", "functions", "auth")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    database: str = "rtis.db"
    durability: str = "full"
    max_body_bytes: int = 10 * 1024 * 1024
    max_batch_events: int = 10_000
    max_pending_events: int = 100_000
    allowed_origins: tuple[str, ...] = ()
    max_queued_messages: int = 10_000
    max_connections: int = 10_000
    max_subscriptions: int = 100
    max_frame_bytes: int = 64 * 1024
    heartbeat_interval: float = 20.0
    shutdown_timeout: float = 10.0
    dead_letter_retention: float | None = None
    retention_interval: float = 10.0
    access_log: bool = False


@dataclass(frozen=True)
class StreamConfig:
    name: str
    time_field: str | None = None
    dedupe_key: str | None = None
    on_invalid: str = "reject"
    retention: float | None = None
    schema: Mapping[str, Any] | None = None
    validator: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class QueryConfig:
    name: str
    sql: str
    lateness: float = 0.0
    emit: str = "final"
    late: str = "drop"
    emit_interval: float = 1.0
    idle_timeout: float = 5.0
    retention: float | None = None


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: present means every route but /health and /ready needs credentials."""

    keys: tuple[ApiKey, ...] = ()
    jwt: JwtSettings | None = None
    ws_auth_timeout: float = 5.0


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    streams: Mapping[str, StreamConfig] = field(default_factory=dict)
    queries: Mapping[str, QueryConfig] = field(default_factory=dict)
    functions: Mapping[str, str] = field(default_factory=dict)
    path: str | None = None
    auth: AuthConfig | None = None

    def database_path(self) -> Path:
        db = Path(self.server.database)
        if self.path is not None and not db.is_absolute():
            return Path(self.path).parent / db
        return db


def default_config() -> Config:
    """The embedded default: one stream ``events`` accepting any JSON object."""
    return Config(streams={"events": StreamConfig(name="events")})


def parse_duration(value: object) -> float:
    """``"5s"``, ``"500ms"``, ``"30d"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '5s', got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return float(value)
    if isinstance(value, str):
        m = DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * DURATION_UNITS[m.group(2)]
    raise ValueError(f"expected a duration like '500ms', '5s', '1m', '2h' or '30d', got {value!r}")


def _check(path: str, setting: Setting, value: object, errors: list[str]) -> Any:
    kind = setting.kind
    if kind == "str":
        if isinstance(value, str):
            return value
        errors.append(f"{path}: expected a string, got {_describe(value)}")
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        errors.append(f"{path}: expected a non-negative integer, got {_describe(value)}")
    elif kind == "number":
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
        errors.append(f"{path}: expected a non-negative number, got {_describe(value)}")
    elif kind == "bool":
        if isinstance(value, bool):
            return value
        errors.append(f"{path}: expected true or false, got {_describe(value)}")
    elif kind == "duration":
        try:
            return parse_duration(value)
        except ValueError as e:
            errors.append(f"{path}: {e}")
    elif kind == "str_list":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        errors.append(f"{path}: expected a list of strings, got {_describe(value)}")
    elif kind == "table":
        if isinstance(value, dict):
            return value
        errors.append(f"{path}: expected a table, got {_describe(value)}")
    else:
        choices = kind.split("|")
        if value in choices:
            return value
        allowed = ", ".join(repr(c) for c in choices)
        errors.append(f"{path}: expected one of {allowed}, got {_describe(value)}")
    return None


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _section(
    path: str, table: object, settings: tuple[Setting, ...], errors: list[str]
) -> dict[str, Any]:
    """Validate one table against its settings; return {key: value} with defaults."""
    out = {s.key: s.default for s in settings}
    if not isinstance(table, dict):
        errors.append(f"{path}: expected a table, got {_describe(table)}")
        return out
    known = {s.key: s for s in settings}
    for key, value in table.items():
        setting = known.get(key)
        if setting is None:
            names = ", ".join(known)
            errors.append(f"{path}.{key}: unknown key (known keys: {names})")
            continue
        checked = _check(f"{path}.{key}", setting, value, errors)
        if checked is not None:
            out[key] = checked
    return out


def _compile_schema(
    path: str, schema: dict[str, Any], errors: list[str]
) -> Callable[[Any], Any] | None:
    try:
        validator: Callable[[Any], Any] = fastjsonschema.compile(schema)
    except fastjsonschema.JsonSchemaDefinitionException as e:
        errors.append(f"{path}: invalid JSON Schema: {e}")
        return None
    except Exception as e:  # fastjsonschema may raise other errors on nonsense schemas
        errors.append(f"{path}: invalid JSON Schema: {e}")
        return None
    return validator


def config_from_dict(data: Mapping[str, Any], path: str | None = None) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    errors: list[str] = []
    for key in data:
        if key not in SECTIONS:
            errors.append(f"{key}: unknown section (known sections: {', '.join(SECTIONS)})")

    server = _section("server", data.get("server", {}), SERVER_SETTINGS, errors)
    if not 0 <= server["port"] <= 65535:
        errors.append(f"server.port: must be between 0 and 65535, got {server['port']}")
    for key in (
        "max_body_bytes",
        "max_batch_events",
        "max_pending_events",
        "max_queued_messages",
        "max_connections",
        "max_subscriptions",
        "max_frame_bytes",
    ):
        if server[key] == 0:
            errors.append(f"server.{key}: must be at least 1")

    streams: dict[str, StreamConfig] = {}
    raw_streams = data.get("streams", {})
    if not isinstance(raw_streams, dict):
        errors.append(f"streams: expected a table, got {_describe(raw_streams)}")
        raw_streams = {}
    for name, table in raw_streams.items():
        spath = f"streams.{name}"
        if not NAME_RE.match(name):
            errors.append(
                f"{spath}: a stream name must be a letter or _ then up to 63 letters, digits or _"
            )
        values = _section(spath, table, STREAM_SETTINGS, errors)
        validator = None
        if values["schema"] is not None:
            validator = _compile_schema(f"{spath}.schema", values["schema"], errors)
        streams[name] = StreamConfig(name=name, validator=validator, **values)

    queries: dict[str, QueryConfig] = {}
    raw_queries = data.get("queries", {})
    if not isinstance(raw_queries, dict):
        errors.append(f"queries: expected a table, got {_describe(raw_queries)}")
        raw_queries = {}
    for name, table in raw_queries.items():
        qpath = f"queries.{name}"
        if not NAME_RE.match(name):
            errors.append(
                f"{qpath}: a query name must be a letter or _ then up to 63 letters, digits or _"
            )
        if name in streams:
            errors.append(
                f"{qpath}: the name is already a stream's topic; topics share one namespace"
            )
        values = _section(qpath, table, QUERY_SETTINGS, errors)
        if values["sql"] is None:
            if isinstance(table, dict):
                errors.append(f"{qpath}.sql: required")
            continue
        queries[name] = QueryConfig(name=name, **values)

    functions: dict[str, str] = {}
    raw_functions = data.get("functions", {})
    if not isinstance(raw_functions, dict):
        errors.append(f"functions: expected a table, got {_describe(raw_functions)}")
        raw_functions = {}
    for fname, target in raw_functions.items():
        if not isinstance(target, str) or ":" not in target:
            errors.append(f'functions.{fname}: expected "module:callable", got {_describe(target)}')
        else:
            functions[fname] = target

    auth = None
    if "auth" in data:
        auth = _auth(data["auth"], Path(path).parent if path else Path(), errors)

    if not streams and not errors:
        errors.append("streams: at least one stream is required, e.g. [streams.events]")
    if errors:
        raise ConfigError(errors)
    return Config(
        server=ServerConfig(**server),
        streams=streams,
        queries=queries,
        functions=functions,
        path=path,
        auth=auth,
    )


def _auth(table: object, base: Path, errors: list[str]) -> AuthConfig | None:
    """``[auth]``: keys and JWT settings. Secrets are read here, once, and are
    never part of an error message or a repr."""
    values = _section("auth", table, AUTH_SETTINGS, errors)
    rate, burst = values["rate"], values["burst"]
    keys: list[ApiKey] = []
    raw_keys = values["keys"] or {}
    hashes: dict[str, str] = {}
    for name, key_table in raw_keys.items():
        kpath = f"auth.keys.{name}"
        if not NAME_RE.match(name):
            errors.append(f"{kpath}: a key name must be a letter or _ then letters, digits or _")
        k = _section(kpath, key_table, AUTH_KEY_SETTINGS, errors)
        if not isinstance(key_table, dict):
            continue
        if k["hash"] is None:
            errors.append(f'{kpath}.hash: required ("sha256:..." as printed by rtis keys new)')
        elif not HASH_RE.match(k["hash"]):
            errors.append(
                f'{kpath}.hash: expected "sha256:" and 64 lowercase hex digits '
                "(the key itself never goes in the config; run rtis keys new)"
            )
        elif k["hash"] in hashes:
            errors.append(f"{kpath}.hash: the same hash as auth.keys.{hashes[k['hash']]}")
        else:
            hashes[k["hash"]] = name
        if k["scopes"] is None:
            errors.append(f'{kpath}.scopes: required, e.g. ["publish:orders"]')
        else:
            for i, scope in enumerate(k["scopes"]):
                problem = scope_problem(scope)
                if problem:
                    errors.append(f"{kpath}.scopes[{i}]: {problem}")
        key_rate, key_burst = resolve_rate(k["rate"], k["burst"], rate, burst)
        keys.append(ApiKey(name, k["hash"] or "", tuple(k["scopes"] or ()), key_rate, key_burst))
    jwt_settings = None
    if values["jwt"] is not None:
        jwt_settings = _jwt(values["jwt"], base, rate, burst, errors)
    if not keys and jwt_settings is None and isinstance(table, dict):
        errors.append("auth: configure at least one [auth.keys.NAME] or an [auth.jwt] table")
    return AuthConfig(tuple(keys), jwt_settings, values["ws_auth_timeout"])


def _jwt(
    table: dict[str, Any], base: Path, rate: float, burst: int, errors: list[str]
) -> JwtSettings | None:
    j = _section("auth.jwt", table, AUTH_JWT_SETTINGS, errors)
    secret: bytes | None = None
    if j["secret_env"] is not None:
        value = os.environ.get(j["secret_env"])
        if not value:
            errors.append(
                f"auth.jwt.secret_env: the environment variable {j['secret_env']} is not set"
            )
        elif len(value.encode()) < MIN_SECRET_BYTES:
            errors.append(
                f"auth.jwt.secret_env: the secret in {j['secret_env']} is "
                f"{len(value.encode())} bytes; HS256 needs at least {MIN_SECRET_BYTES}"
            )
        else:
            secret = value.encode()
    keys: tuple[jwt.PyJWK, ...] = ()
    if j["jwks_file"] is not None:
        jwks = Path(j["jwks_file"])
        try:
            keys = load_jwks(jwks if jwks.is_absolute() else base / jwks)
        except ValueError as e:
            errors.append(f"auth.jwt.jwks_file: {e}")
    if j["secret_env"] is None and j["jwks_file"] is None:
        errors.append("auth.jwt: set secret_env (HS256) or jwks_file (RS256/ES256), or both")
    jwt_rate, jwt_burst = resolve_rate(j["rate"], j["burst"], rate, burst)
    return JwtSettings(
        secret=secret,
        keys=keys,
        issuer=j["issuer"],
        audience=j["audience"],
        leeway=j["leeway"],
        rate=jwt_rate,
        burst=jwt_burst,
    )


def load_config(path: str | Path | None) -> Config:
    """Load ``path``; ``None`` means ``./config.toml`` if present, else the default."""
    if path is None:
        if Path("config.toml").is_file():
            path = "config.toml"
        else:
            return default_config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{p}: cannot read config file: {e.strerror or e}"]) from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{p}: not valid TOML: {e}"]) from e
    return config_from_dict(data, path=str(p))


KIND_NAMES = {
    "str": "string",
    "int": "integer",
    "number": "number",
    "bool": "boolean",
    "duration": "duration",
    "str_list": "list of strings",
    "table": "table",
}


def settings_markdown() -> str:
    """The settings tables as Markdown, as they appear in docs/config.md."""
    out: list[str] = []
    for title, settings in (
        ("[server]", SERVER_SETTINGS),
        ("[streams.NAME]", STREAM_SETTINGS),
        ("[queries.NAME]", QUERY_SETTINGS),
        ("[auth]", AUTH_SETTINGS),
        ("[auth.keys.NAME]", AUTH_KEY_SETTINGS),
        ("[auth.jwt]", AUTH_JWT_SETTINGS),
    ):
        out.append(f"### `{title}`\n")
        out.append("| key | type | default | meaning |")
        out.append("| --- | --- | --- | --- |")
        for st in settings:
            kind = KIND_NAMES.get(st.kind) or " or ".join(f'"{c}"' for c in st.kind.split("|"))
            if st.default is None:
                default = "(none)"
            elif st.kind == "duration":
                default = f'`"{st.default:g}s"`'
            else:
                default = f"`{_toml(st.default)}`"
            out.append(f"| `{st.key}` | {kind} | {default} | {st.help} |")
        out.append("")
    return "\n".join(out)


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def replace_server(config: Config, **changes: Any) -> Config:
    """A copy of ``config`` with some server settings overridden (CLI flags)."""
    from dataclasses import replace

    return replace(config, server=replace(config.server, **changes))
