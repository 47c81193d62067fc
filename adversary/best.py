"""`best`: what a real adversary runs, and what every defense should be scored against.

First `span` (exact, milliseconds). Its own check (a clean drop of the first layer's gradient spectrum, and for
B > 1 a batch that reproduces the gradient to float32 precision) tells whether its answer is exact; if so, that is
the answer. Otherwise (noise, or anything else the check rejects) the optimisation attacks run, each with the full
``budget.iterations`` by default (``budget_split="split"`` divides them among them), and every candidate, span's
partial answer included when it is a complete batch, is judged by one yardstick:
:func:`adversary.distance.candidate_distance` of its decoded tokens and labels. The lowest wins. Ground truth is
never read. ``info`` records the winner and every candidate's distance. ``budget.seconds`` bounds the whole: span
may use all of it, then each optimisation attack gets an equal share of what is left (an attack that finishes
early leaves its rest to the next).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adversary.case import Observation, Reconstruction
from adversary.distance import candidate_distance
from adversary.engine import Hook
from adversary.options import AttackOptions, Budget, choice
from adversary.registry import get_attack, register
from fedsim.core.errors import UsageError


@dataclass(frozen=True)
class BestOptions(AttackOptions):
    """``attacks``: the optimisation attacks run when span's check fails; ``budget_split``: ``each`` (every attack
    gets ``budget.iterations``) or ``split`` (they share them); ``per_attack``: each attack's own options, typed
    (``{"lamp": LampOptions(candidates=80)}``) or as a dict of overrides (``{"lamp": {"candidates": 80}}``);
    ``hooks`` go to the optimisation attacks. A plain dict may also name attacks at the top level:
    ``{"lamp": {"candidates": 80}}`` is ``{"per_attack": {"lamp": {"candidates": 80}}}``."""

    attacks: tuple[str, ...] = ("tag", "lamp")
    budget_split: str = choice("each", "each", "split")
    per_attack: Mapping[str, Any] = field(default_factory=dict)
    hooks: tuple[Hook, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.attacks or "best" in self.attacks:
            raise UsageError("best needs at least one attack other than itself")
        typed = {}
        for name, value in self.per_attack.items():  # an unknown name or option fails before any work
            typed[name] = get_attack(name).options(value)
        for name in ("span", *self.attacks):
            get_attack(name)
        object.__setattr__(self, "per_attack", typed)

    @classmethod
    def normalise(cls, overrides: Mapping[str, Any]) -> dict[str, Any]:
        own = {f.name for f in dataclasses.fields(cls)}
        out = {k: v for k, v in overrides.items() if k in own or not isinstance(v, Mapping)}
        shorthand = {k: v for k, v in overrides.items() if k not in own and isinstance(v, Mapping)}
        if shorthand:
            out["per_attack"] = {**shorthand, **dict(out.get("per_attack", {}))}
        return out

    def options_for(self, name: str) -> AttackOptions:
        """Attack ``name``'s options, with ``hooks`` added where the attack takes hooks."""
        options = self.per_attack.get(name) or get_attack(name).options()
        if self.hooks and "hooks" in {f.name for f in dataclasses.fields(options)}:
            options = dataclasses.replace(options, hooks=(*options.hooks, *self.hooks))
        return options


def _judge(observation: Observation, rec: Reconstruction) -> float:
    """The candidate's distance; for B = 1 also with the analytic label (exact from the bias gradient unless it
    is noised), keeping whichever explains the gradient better (the label is part of the candidate)."""
    value = candidate_distance(observation, rec.token_ids, rec.labels)
    analytic = rec.info.get("analytic_labels")
    if observation.batch_size == 1 and analytic and list(analytic) != list(rec.labels):
        other = candidate_distance(observation, rec.token_ids, analytic)
        if other < value:
            rec.labels, value = list(analytic), other
    return value


@register("best", BestOptions)
def best(observation: Observation, budget: Budget, seed: int, options: BestOptions) -> Reconstruction:
    """Span if its check passes, else the lowest-distance candidate of ``options.attacks`` (module doc)."""
    start = time.perf_counter()
    deadline = budget.deadline(start)
    span = get_attack("span")(observation, budget.remaining(deadline), seed, options.options_for("span"))
    recs: dict[str, Reconstruction] = {}
    distances: dict[str, float] = {}
    passed = bool(span.info.get("span_check_passed"))
    if all(span.token_ids) and len(span.token_ids) == observation.batch_size:
        recs["span"], distances["span"] = span, _judge(observation, span)
    if not passed:
        runs = [name for name in options.attacks if name != "span"]
        steps = budget.iterations if options.budget_split == "each" else \
            max(1, budget.iterations // len(options.attacks))
        for k, name in enumerate(runs):
            share = budget.remaining(deadline, steps)
            if share.seconds is not None:  # the time left, shared by the attacks still to run
                share = Budget(steps, share.seconds / (len(runs) - k))
            recs[name] = get_attack(name)(observation, share, seed, options.options_for(name))
            distances[name] = _judge(observation, recs[name])
    if not recs:  # span failed and nothing else was asked for: its (empty) answer is all there is
        recs["span"], distances["span"] = span, float("inf")
    winner = min(recs, key=lambda name: distances[name])  # dicts keep insertion order: ties go to the first
    rec = recs[winner]
    rec.info.update(method="best", best_attack=winner, candidate_distances=distances, span_check_passed=passed,
                    iterations_per_attack={n: r.iterations for n, r in recs.items()},
                    candidate_texts={n: r.texts for n, r in recs.items()})
    rec.iterations = sum(r.iterations for r in recs.values())
    rec.gradient_distance = distances[winner]
    rec.seconds = time.perf_counter() - start
    return rec
