"""Declarative hyper-parameter specs: each method states the type and range of every
hyper-parameter beside its default, and ``Method.__init__`` checks them all before
any library (peft, timm, torch) sees a value."""

from __future__ import annotations

import difflib
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pefts.errors import PeftsError

# the smallest normal float: below it a number has lost precision (1e-320 keeps 3 digits)
# and 1 / x overflows, so every value a user types must be 0 or at least this in size
SMALLEST_NORMAL = sys.float_info.min


def number_problem(value: float) -> str | None:
    """Why a number cannot be computed with (nan, inf, a subnormal that underflows), or None."""
    if not math.isfinite(value):
        return "is not a finite number"
    if value != 0 and abs(value) < SMALLEST_NORMAL:
        return f"underflows (0 < |x| < {SMALLEST_NORMAL:.3g}, the smallest normal float)"
    return None


def closest(name: Any, known: Iterable[Any]) -> str:
    """" (did you mean 'adapter'?)" for the known name nearest ``name``, or ""."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], 1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_known(what: str, name: Any, known: Iterable[Any], where: str = "") -> None:
    """Refuse ``name`` unless known: "unknown method 'adaptor' in methods (did you mean
    'adapter'?); choose from ...", ``what`` saying what it is, ``where`` the key it was
    given in."""
    known = sorted(map(str, known))
    if str(name) not in known:
        place = f" in {where}" if where else ""
        raise PeftsError(f"unknown {what} {name!r}{place}{closest(name, known)}; choose from "
                         f"{', '.join(known) or '(none)'}")


@dataclass(frozen=True)
class Param:
    """One value a user types: ``kind`` is int, float, bool, str, list, dict or object
    (one of ``either``); numbers lie in [low, high] (an end is open when
    ``low_open``/``high_open``); a str is one of ``choices`` (any non-empty text when
    there are none); a list has ``min_items`` to ``max_items`` items, each meeting
    ``items``. Numbers must be finite and not underflow; None only where ``optional``.
    Hyper-parameters, training options, image options and (translated from the JSON
    schema, ``pefts.study.config.param_of``) config keys are all described by it."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    items: Param | None = None
    optional: bool = False
    min_items: int = 1
    max_items: int | None = None
    either: tuple[Param, ...] = ()

    def describe(self) -> str:
        text = self._describe()
        return f"{text} (or null)" if self.optional else text

    def _describe(self) -> str:
        if self.either:
            return " or ".join(p.describe() for p in self.either)
        if self.kind is dict:
            return "a mapping of names to values"
        if self.kind is list:
            if self.min_items == self.max_items:
                size = f"a list of {self.min_items}"
            else:
                size = "a non-empty list" if self.min_items else "a list"
            return f"{size}, each item {self.items.describe()}" if self.items else size
        if self.kind is str and not self.choices:
            return "a non-empty text"
        if self.kind is str:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind is bool:
            return "true or false"
        kind = f"a finite {self.kind.__name__}"
        if self.low is not None and self.high is not None:
            lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {lo}{self.low:g}, {self.high:g}{hi}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {self.high:g}"
        return kind

    def check(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.either:
            return any(p.check(value) for p in self.either)
        if self.kind is dict:
            return isinstance(value, dict)
        if self.kind is list:
            return (isinstance(value, list | tuple) and len(value) >= self.min_items
                    and (self.max_items is None or len(value) <= self.max_items)
                    and (self.items is None or all(self.items.check(v) for v in value)))
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is str:
            return isinstance(value, str) and (value in self.choices if self.choices else value != "")
        # bool is an int in Python, never a number here; ints are fine where floats are
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if number_problem(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None
                    and (value > self.high or (self.high_open and value == self.high)))


def Int(low: float | None = None, high: float | None = None) -> Param:  # noqa: N802
    return Param(int, low, high)


def Float(low: float | None = None, high: float | None = None, low_open: bool = False,  # noqa: N802
          high_open: bool = False) -> Param:
    return Param(float, low, high, low_open, high_open)


def Choice(*choices: str) -> Param:  # noqa: N802
    return Param(str, choices=choices)


def Text(optional: bool = False) -> Param:  # noqa: N802
    """Free text such as a model name or a path."""
    return Param(str, optional=optional)


def IntList(low: float | None = None, length: int | None = None) -> Param:  # noqa: N802
    return Param(list, items=Int(low), min_items=length or 1, max_items=length)


def Either(*params: Param, optional: bool = False) -> Param:  # noqa: N802
    return Param(object, either=params, optional=optional)


BOOL = Param(bool)


def check_values(what: str, specs: dict[str, Param], values: dict[str, Any],
                 known_only: bool = False) -> None:
    """One-line error naming ``what`` (e.g. "hyper-parameter rank of method 'lora'" is
    ``what`` + name) and the range the value must lie in; with ``known_only`` a name
    without a spec is refused too, with the closest one that has."""
    if known_only:
        for name in values:
            if name not in specs:
                raise PeftsError(f"unknown {what.format(name=name)}{closest(name, specs)}; "
                                 f"known: {', '.join(sorted(specs)) or 'none'}")
    for name, value in values.items():
        spec = specs[name]
        if not spec.check(value):
            raise PeftsError(f"{what.format(name=name)} must be {spec.describe()}, got {value!r}")


def check_hparams(method: str, specs: dict[str, Param], values: dict[str, Any]) -> None:
    check_values(f"hyper-parameter {{name}} of method {method!r}", specs, values, known_only=True)
