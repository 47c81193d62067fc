"""Attack registry: ``--method NAME`` resolves here. An attack is ``fn(observation, **options) -> Reconstruction``."""

from __future__ import annotations

from typing import Callable

from adversary.case import Observation, Reconstruction
from fedsim.core.errors import UsageError

# Every attack is called as fn(observation, *, iterations=..., seed=..., **method_options).
Attack = Callable[..., Reconstruction]
ATTACKS: dict[str, Attack] = {}


def register(name: str) -> Callable[[Attack], Attack]:
    def deco(fn: Attack) -> Attack:
        ATTACKS[name] = fn
        return fn
    return deco


def _load_builtin() -> None:
    # Importing the attack modules registers them; kept lazy so importing `adversary` stays cheap.
    import importlib

    for module in ("adversary.attacks", "adversary.span", "adversary.lamp", "adversary.best"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def available() -> list[str]:
    """Names of every registered attack (built-ins loaded first)."""
    _load_builtin()
    return sorted(ATTACKS)


def get_attack(name: str) -> Attack:
    _load_builtin()
    if name not in ATTACKS:
        raise UsageError(f"unknown attack method {name!r}; accepted: {', '.join(sorted(ATTACKS)) or 'none registered'}")
    return ATTACKS[name]


def run_attack(name: str, observation: Observation, **options) -> Reconstruction:
    return get_attack(name)(observation, **options)
