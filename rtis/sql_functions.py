"""The built-in scalar functions of rtis SQL, and loading of user functions.

Each built-in is a plain Python function over already-evaluated, non-NULL
arguments (the compiler handles NULL: almost every function returns NULL when
an argument is NULL). They follow SQLite's answers (1-based substr with its
negative-index rules, ASCII-only case folding, round half away from zero,
REAL results from round()) and raise :class:`EvalError` on ill-typed input.
Time functions take epoch seconds (a number) or RFC 3339 text and work in UTC.

This module must not do I/O and must not look up attributes by names taken
from SQL text; ``load_functions`` imports only what the operator configured.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

from rtis.sql_values import I64_MAX, I64_MIN, NUM_TYPES, EvalError, clamp_i64, describe

# ---------------------------------------------------------------- arguments


def _text(fn: str, value: Any) -> str:
    if value.__class__ is str:
        return value
    raise EvalError(f"{fn}() expects text, got {describe(value)}")


def _num(fn: str, value: Any) -> int | float:
    cls = value.__class__
    if cls is int or cls is float:
        return value  # type: ignore[no-any-return]
    if cls is bool:
        return int(value)
    raise EvalError(f"{fn}() expects a number, got {describe(value)}")


def _whole(fn: str, value: Any) -> int:
    number = _num(fn, value)
    return number if number.__class__ is int else clamp_i64(number)


# ---------------------------------------------------------------- text

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def fn_lower(value: Any) -> str:
    text = _text("lower", value)
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def fn_upper(value: Any) -> str:
    text = _text("upper", value)
    return text.upper() if text.isascii() else text.translate(_ASCII_UPPER)


def fn_length(value: Any) -> int:
    return len(_text("length", value))


def fn_trim(value: Any, chars: Any = " ") -> str:
    return _text("trim", value).strip(_text("trim", chars))


def fn_ltrim(value: Any, chars: Any = " ") -> str:
    return _text("ltrim", value).lstrip(_text("ltrim", chars))


def fn_rtrim(value: Any, chars: Any = " ") -> str:
    return _text("rtrim", value).rstrip(_text("rtrim", chars))


def fn_replace(value: Any, old: Any, new: Any) -> str | None:
    """Not NULL-strict: SQLite returns the text unchanged for an empty pattern
    before it looks at the replacement, even a NULL one."""
    if value is None or old is None:
        return None
    text = _text("replace", value)
    pattern = _text("replace", old)
    if not pattern:
        return text
    if new is None:
        return None
    return text.replace(pattern, _text("replace", new))


def fn_substr(value: Any, start: Any, count: Any = None) -> str:
    """SQLite's substrFunc, transcribed: 1-based, negative start counts from the end,
    negative count takes characters before start."""
    text = _text("substr", value)
    p1 = _whole("substr", start)
    size = len(text)
    negative = False
    if count is None:
        p2 = I64_MAX
    else:
        p2 = _whole("substr", count)
        if p2 < 0:
            p2 = -p2
            negative = True
    if p1 < 0:
        p1 += size
        if p1 < 0:
            p2 += p1
            if p2 < 0:
                p2 = 0
            p1 = 0
    elif p1 > 0:
        p1 -= 1
    elif p2 > 0:
        p2 -= 1
    if negative:
        p1 -= p2
        if p1 < 0:
            p2 += p1
            p1 = 0
    return text[p1 : p1 + p2]


# ---------------------------------------------------------------- numbers


def fn_abs(value: Any) -> int | float:
    number = _num("abs", value)
    if number == I64_MIN:
        raise EvalError("abs() of -9223372036854775808 overflows a 64-bit integer")
    return abs(number)


_ROUND_CONTEXT = Context(prec=80)


def fn_round(value: Any, digits: Any = 0) -> float:
    number = float(_num("round", value))
    places = min(30, max(0, _whole("round", digits)))
    if not math.isfinite(number) or abs(number) > 4503599627370496.0:
        return number  # no fractional part left to round
    if places == 0:  # SQLite: (double)(int64)(r + 0.5 * sign)
        return float(math.trunc(number + (-0.5 if number < 0 else 0.5)))
    exact = Decimal(repr(number)).quantize(
        Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP, context=_ROUND_CONTEXT
    )
    return float(exact)


def fn_floor(value: Any) -> int | float:
    number = _num("floor", value)
    return number if number.__class__ is int else float(math.floor(number))


def fn_ceil(value: Any) -> int | float:
    number = _num("ceil", value)
    return number if number.__class__ is int else float(math.ceil(number))


# ---------------------------------------------------------------- time

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_datetime(fn: str, value: Any) -> datetime:
    """Epoch seconds (number) or RFC 3339 / ISO 8601 text -> aware UTC datetime."""
    cls = value.__class__
    if cls is int or cls is float:
        try:
            return _EPOCH + timedelta(seconds=value)
        except (OverflowError, ValueError):
            raise EvalError(f"{fn}(): {describe(value)} is out of range for a time") from None
    if cls is str:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise EvalError(f"{fn}(): {describe(value)} is not an RFC 3339 time") from None
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise EvalError(f"{fn}(): {describe(value)} is out of range for a time") from None
    raise EvalError(f"{fn}() expects epoch seconds or RFC 3339 text, got {describe(value)}")


def _epoch_of(moment: datetime) -> int | float:
    delta = moment - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    return seconds + delta.microseconds / 1e6 if delta.microseconds else seconds


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def fn_epoch(value: Any) -> int | float:
    if value.__class__ is int or value.__class__ is float:
        return value
    return _epoch_of(to_datetime("epoch", value))


def fn_to_timestamp(value: Any) -> str:
    return _rfc3339(to_datetime("to_timestamp", value))


TRUNC_UNITS = ("second", "minute", "hour", "day", "week", "month", "year")


def check_trunc_unit(unit: Any) -> str:
    word = unit.lower() if unit.__class__ is str else None
    if word not in TRUNC_UNITS:
        raise EvalError(
            f"date_trunc(): unknown unit {describe(unit)}; expected one of {', '.join(TRUNC_UNITS)}"
        )
    return word


def fn_date_trunc(unit: Any, value: Any) -> int | float | str:
    word = check_trunc_unit(unit)
    moment = to_datetime("date_trunc", value)
    if word == "second":
        moment = moment.replace(microsecond=0)
    elif word == "minute":
        moment = moment.replace(second=0, microsecond=0)
    elif word == "hour":
        moment = moment.replace(minute=0, second=0, microsecond=0)
    else:
        moment = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        if word == "week":  # ISO weeks start on Monday
            moment -= timedelta(days=moment.weekday())
        elif word == "month":
            moment = moment.replace(day=1)
        elif word == "year":
            moment = moment.replace(month=1, day=1)
    if value.__class__ is str:
        return _rfc3339(moment)
    return _epoch_of(moment)


PART_UNITS: dict[str, Callable[[datetime], int]] = {
    "year": lambda m: m.year,
    "month": lambda m: m.month,
    "day": lambda m: m.day,
    "hour": lambda m: m.hour,
    "minute": lambda m: m.minute,
    "second": lambda m: m.second,
    "millisecond": lambda m: m.microsecond // 1000,
    "dow": lambda m: (m.weekday() + 1) % 7,  # 0 = Sunday, like SQLite's %w
    "doy": lambda m: m.timetuple().tm_yday,
    "week": lambda m: m.isocalendar()[1],
}


def check_part_unit(unit: Any) -> str:
    word = unit.lower() if unit.__class__ is str else None
    if word not in PART_UNITS:
        raise EvalError(
            f"date_part(): unknown unit {describe(unit)}; expected one of {', '.join(PART_UNITS)}"
        )
    return word


def fn_date_part(unit: Any, value: Any) -> int:
    return PART_UNITS[check_part_unit(unit)](to_datetime("date_part", value))


FORMAT_DIRECTIVES = "aAbBdfGHIjmMpSuVwyYzZ%"
_DIRECTIVE = re.compile(r"%(.?)", re.DOTALL)


def check_format(fmt: Any) -> str:
    text = _text("format_time", fmt)
    for match in _DIRECTIVE.finditer(text):
        letter = match.group(1)
        if not letter or letter not in FORMAT_DIRECTIVES:
            raise EvalError(
                f"format_time(): unsupported directive {match.group(0)!r}; "
                f"supported: {' '.join('%' + c for c in FORMAT_DIRECTIVES)}"
            )
    return text


def fn_format_time(value: Any, fmt: Any) -> str:
    return to_datetime("format_time", value).strftime(check_format(fmt))


# ---------------------------------------------------------------- registry


@dataclass(frozen=True, slots=True)
class Builtin:
    """A built-in function: arity bounds and the implementation over non-NULL args."""

    name: str
    min_args: int
    max_args: int
    impl: Callable[..., Any]
    # index of an argument that is checked at compile time when it is a literal
    literal_check: tuple[int, Callable[[Any], Any]] | None = None
    # strict: any NULL argument gives NULL without calling impl
    strict: bool = True


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin("lower", 1, 1, fn_lower),
        Builtin("upper", 1, 1, fn_upper),
        Builtin("length", 1, 1, fn_length),
        Builtin("trim", 1, 2, fn_trim),
        Builtin("ltrim", 1, 2, fn_ltrim),
        Builtin("rtrim", 1, 2, fn_rtrim),
        Builtin("replace", 3, 3, fn_replace, strict=False),
        Builtin("substr", 2, 3, fn_substr),
        Builtin("substring", 2, 3, fn_substr),
        Builtin("abs", 1, 1, fn_abs),
        Builtin("round", 1, 2, fn_round),
        Builtin("floor", 1, 1, fn_floor),
        Builtin("ceil", 1, 1, fn_ceil),
        Builtin("ceiling", 1, 1, fn_ceil),
        Builtin("epoch", 1, 1, fn_epoch),
        Builtin("to_timestamp", 1, 1, fn_to_timestamp),
        Builtin("date_trunc", 2, 2, fn_date_trunc, (0, check_trunc_unit)),
        Builtin("date_part", 2, 2, fn_date_part, (0, check_part_unit)),
        Builtin("format_time", 2, 2, fn_format_time, (1, check_format)),
    )
}

# Handled by the compiler because they do not simply return NULL on a NULL argument.
SPECIAL_FUNCTIONS = frozenset({"coalesce", "ifnull", "nullif"})

AGGREGATES = frozenset({"count", "sum", "avg", "min", "max", "total", "group_concat", "string_agg"})

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESULT_TYPES = NUM_TYPES | {str, type(None), dict, list}


def check_user_functions(
    functions: Mapping[str, Callable[..., Any]] | None,
) -> dict[str, Callable[..., Any]]:
    """Validate a user-function mapping; returns it keyed by lower-case name."""
    result: dict[str, Callable[..., Any]] = {}
    for name, fn in (functions or {}).items():
        key = name.lower()
        if not _NAME.fullmatch(name):
            raise ValueError(f"function name {name!r} is not a plain SQL identifier")
        if key in BUILTINS or key in SPECIAL_FUNCTIONS or key in AGGREGATES:
            raise ValueError(f"function {name!r} clashes with the built-in SQL function {key}()")
        if key in result:
            raise ValueError(f"function {name!r} is defined twice (names are case-insensitive)")
        if not callable(fn):
            raise ValueError(f"function {name!r} is not callable")
        result[key] = fn
    return result


def call_user(name: str, fn: Callable[..., Any], args: list[Any]) -> Any:
    """Call a user function; any exception or unsupported result becomes EvalError."""
    try:
        result = fn(*args)
    except Exception as exc:
        raise EvalError(f"function {name}() failed: {type(exc).__name__}: {exc}") from exc
    if result.__class__ not in _RESULT_TYPES:
        raise EvalError(
            f"function {name}() returned a {type(result).__name__}; "
            "expected None, bool, int, float, str, dict or list"
        )
    return result


def load_functions(spec: Mapping[str, str]) -> dict[str, Callable[..., Any]]:
    """Import user functions from ``{"name": "module:callable"}`` (config ``[functions]``).

    Raises ValueError naming the bad entry.
    """
    loaded: dict[str, Callable[..., Any]] = {}
    for name, target in spec.items():
        where = f"functions.{name} = {target!r}"
        module_name, sep, attr_path = str(target).partition(":")
        if not sep or not module_name or not attr_path:
            raise ValueError(f"{where}: expected 'module:callable'")
        try:
            obj: Any = importlib.import_module(module_name)
        except Exception as exc:
            raise ValueError(
                f"{where}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
            ) from exc
        for part in attr_path.split("."):
            # the path comes from the operator's config, not from SQL text
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise ValueError(
                    f"{where}: {module_name!r} has no attribute {attr_path!r}"
                ) from None
        if not callable(obj):
            raise ValueError(f"{where}: {attr_path!r} is not callable")
        loaded[name] = obj
    try:
        check_user_functions(loaded)
    except ValueError as exc:
        raise ValueError(f"functions: {exc}") from None
    return loaded
