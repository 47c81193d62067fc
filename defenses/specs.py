"""Defense specs: the strings users type (``clip:c=1``, ``noise:sigma=0.01``) and the values they stand for.

A defense setting is an ordered list of transforms. It comes as repeated ``--defense`` options or as one string
joined with ``+`` (``clip:c=1+noise:sigma=0.01``), so that ``fedleak sweep`` can name a composed setting per run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Union

from fedsim.core.errors import UsageError

ACCEPTED = ("none, noise:sigma=S (S >= 0), clip:c=C (C > 0), dp:sigma=S,c=C (S >= 0, C > 0), "
            "prune:p=P (0 <= P < 1); compose in order with repeated --defense or '+'")


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


Defense = Union[Noise, Clip, DpSgd, Prune]
SpecsLike = Union[str, Defense, Iterable[Union[str, Defense]], None]

_JOIN = re.compile(r"\+(?=\s*[A-Za-z])")  # '+' before a name joins specs; '1e+2' stays a number
# kind -> (its keys in order, its class); key -> (check, what the check demands)
_KINDS: dict[str, tuple[tuple[str, ...], type]] = {
    "noise": (("sigma",), Noise),
    "clip": (("c",), Clip),
    "dp": (("sigma", "c"), DpSgd),
    "prune": (("p",), Prune),
}
_CHECKS = {
    "sigma": (lambda v: v >= 0, "sigma must be >= 0"),
    "c": (lambda v: v > 0, "c must be > 0"),
    "p": (lambda v: 0 <= v < 1, "p must be in [0, 1)"),
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
    if isinstance(specs, (str, Noise, Clip, DpSgd, Prune)):
        specs = [specs]
    out: list[Defense] = []
    for item in specs:
        out.extend(parse_defense(item) if isinstance(item, str) else [_check_parsed(item)])
    for i, d in enumerate(out):
        if isinstance(d, DpSgd) and i > 0:
            raise UsageError(f"bad defense {str(d)!r}: dp computes the gradient from the examples, so it must come "
                             f"first and only once (got it after {str(out[i - 1])!r}); accepted: {ACCEPTED}")
    return tuple(out)


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
    keys, cls = _KINDS[kind]
    values: dict[str, float] = {}
    for item in (body.split(",") if body.strip() else []):
        key, eq, text = item.partition("=")
        key, text = key.strip().lower(), text.strip()
        if key not in keys:
            raise UsageError(f"bad defense {part!r}: unknown key {key!r} ({kind} takes {', '.join(keys)}); "
                             f"accepted: {ACCEPTED}")
        if key in values:
            raise UsageError(f"bad defense {part!r}: {key} given twice; accepted: {ACCEPTED}")
        if not eq or not text:
            raise UsageError(f"bad defense {part!r}: {key} has no value; accepted: {ACCEPTED}")
        values[key] = _number(text, key, part)
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
    if not isinstance(d, (Noise, Clip, DpSgd, Prune)):
        raise UsageError(f"not a defense: {d!r}; accepted: {ACCEPTED}")
    for key in _KINDS[str(d).partition(":")[0]][0]:
        value = getattr(d, key)
        check, demand = _CHECKS[key]
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not check(value):
            raise UsageError(f"bad defense {str(d)!r}: {demand} and finite, got {value!r}; accepted: {ACCEPTED}")
    return d
