"""Defense specs: the strings users type (``clip:c=1``, ``noise:sigma=0.01``) and the values they stand for.

A defense setting is an ordered list of transforms. It comes as repeated ``--defense`` options or as one string
joined with ``+`` (``clip:c=1+noise:sigma=0.01``), so that ``fedleak sweep`` can name a composed setting per run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Iterable, Union

from fedsim.core.errors import UsageError

ACCEPTED = ("none, noise:sigma=S (S >= 0), clip:c=C (C > 0), dp:sigma=S,c=C (S >= 0, C > 0), "
            "prune:p=P (0 <= P < 1), budgets calibrated to epsilon: dp:epsilon=E,c=C[,delta=D] and "
            "clip:c=C+noise:epsilon=E[,delta=D] (E > 0, 0 < D < 1); compose in order with repeated --defense or '+'")


@dataclass(frozen=True)
class Noise:
    """Gaussian noise N(0, sigma^2) on every coordinate of the update."""
    sigma: float

    def __str__(self) -> str:
        return f"noise:sigma={self.sigma:g}"


@dataclass(frozen=True)
class Clip:
    """Scale the whole update down to L2 norm ``c`` when it is longer; shorter updates pass unchanged."""
    c: float

    def __str__(self) -> str:
        return f"clip:c={self.c:g}"


@dataclass(frozen=True)
class DpSgd:
    """DP-SGD: per-example gradients clipped to ``c``, summed, noise N(0, (sigma*c)^2), divided by the batch size."""
    sigma: float
    c: float

    def __str__(self) -> str:
        return f"dp:sigma={self.sigma:g},c={self.c:g}"


@dataclass(frozen=True)
class Prune:
    """Zero the fraction ``p`` of smallest-magnitude entries, ranked over the whole update (DLG's defense)."""
    p: float

    def __str__(self) -> str:
        return f"prune:p={self.p:g}"


@dataclass(frozen=True)
class DpSgdBudget:
    """DP-SGD with its noise multiplier still to be calibrated so that the run ends at (epsilon, delta), example-level.

    A budget, not a transform: ``defenses.budget.resolve_budget`` turns it into ``DpSgd`` once the run's rounds,
    steps, batch and shard sizes are known. ``delta`` None: the run's default (1e-5)."""
    epsilon: float
    c: float
    delta: float | None = None

    def __str__(self) -> str:
        return f"dp:epsilon={self.epsilon:g},c={self.c:g}" + (f",delta={self.delta:g}" if self.delta else "")


@dataclass(frozen=True)
class NoiseBudget:
    """Gaussian noise calibrated so that the run ends at (epsilon, delta), update-level: the clip before it bounds
    the update, and ``resolve_budget`` turns this into ``Noise(sigma)``."""
    epsilon: float
    delta: float | None = None

    def __str__(self) -> str:
        return f"noise:epsilon={self.epsilon:g}" + (f",delta={self.delta:g}" if self.delta else "")


Defense = Union[Noise, Clip, DpSgd, Prune, DpSgdBudget, NoiseBudget]
BUDGETS = (DpSgdBudget, NoiseBudget)
SpecsLike = Union[str, Defense, Iterable[Union[str, Defense]], None]

_JOIN = re.compile(r"\+(?=\s*[A-Za-z])")  # '+' before a name joins specs; '1e+2' stays a number
# kind -> its forms: (required keys in order, optional keys, class); the first form whose required keys are all
# given wins (``epsilon`` picks the budget form). key -> (check, what the check demands)
_KINDS: dict[str, tuple[tuple[tuple[str, ...], tuple[str, ...], type], ...]] = {
    "noise": ((("epsilon",), ("delta",), NoiseBudget), (("sigma",), (), Noise)),
    "clip": ((("c",), (), Clip),),
    "dp": ((("epsilon", "c"), ("delta",), DpSgdBudget), (("sigma", "c"), (), DpSgd)),
    "prune": ((("p",), (), Prune),),
}
_CLASSES = tuple(cls for forms in _KINDS.values() for _, _, cls in forms)
_CHECKS = {
    "sigma": (lambda v: v >= 0, "sigma must be >= 0"),
    "c": (lambda v: v > 0, "c must be > 0"),
    "p": (lambda v: 0 <= v < 1, "p must be in [0, 1)"),
    "epsilon": (lambda v: v > 0, "epsilon must be > 0"),
    "delta": (lambda v: 0 < v < 1, "delta must be in (0, 1)"),
}


def parse_defense(spec: str) -> list[Defense]:
    """One ``--defense`` value (possibly ``+``-joined) as a list of transforms; ``none`` gives []."""
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"empty defense spec {spec!r}; accepted: {ACCEPTED}")
    return [d for part in _JOIN.split(spec) for d in _parse_one(part.strip(), spec)]


def parse_defenses(specs: SpecsLike) -> tuple[Defense, ...]:
    """Specs as given on the command line (a list of strings, one string, parsed values, or None) in order.

    DP-SGD computes the gradient from the examples, so it can only come first, and only once.
    """
    if specs is None:
        return ()
    if isinstance(specs, (str, *_CLASSES)):
        specs = [specs]
    out: list[Defense] = []
    for item in specs:
        out.extend(parse_defense(item) if isinstance(item, str) else [_check_parsed(item)])
    for i, d in enumerate(out):
        if isinstance(d, (DpSgd, DpSgdBudget)) and i > 0:
            raise UsageError(f"bad defense {str(d)!r}: dp computes the gradient from the examples, so it must come "
                             f"first and only once (got it after {str(out[i - 1])!r}); accepted: {ACCEPTED}")
    _check_budget(out)
    return tuple(out)


def _check_budget(out: list[Defense]) -> None:
    """At most one budget per setting; ``noise:epsilon`` needs a clip before it (its sensitivity) and must be the
    setting's only noise (a second noise, or one after ``dp:``, would make the calibrated epsilon wrong)."""
    budgets = [d for d in out if isinstance(d, BUDGETS)]
    if len(budgets) > 1:
        raise UsageError(f"bad defense {'+'.join(map(str, out))!r}: one epsilon budget per setting, got "
                         f"{len(budgets)}; accepted: {ACCEPTED}")
    if not budgets or not isinstance(budgets[0], NoiseBudget):
        return
    name, i, whole = str(budgets[0]), out.index(budgets[0]), "+".join(map(str, out))
    if any(isinstance(d, (Noise, DpSgd)) for d in out):
        raise UsageError(f"bad defense {whole!r}: {name} sets the setting's noise, so it cannot be "
                         f"combined with dp: or another noise; accepted: {ACCEPTED}")
    if not any(isinstance(d, Clip) for d in out[:i]):
        raise UsageError(f"bad defense {whole!r}: {name} needs a clip before it (clip:c=C+{name}): "
                         f"without a norm bound no noise level gives a finite epsilon; accepted: {ACCEPTED}")


def unresolved_budget(defenses: tuple[Defense, ...]) -> tuple[Defense, ...]:
    """The setting unchanged when it holds no epsilon budget; a budget must be resolved to a sigma first."""
    for d in defenses:
        if isinstance(d, BUDGETS):
            raise UsageError(f"defense {str(d)!r} is an epsilon budget: resolve it to a noise level with "
                             f"defenses.resolve_budget (the run's rounds, steps, batch and shard sizes) before use")
    return defenses


def format_defenses(defenses: SpecsLike) -> str:
    """Canonical one-string form (``none`` or ``clip:c=1+noise:sigma=0.01``): a label for plots, CSV rows, dirs."""
    parsed = parse_defenses(defenses)
    return "+".join(str(d) for d in parsed) if parsed else "none"


def _parse_one(part: str, whole: str) -> list[Defense]:
    kind, sep, body = part.partition(":")
    kind = kind.strip().lower()
    if kind == "none" and not sep:
        return []
    if kind not in _KINDS:
        where = f" in {whole!r}" if whole.strip() != part else ""
        raise UsageError(f"unknown defense {part!r}{where}; accepted: {ACCEPTED}")
    forms = _KINDS[kind]
    known = list(dict.fromkeys(k for required, optional, _ in forms for k in (*required, *optional)))
    values: dict[str, float] = {}
    for item in (body.split(",") if body.strip() else []):
        key, eq, text = item.partition("=")
        key, text = key.strip().lower(), text.strip()
        if key not in known:
            raise UsageError(f"bad defense {part!r}: unknown key {key!r} ({kind} takes {', '.join(known)}); "
                             f"accepted: {ACCEPTED}")
        if key in values:
            raise UsageError(f"bad defense {part!r}: {key} given twice; accepted: {ACCEPTED}")
        if not eq or not text:
            raise UsageError(f"bad defense {part!r}: {key} has no value; accepted: {ACCEPTED}")
        values[key] = _number(text, key, part)
    if "sigma" in values and "epsilon" in values:
        raise UsageError(f"bad defense {part!r}: give sigma or epsilon, not both; accepted: {ACCEPTED}")
    keys, optional, cls = next((f for f in forms if f[0][0] in values), forms[-1])
    unused = [k for k in values if k not in (*keys, *optional)]
    if unused:
        raise UsageError(f"bad defense {part!r}: {', '.join(unused)} only goes with epsilon; accepted: {ACCEPTED}")
    missing = [k for k in keys if k not in values]
    if missing:
        raise UsageError(f"bad defense {part!r}: missing {', '.join(k + '=' + k.upper() for k in missing)}; "
                         f"accepted: {ACCEPTED}")
    return [cls(**values)]


def _number(text: str, key: str, part: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"bad defense {part!r}: {key} must be a number, got {text!r}; accepted: {ACCEPTED}") from None
    check, demand = _CHECKS[key]
    if not math.isfinite(value) or not check(value):
        raise UsageError(f"bad defense {part!r}: {demand} and finite, got {text}; accepted: {ACCEPTED}")
    return value


def _check_parsed(d: Defense) -> Defense:
    """Already-built values go through the same checks as typed ones (one set of rules)."""
    if not isinstance(d, _CLASSES):
        raise UsageError(f"not a defense: {d!r}; accepted: {ACCEPTED}")
    for key in (f.name for f in fields(d)):
        value = getattr(d, key)
        if value is None and key == "delta":
            continue
        check, demand = _CHECKS[key]
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not check(value):
            raise UsageError(f"bad defense {str(d)!r}: {demand} and finite, got {value!r}; accepted: {ACCEPTED}")
    return d
