"""Attack registry: ``--method NAME`` resolves here.

An attack is a function ``fn(observation, budget, seed, options) -> Reconstruction`` registered with its options
class (a frozen :class:`~adversary.options.AttackOptions` dataclass whose defaults are the attack's defaults)::

    @dataclass(frozen=True)
    class MineOptions(AttackOptions):
        lr: float = 0.1

    @register("mine", MineOptions)
    def mine(observation: Observation, budget: Budget, seed: int, options: MineOptions) -> Reconstruction: ...

The registry calls attacks by keyword (``budget=``, ``seed=``, ``options=``), so they must use those names.
It then fills ``Reconstruction.certified`` with the reproduction test (:func:`adversary.distance.reproduces`, one
forward/backward) unless the attack was registered with ``certifies=True`` (it runs that test itself: span, best).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

from adversary.case import Observation, Reconstruction
from adversary.distance import reproduces
from adversary.options import AttackOptions, Budget, NoOptions, options_from
from fedsim.core.errors import UsageError

AttackFn = Callable[..., Reconstruction]  # fn(observation, budget, seed, options)
BUILTIN = ("adversary.attacks", "adversary.span", "adversary.lamp", "adversary.best")


@dataclass(frozen=True)
class RegisteredAttack:
    """An attack function with its options class; calling it fills in the default options."""

    name: str
    fn: AttackFn
    options_type: type[AttackOptions]
    certifies: bool = False  # the attack fills Reconstruction.certified itself

    def options(self, overrides: Mapping[str, Any] | AttackOptions | None = None) -> AttackOptions:
        """Typed options from a plain dict of overrides (or checked, if already typed)."""
        if isinstance(overrides, AttackOptions):
            if not isinstance(overrides, self.options_type):
                raise UsageError(f"attack {self.name!r} takes {self.options_type.__name__}, "
                                 f"got {type(overrides).__name__}")
            return overrides
        return options_from(self.options_type, overrides)

    def __call__(self, observation: Observation, budget: Budget, seed: int = 0,
                 options: Mapping[str, Any] | AttackOptions | None = None) -> Reconstruction:
        if not isinstance(budget, Budget):
            raise UsageError(f"attack {self.name!r} needs a Budget, got {budget!r}")
        rec = self.fn(observation, budget=budget, seed=seed, options=self.options(options))
        if not self.certifies and any(rec.token_ids):
            passed, distance = reproduces(observation, rec.token_ids, rec.labels)
            rec.certified = [passed] * len(rec.token_ids)
            rec.info.setdefault("reproduction_distance", distance)
        return rec


ATTACKS: dict[str, RegisteredAttack] = {}


def register(name: str, options: type[AttackOptions] = NoOptions, *,
             certifies: bool = False) -> Callable[[AttackFn], AttackFn]:
    """Register ``fn`` under ``name`` with its options class; the function itself is returned unchanged.
    ``certifies``: the attack runs the reproduction test itself (else the registry does, after it returns)."""
    def deco(fn: AttackFn) -> AttackFn:
        ATTACKS[name] = RegisteredAttack(name, fn, options, certifies)
        return fn
    return deco


def _load_builtin() -> None:
    # Importing the attack modules registers them; kept lazy so importing `adversary` stays cheap.
    for module in BUILTIN:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def available() -> list[str]:
    """Names of every registered attack (built-ins loaded first)."""
    _load_builtin()
    return sorted(ATTACKS)


def get_attack(name: str) -> RegisteredAttack:
    """The registered attack ``name``; an unknown name is a usage error listing the known ones."""
    _load_builtin()
    if name not in ATTACKS:
        raise UsageError(f"unknown attack method {name!r}; accepted: {', '.join(sorted(ATTACKS)) or 'none registered'}")
    return ATTACKS[name]


def attack_options(name: str, overrides: Mapping[str, Any] | AttackOptions | None = None) -> AttackOptions:
    """Attack ``name``'s typed options from a plain dict of keyword overrides (what callers such as a job's
    ``attack_options`` hold); an unknown key or a bad value raises :class:`UsageError` naming it."""
    return get_attack(name).options(overrides)


def run_attack(name: str, observation: Observation, budget: Budget, seed: int = 0,
               options: Mapping[str, Any] | AttackOptions | None = None) -> Reconstruction:
    """Run attack ``name``; ``options`` typed, a dict of overrides, or None for the defaults."""
    return get_attack(name)(observation, budget, seed, options)
