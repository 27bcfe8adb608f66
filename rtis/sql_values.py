"""Errors and value rules shared by the SQL compiler and its built-in functions.

This module owns the runtime value model of rtis SQL: which Python values are
NULL, numbers and text, how numbers become text, how a value is used as a
condition, and how CAST converts. It follows SQLite's answers wherever the types
make sense and raises :class:`EvalError` where SQLite would silently coerce
nonsense ('abc' + 1). It must stay pure: no I/O, no imports from the rest of
rtis except ``rtis.errors``, and never any attribute access on user-named things.
"""

from __future__ import annotations

import math
import re
from typing import Any

from rtis.errors import RtisError

Row = dict[str, Any]

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1

# bool is a subclass of int, but the exact-class checks below are faster than
# isinstance() and JSON decoders produce exactly these classes.
NUM_TYPES = frozenset({int, float, bool})


class SqlError(RtisError, ValueError):
    """A query's text is not valid rtis SQL; names the query, line and column (1-based)."""

    status = 400
    code = "bad_sql"

    def __init__(self, query: str, reason: str, line: int = 1, column: int = 1) -> None:
        super().__init__(
            f"query {query!r}, line {line}, column {column}: {reason}",
            details=[{"query": query, "line": line, "column": column, "reason": reason}],
        )
        self.query = query
        self.reason = reason
        self.line = line
        self.column = column


class EvalError(Exception):
    """A compiled query could not evaluate one event (bad type, failing user function).

    The message is the reason, e.g. "cannot add text 'abc' and number 1 in amount + 1".
    """


def describe(value: Any) -> str:
    """A short description of a value for error messages: type and (truncated) value."""
    if value is None:
        return "NULL"
    cls = value.__class__
    if cls is bool:
        return "boolean true" if value else "boolean false"
    if cls is int or cls is float:
        return f"number {value!r}"
    if cls is str:
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"text {text!r}"
    if cls is dict:
        return "object"
    if cls is list:
        return "array"
    return f"unsupported value of type {cls.__name__}"


def fit_int(value: int) -> int | float:
    """SQLite turns integer results outside 64 bits into REAL; so do we."""
    if I64_MIN <= value <= I64_MAX:
        return value
    return float(value)


def clamp_i64(value: float) -> int:
    """float -> INTEGER the way SQLite does it: truncate toward zero, saturate."""
    if value != value:  # NaN
        return 0
    if value >= 9.223372036854775807e18:
        return I64_MAX
    if value <= -9.223372036854775808e18:
        return I64_MIN
    return int(value)


def float_text(value: float) -> str:
    """Render a REAL like SQLite's CAST(x AS TEXT): 15 significant digits, always a '.'."""
    if value == 0:
        return "0.0"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    if value != value:
        return "NaN"
    text = f"{value:.15g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        if "." not in mantissa:
            mantissa += ".0"
        return f"{mantissa}e{exponent}"
    if "." not in text:
        text += ".0"
    return text


def to_text(value: Any) -> str:
    """Text form of a non-NULL scalar, as SQLite would write it (TRUE is '1')."""
    cls = value.__class__
    if cls is str:
        return value  # type: ignore[no-any-return]
    if cls is bool:
        return "1" if value else "0"
    if cls is int:
        return str(value)
    if cls is float:
        return float_text(value)
    raise EvalError(f"cannot use {describe(value)} as text")


def truth(value: Any) -> bool | None:
    """A value used as a condition: NULL is unknown, numbers are true when non-zero.

    Text, objects and arrays are refused: SQLite would read 'yes' as false.
    """
    if value is None:
        return None
    cls = value.__class__
    if cls is bool:
        return value  # type: ignore[no-any-return]
    if cls is int or cls is float:
        return value != 0  # type: ignore[no-any-return]
    raise EvalError(f"cannot use {describe(value)} as a condition")


_SPACE = " \t\n\r\f\v"
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_REAL_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def cast_integer(value: Any) -> int:
    cls = value.__class__
    if cls is int:
        return value  # type: ignore[no-any-return]
    if cls is bool:
        return int(value)
    if cls is float:
        return clamp_i64(value)
    if cls is str:
        text = value.strip(_SPACE)
        if _INT_TEXT.fullmatch(text):
            number = int(text)
            return max(I64_MIN, min(I64_MAX, number))
        raise EvalError(
            f"cannot cast {describe(value)} to INTEGER (only whole-number text converts; "
            "use CAST(CAST(x AS REAL) AS INTEGER) for decimals)"
        )
    raise EvalError(f"cannot cast {describe(value)} to INTEGER")


def cast_real(value: Any) -> float:
    cls = value.__class__
    if cls is float:
        return value  # type: ignore[no-any-return]
    if cls is int or cls is bool:
        return float(value)
    if cls is str:
        text = value.strip(_SPACE)
        if _REAL_TEXT.fullmatch(text):
            return float(text)
        raise EvalError(f"cannot cast {describe(value)} to REAL")
    raise EvalError(f"cannot cast {describe(value)} to REAL")


def cast_numeric(value: Any) -> int | float:
    if value.__class__ is str:
        text = value.strip(_SPACE)
        if _INT_TEXT.fullmatch(text):
            return fit_int(int(text))
        if _REAL_TEXT.fullmatch(text):
            return float(text)
        raise EvalError(f"cannot cast {describe(value)} to NUMERIC")
    if value.__class__ is bool:
        return int(value)
    if isinstance(value, int | float):
        return value
    raise EvalError(f"cannot cast {describe(value)} to NUMERIC")


_TRUE_WORDS = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE_WORDS = frozenset({"false", "f", "no", "n", "off", "0"})


def cast_boolean(value: Any) -> bool:
    cls = value.__class__
    if cls is bool:
        return value  # type: ignore[no-any-return]
    if cls is int or cls is float:
        return value != 0  # type: ignore[no-any-return]
    if cls is str:
        word = value.strip(_SPACE).lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise EvalError(f"cannot cast {describe(value)} to BOOLEAN")


def cast_text(value: Any) -> str:
    try:
        return to_text(value)
    except EvalError:
        raise EvalError(f"cannot cast {describe(value)} to TEXT") from None
