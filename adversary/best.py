"""`best`: what a real adversary runs, and what every defense should be scored against.

First `span` (exact, milliseconds). Its own check (a clean drop of the first layer's gradient spectrum, and for
B > 1 a batch that reproduces the gradient to float32 precision) tells whether its answer is exact; if so, that is
the answer. Otherwise (noise, or anything else the check rejects) the optimisation attacks run, each with the full
``iterations`` budget by default (``budget="split"`` divides it among them), and every candidate, span's partial
answer included when it is a complete batch, is judged by one yardstick:
:func:`adversary.candidates.gradient_distance` of its decoded tokens and labels. The lowest wins. Ground truth is
never read. ``info`` records the winner and every candidate's distance.
"""

from __future__ import annotations

import time
from typing import Sequence

from adversary.candidates import gradient_distance
from adversary.case import Observation, Reconstruction
from adversary.engine import Hook
from adversary.registry import get_attack, register
from fedsim.core.errors import UsageError


def _judge(observation: Observation, rec: Reconstruction) -> float:
    """The candidate's distance; for B = 1 also with the analytic label (exact from the bias gradient unless it
    is noised), keeping whichever explains the gradient better (the label is part of the candidate)."""
    value = gradient_distance(observation, rec.token_ids, rec.labels)
    analytic = rec.info.get("analytic_labels")
    if observation.batch_size == 1 and analytic and list(analytic) != list(rec.labels):
        other = gradient_distance(observation, rec.token_ids, analytic)
        if other < value:
            rec.labels, value = list(analytic), other
    return value


@register("best")
def best(observation: Observation, *, iterations: int = 1000, seed: int = 0,
         attacks: Sequence[str] = ("tag", "lamp"), budget: str = "each", options: dict[str, dict] | None = None,
         hooks: tuple[Hook, ...] = ()) -> Reconstruction:
    """Span if its check passes, else the lowest-distance candidate of ``attacks`` (module doc).

    ``budget``: ``each`` (every attack gets ``iterations``) or ``split`` (they share it). ``options``: per-attack
    keyword options, e.g. ``{"lamp": {"candidates": 80}}``. ``hooks`` go to the optimisation attacks.
    """
    if budget not in ("each", "split"):
        raise UsageError(f"unknown budget {budget!r}; accepted: each, split")
    if not attacks or "best" in attacks:
        raise UsageError("best needs at least one attack other than itself")
    runners = {name: get_attack(name) for name in ("span", *attacks)}  # an unknown name fails before any work
    options = options or {}
    start = time.perf_counter()
    span = runners["span"](observation, seed=seed, **options.get("span", {}))
    recs: dict[str, Reconstruction] = {}
    distances: dict[str, float] = {}
    passed = bool(span.info.get("span_check_passed"))
    if all(span.token_ids) and len(span.token_ids) == observation.batch_size:
        recs["span"], distances["span"] = span, _judge(observation, span)
    if not passed:
        steps = iterations if budget == "each" else max(1, iterations // len(attacks))
        for name in attacks:
            if name == "span":
                continue
            extra = {"hooks": hooks} if hooks else {}
            recs[name] = runners[name](observation, iterations=steps, seed=seed, **options.get(name, {}), **extra)
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
