"""Declarative hyper-parameter specs: each method states the type and range of every
hyper-parameter beside its default, and ``Method.__init__`` checks them all before
any library (peft, timm, torch) sees a value."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pefts.errors import PeftsError


@dataclass(frozen=True)
class Param:
    """One hyper-parameter: ``kind`` is int, float, bool, str or list; numbers lie in
    [low, high] (an end is open when ``low_open``/``high_open``); a str is one of
    ``choices`` (any non-empty text when there are none); a list is non-empty and each
    item meets ``items``. Numbers must be finite; None only where ``optional``."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    items: Param | None = None
    optional: bool = False

    def describe(self) -> str:
        text = self._describe()
        return f"{text} (or null)" if self.optional else text

    def _describe(self) -> str:
        if self.kind is list:
            return f"a non-empty list, each item {self.items.describe()}"
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
        if self.kind is list:
            return (isinstance(value, list | tuple) and len(value) > 0
                    and all(self.items.check(v) for v in value))
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is str:
            return isinstance(value, str) and (value in self.choices if self.choices else value != "")
        # bool is an int in Python, never a number here; ints are fine where floats are
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
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


def IntList(low: float | None = None) -> Param:  # noqa: N802
    return Param(list, items=Int(low))


BOOL = Param(bool)


def check_values(what: str, specs: dict[str, Param], values: dict[str, Any]) -> None:
    """One-line error naming ``what`` (e.g. "hyper-parameter rank of method 'lora'" is
    ``what`` + name) and the range the value must lie in."""
    for name, value in values.items():
        spec = specs[name]
        if not spec.check(value):
            raise PeftsError(f"{what.format(name=name)} must be {spec.describe()}, got {value!r}")


def check_hparams(method: str, specs: dict[str, Param], values: dict[str, Any]) -> None:
    check_values(f"hyper-parameter {{name}} of method {method!r}", specs, values)
