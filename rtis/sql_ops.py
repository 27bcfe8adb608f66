"""Closure builders and value operators for compiled SQL expressions.

This module owns the per-event code: the small closures the expression compiler
(:mod:`rtis.sql_expr`) wires together, and the operators they apply to values
(SQLite's integer division, remainder, 64-bit overflow to REAL, LIKE patterns).
Every closure here is built once at compile time and specialises on what is
known then (a plain field, a literal operand). It must not do I/O, inspect
syntax trees, or look up Python attributes by names taken from SQL text.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rtis.sql_values import (
    I64_MAX,
    I64_MIN,
    NUM_TYPES,
    EvalError,
    Row,
    clamp_i64,
    describe,
    truth,
)

Fn = Callable[[Row], Any]
Pred = Callable[[Row], bool]

NOCONST: Any = object()


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled expression and what is known about it at compile time."""

    fn: Fn
    sql: str
    const: Any = NOCONST  # the value, when the expression is constant
    field: str | None = None  # the top-level key, when it is a plain field
    boolean: bool = False  # the result is always True, False or None


# ---------------------------------------------------------------- operators on values


def num_result(value: int) -> int | float:
    return value if I64_MIN <= value <= I64_MAX else float(value)


def add(a: Any, b: Any) -> Any:
    r = a + b
    return num_result(r) if r.__class__ is int else r


def sub(a: Any, b: Any) -> Any:
    r = a - b
    return num_result(r) if r.__class__ is int else r


def mul(a: Any, b: Any) -> Any:
    r = a * b
    return num_result(r) if r.__class__ is int else r


def div(a: Any, b: Any) -> Any:
    if b == 0:
        return None  # SQLite: division by zero is NULL
    if a.__class__ is float or b.__class__ is float:
        return a / b
    q = a // b
    if q < 0 and q * b != a:  # truncate toward zero like C, not floor like Python
        q += 1
    return num_result(q)


def mod(a: Any, b: Any) -> Any:
    # SQLite converts both operands to INTEGER, then the result is REAL if either was
    ia = clamp_i64(a) if a.__class__ is float else int(a)
    ib = clamp_i64(b) if b.__class__ is float else int(b)
    if ib == 0:
        return None
    r = abs(ia) % abs(ib)
    if ia < 0:
        r = -r
    return float(r) if a.__class__ is float or b.__class__ is float else r


def comparable(a: Any, b: Any) -> bool:
    ca = a.__class__
    cb = b.__class__
    return (ca is str and cb is str) or (ca in NUM_TYPES and cb in NUM_TYPES)


def same_kind(value: Any, const: Any) -> bool:
    return (value.__class__ is str) is (const.__class__ is str)


@lru_cache(maxsize=512)
def like_regex(pattern: str, escape: str | None) -> re.Pattern[str]:
    """LIKE pattern -> regex: % any run, _ one character, ASCII case-insensitive."""
    parts: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if escape is not None and ch == escape:
            nxt = next(chars, None)
            if nxt is None:  # SQLite: a trailing escape character matches nothing
                return re.compile(r"(?!)")
            parts.append(re.escape(nxt))
        elif ch == "%":
            parts.append(".*")
        elif ch == "_":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.ASCII | re.IGNORECASE | re.DOTALL)


# ---------------------------------------------------------------- closure builders


def compare_with_constant(
    left: Compiled, op: Callable[[Any, Any], bool], c: Any, none: Any, sql: str
) -> Fn:
    """Specialised comparison of an expression with a literal: the hot path of WHERE."""
    c_is_text = c.__class__ is str
    if c.__class__ not in NUM_TYPES and not c_is_text:
        raise EvalError(f"cannot compare with {describe(c)} in {sql}")

    def mismatch(v: Any) -> EvalError:
        return EvalError(f"cannot compare {describe(v)} with {describe(c)} in {sql}")

    key = left.field
    if key is not None:
        if c_is_text:

            def field_text(r: Row) -> Any:
                v = r.get(key)
                if v.__class__ is str:
                    return op(v, c)
                if v is None:
                    return none
                raise mismatch(v)

            return field_text

        def field_num(r: Row) -> Any:
            v = r.get(key)
            if v.__class__ in NUM_TYPES:
                return op(v, c)
            if v is None:
                return none
            raise mismatch(v)

        return field_num
    lf = left.fn

    def expr_const(r: Row) -> Any:
        v = lf(r)
        if v is None:
            return none
        if (v.__class__ is str) is c_is_text and (c_is_text or v.__class__ in NUM_TYPES):
            return op(v, c)
        raise mismatch(v)

    return expr_const


def checked_compare(op: Callable[[Any, Any], bool], a: Any, b: Any, sql: str) -> bool:
    if comparable(a, b):
        return op(a, b)
    raise EvalError(f"cannot compare {describe(a)} with {describe(b)} in {sql}")


def in_list_fn(vf: Fn, items: list[Compiled], sql: str) -> Fn:
    consts = [c.const for c in items]
    if items and all(c is not NOCONST for c in consts):
        values = [c for c in consts if c is not None]
        has_null = len(values) < len(consts)
        texts = {v.__class__ is str for v in values}
        if len(texts) <= 1 and all(v.__class__ in NUM_TYPES or v.__class__ is str for v in values):
            members = frozenset(values)
            want_text = texts == {True}
            miss: bool | None = None if has_null else False

            def in_set(r: Row) -> bool | None:
                v = vf(r)
                if v is None:
                    return None
                if not values:
                    return miss
                if (v.__class__ is str) is want_text and (want_text or v.__class__ in NUM_TYPES):
                    return True if v in members else miss
                raise EvalError(f"cannot compare {describe(v)} with {describe(values[0])} in {sql}")

            return in_set
    fns = [c.fn for c in items]

    def in_list(r: Row) -> bool | None:
        v = vf(r)
        if v is None:
            return None if fns else False
        saw_null = False
        for f in fns:
            w = f(r)
            if w is None:
                saw_null = True
            elif checked_compare(operator.eq, v, w, sql):
                return True
        return None if saw_null else False

    return in_list


def negate(fn: Fn) -> Fn:
    def negated(r: Row) -> bool | None:
        v = fn(r)
        return None if v is None else not v

    return negated


def as_condition(value: Any, sql: str) -> bool | None:
    """A value used as a condition, naming the expression when it is refused."""
    if value is None or value.__class__ is bool:
        return value
    try:
        return truth(value)
    except EvalError as exc:
        raise EvalError(f"{exc} in {sql}") from None


def lenient_call(impl: Callable[..., Any], fns: list[Fn], sql: str) -> Fn:
    """Call a built-in that decides for itself what a NULL argument means."""

    def call(r: Row) -> Any:
        args = [f(r) for f in fns]
        try:
            return impl(*args)
        except EvalError as exc:
            raise EvalError(f"{exc} in {sql}") from None

    return call


def strict_call(impl: Callable[..., Any], fns: list[Fn], sql: str) -> Fn:
    """Call a built-in; any NULL argument makes the result NULL."""

    def fail(exc: EvalError) -> EvalError:
        return EvalError(f"{exc} in {sql}")

    if len(fns) == 1:
        (f0,) = fns

        def call1(r: Row) -> Any:
            a = f0(r)
            if a is None:
                return None
            try:
                return impl(a)
            except EvalError as exc:
                raise fail(exc) from None

        return call1

    def call(r: Row) -> Any:
        args = []
        for f in fns:
            v = f(r)
            if v is None:
                return None
            args.append(v)
        try:
            return impl(*args)
        except EvalError as exc:
            raise fail(exc) from None

    return call
