"""The attack contract's two inputs besides the observation: the budget, and each attack's typed options.

Every attack is called the same way, ``attack(observation, budget, seed, options) -> Reconstruction``. The
:class:`Budget` says how much work it may do; the options are a frozen dataclass the attack declares (a subclass
of :class:`AttackOptions`) whose defaults are the attack's defaults. Callers that hold plain dicts (a job's
``attack_options``, a JSON file) turn them into options with :func:`options_from`, which names what it rejects.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fedsim.core.errors import UsageError


@dataclass(frozen=True)
class Budget:
    """How much work an attack may do: ``iterations`` in the attack's own unit (optimisation steps for the
    engine's attacks, linker descents for ``span``) and optionally ``seconds`` of wall clock, after which an
    attack that can stop early returns what it has."""

    iterations: int
    seconds: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 0:
            raise UsageError(f"budget iterations must be a whole number >= 0, got {self.iterations!r}")
        if self.seconds is not None and not (isinstance(self.seconds, (int, float)) and self.seconds > 0
                                             and not isinstance(self.seconds, bool)):
            raise UsageError(f"budget seconds must be a positive number or None, got {self.seconds!r}")

    def deadline(self, start: float) -> float:
        """The ``time.perf_counter()`` value after which to stop (infinity without ``seconds``)."""
        return math.inf if self.seconds is None else start + float(self.seconds)

    def remaining(self, deadline: float, iterations: int | None = None) -> "Budget":
        """This budget with the seconds left before ``deadline`` (and optionally other iterations)."""
        seconds = None if math.isinf(deadline) else max(deadline - time.perf_counter(), 1e-9)
        return Budget(self.iterations if iterations is None else iterations, seconds)


def choice(default: Any, *accepted: Any) -> Any:
    """A dataclass field whose value must be one of ``accepted`` (or, for a tuple field, made of them)."""
    return dataclasses.field(default=default, metadata={"accepted": tuple(accepted)})


@dataclass(frozen=True)
class AttackOptions:
    """Base of every attack's options: fields are type-checked (ints, floats, bools, strings, tuples, None where
    the annotation allows it) and ``choice`` fields checked against their accepted values on construction, so a
    bad option fails with a :class:`UsageError` before any work is done."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _coerce(getattr(self, f.name), _hint(type(self), f), f"{_owner(self)} option {f.name}")
            accepted = f.metadata.get("accepted")
            if accepted:
                values = value if isinstance(value, tuple) else (value,)
                bad = [v for v in values if v not in accepted]
                if bad or (isinstance(value, tuple) and not value):
                    raise UsageError(f"bad {_owner(self)} option {f.name}={value!r}; accepted: "
                                     f"{', '.join(map(str, accepted))}")
            object.__setattr__(self, f.name, value)

    @classmethod
    def normalise(cls, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """Rewrite a plain dict before it is checked (a subclass may accept a shorthand)."""
        return dict(overrides)


@dataclass(frozen=True)
class NoOptions(AttackOptions):
    """For an attack that takes no options."""


Options = TypeVar("Options", bound=AttackOptions)


def options_from(cls: type[Options], overrides: Mapping[str, Any] | None = None) -> Options:
    """``cls`` with the defaults replaced by ``overrides`` (a plain dict of keyword overrides). An unknown key or
    a value of the wrong type raises :class:`UsageError` naming it and what is accepted."""
    overrides = cls.normalise(overrides or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise UsageError(f"unknown {_owner(cls)} option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"accepted: {', '.join(names) or 'none'}")
    return cls(**overrides)


def _owner(cls: object) -> str:
    """``TagOptions`` -> ``tag``: how messages name the attack."""
    name = cls.__name__ if isinstance(cls, type) else type(cls).__name__
    return name.removesuffix("Options").lower() or "attack"


def _hint(cls: type, f: dataclasses.Field) -> Any:
    """The field's annotation as an object. Only the outer annotation is evaluated (typing.get_type_hints would
    also resolve forward references nested in aliases such as the engine's ``Hook``, which checking needs not)."""
    if not isinstance(f.type, str):
        return f.type
    for klass in cls.__mro__:  # the module that declared the field
        if f.name in getattr(klass, "__annotations__", {}):
            return eval(f.type, vars(sys.modules[klass.__module__]))  # noqa: S307 - our own annotation strings
    return Any


def _coerce(value: Any, hint: Any, what: str) -> Any:
    """``value`` checked against ``hint`` (lists become tuples, ints become floats where a float is asked)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, what)
            except UsageError as exc:
                errors.append(str(exc))
        raise UsageError(errors[0] if len(errors) == 1 else f"bad {what}={value!r}; accepted: {hint}")
    if origin is tuple or hint is tuple:
        if not isinstance(value, (tuple, list)):
            raise UsageError(f"bad {what}={value!r}; accepted: a list or tuple")
        item = args[0] if args and (len(args) == 2 and args[1] is Ellipsis) else Any
        return tuple(_coerce(v, item, what) for v in value)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise UsageError(f"bad {what}={value!r}; accepted: a mapping")
        return value
    if origin is Callable or hint is Callable:
        if not callable(value):
            raise UsageError(f"bad {what}={value!r}; accepted: a callable")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise UsageError(f"bad {what}={value!r}; accepted: true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"bad {what}={value!r}; accepted: a whole number")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"bad {what}={value!r}; accepted: a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UsageError(f"bad {what}={value!r}; accepted: a string")
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise UsageError(f"bad {what}={value!r}; accepted: {hint.__name__}")
    return value
