"""`best`: what a real adversary runs, and what every defense should be scored against.

First `span` (exact, milliseconds). Its own check (a clean drop of the first layer's gradient spectrum, then a
batch that reproduces the gradient: :func:`adversary.distance.reproduces`, the same test for every B) tells
whether its answer is certified; only a fully certified answer ends the search. Otherwise (noise, or anything else
the check rejects) the optimisation attacks run, each with the full
``budget.iterations`` by default (``budget_split="split"`` divides them among them), and every candidate, span's
partial answer included when it is a complete batch, is judged by one yardstick:
:func:`adversary.distance.candidate_distance` of its decoded tokens and labels. The lowest wins. Ground truth is
never read. ``info`` records the winner and every candidate's distance; the winner's ``certified`` comes from the
same reproduction test on its final tokens and labels. ``budget.seconds`` bounds the whole: span
may use up to ``span_share`` of it (half by default), then each optimisation attack gets an equal share of what is
left (an attack that finishes early leaves its rest to the next), and each answers with the best it has at its
deadline. The optimisation attacks start where span got to (``warm_start``, :func:`adversary.dummy.warm_spec`):
the dummy begins at the embeddings of span's tokens (random where it has none), and the sequences span certified
are kept fixed, so the budget goes to what span could not do. On a FedAvg update no single gradient reproduces
the E drifting steps, so an uncertified winner gets the replay of the client's steps (``adversary.replay``), at
least :data:`REPLAY_GRACE` seconds of it, past the budget if need be.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adversary.case import Observation, Reconstruction
from adversary.distance import candidate_distance, passes
from adversary.dummy import warm_spec
from adversary.engine import Hook
from adversary.options import AttackOptions, Budget, choice
from adversary.registry import get_attack, register
from adversary.replay import certify_by_replay
from fedsim.core.errors import UsageError

REPLAY_GRACE = 10.0  # seconds a FedAvg winner's replay may take past the budget (see _certify_fedavg)


@dataclass(frozen=True)
class BestOptions(AttackOptions):
    """``attacks``: the optimisation attacks run when span's check fails; ``budget_split``: ``each`` (every attack
    gets ``budget.iterations``) or ``split`` (they share them); ``per_attack``: each attack's own options, typed
    (``{"lamp": LampOptions(candidates=80)}``) or as a dict of overrides (``{"lamp": {"candidates": 80}}``);
    ``hooks`` go to the optimisation attacks; ``warm_start``: start them from span's uncertified answer
    (``start``), also keeping the sequences span certified fixed (``pin``), or from scratch (``off``);
    ``span_share``: the most of ``budget.seconds`` span may use. A plain dict may also name attacks at the top
    level: ``{"lamp": {"candidates": 80}}`` is ``{"per_attack": {"lamp": {"candidates": 80}}}``."""

    attacks: tuple[str, ...] = ("tag", "lamp")
    budget_split: str = choice("each", "each", "split")
    per_attack: Mapping[str, Any] = field(default_factory=dict)
    hooks: tuple[Hook, ...] = ()
    warm_start: str = choice("pin", "pin", "start", "off")
    span_share: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.attacks or "best" in self.attacks:
            raise UsageError("best needs at least one attack other than itself")
        if not 0 < self.span_share <= 1:
            raise UsageError(f"bad best option span_share={self.span_share!r}; accepted: a share in (0, 1]")
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

    def options_for(self, name: str, init: str | None = None) -> AttackOptions:
        """Attack ``name``'s options, with ``hooks`` added where the attack takes hooks and ``init`` (a dummy
        init spec: the warm start) where it takes an init."""
        options = self.per_attack.get(name) or get_attack(name).options()
        names = {f.name for f in dataclasses.fields(options)}
        if self.hooks and "hooks" in names:
            options = dataclasses.replace(options, hooks=(*options.hooks, *self.hooks))
        if init is not None and "init" in names:
            options = dataclasses.replace(options, init=init)
        return options


def warm_init(span: Reconstruction, batch_size: int, mode: str) -> str | None:
    """The init spec that starts the optimisation where span got to (None: nothing to start from, or ``off``):
    its token ids, the sequences it certified pinned under ``pin`` (never all of them: something must stay free)."""
    if mode == "off" or not any(span.token_ids):
        return None
    certified = int(span.info.get("certified_sequences", 0)) if mode == "pin" else 0
    return warm_spec(span.token_ids, pinned=min(certified, batch_size - 1))


def _judge(observation: Observation, rec: Reconstruction, deadline: float = math.inf) -> float:
    """The candidate's distance, the labels being part of the candidate: for B = 1 also with the analytic label
    (exact from the bias gradient unless it is noised); for B > 1 each sequence's label is flipped in turn and kept
    where it explains the gradient better (an optimiser's joint labels can be all wrong, which turns the
    classifier's gradient around and hides good text behind a distance near 2), until ``deadline``."""
    value = candidate_distance(observation, rec.token_ids, rec.labels)
    analytic = rec.info.get("analytic_labels")
    if observation.batch_size == 1 and analytic and list(analytic) != list(rec.labels):
        other = candidate_distance(observation, rec.token_ids, analytic)
        if other < value:
            rec.labels, value = list(analytic), other
    if observation.batch_size > 1 and math.isfinite(value):
        labels = list(rec.labels)
        for _ in range(2):  # passes: a flip can make another one pay
            improved = False
            for i in range(len(labels)):
                for label in range(observation.num_labels):
                    if label == labels[i] or time.perf_counter() > deadline:
                        continue
                    trial = [*labels[:i], label, *labels[i + 1:]]
                    other = candidate_distance(observation, rec.token_ids, trial)
                    if other < value:
                        labels, value, improved = trial, other, True
            if not improved:
                break
        rec.labels = labels
    return value


def _certify_fedavg(observation: Observation, rec: Reconstruction, deadline: float) -> bool:
    """A FedAvg update (E > 1 drifting steps) is reproduced by no single gradient, so an optimisation attack's
    winner, however exact, fails :func:`passes`; the replay of the client's E steps is its only certificate (as for
    span's answers). It gets at least :data:`REPLAY_GRACE` seconds, past the budget if need be: without it an
    exact answer found at the deadline would be reported as a guess. Reorders ``rec`` into step order when it
    passes."""
    if observation.local_steps <= 1 or len(rec.token_ids) != observation.batch_size \
            or rec.info.get("replay_search_complete"):  # span already replayed these tokens to the end
        return False
    grace = max(deadline, time.perf_counter() + REPLAY_GRACE)
    replay = certify_by_replay(observation, rec.token_ids, rec.labels, grace)
    rec.info.update(replay.info)
    if not replay.passed:
        return False
    order = [rec.token_ids.index(q) for q in replay.token_ids]
    rec.token_ids, rec.labels, rec.texts = replay.token_ids, replay.labels, [rec.texts[i] for i in order]
    rec.gradient_distance = replay.distance
    rec.info["certified_by"] = "replay of the client's local SGD steps"
    return True


@register("best", BestOptions, certifies=True)
def best(observation: Observation, budget: Budget, seed: int, options: BestOptions) -> Reconstruction:
    """Span if its check passes, else the lowest-distance candidate of ``options.attacks`` (module doc)."""
    start = time.perf_counter()
    deadline = budget.deadline(start)
    span_budget = budget if budget.seconds is None else Budget(budget.iterations, budget.seconds * options.span_share)
    span = get_attack("span")(observation, span_budget, seed, options.options_for("span"))
    recs: dict[str, Reconstruction] = {}
    distances: dict[str, float] = {}
    passed = bool(span.info.get("span_check_passed")) and all(span.certified)
    init = None
    if all(span.token_ids) and len(span.token_ids) == observation.batch_size:
        recs["span"], distances["span"] = span, _judge(observation, span, -math.inf if passed else deadline)
    if not passed:
        runs = [name for name in options.attacks if name != "span"]
        steps = budget.iterations if options.budget_split == "each" else \
            max(1, budget.iterations // len(options.attacks))
        init = warm_init(span, observation.batch_size, options.warm_start)
        for k, name in enumerate(runs):
            share = budget.remaining(deadline, steps)
            if share.seconds is not None:  # the time left, shared by the attacks still to run
                share = Budget(steps, share.seconds / (len(runs) - k))
            recs[name] = get_attack(name)(observation, share, seed, options.options_for(name, init))
            distances[name] = _judge(observation, recs[name], deadline)
    if not recs:  # span failed and nothing else was asked for: its (empty) answer is all there is
        recs["span"], distances["span"] = span, float("inf")
    winner = min(recs, key=lambda name: distances[name])  # dicts keep insertion order: ties go to the first
    rec = recs[winner]
    rec.info.update(method="best", best_attack=winner, candidate_distances=distances, span_check_passed=passed,
                    warm_start=options.warm_start if init else "off",
                    iterations_per_attack={n: r.iterations for n, r in recs.items()},
                    candidate_texts={n: r.texts for n, r in recs.items()},
                    over_rank_limit=span.info.get("over_rank_limit"), span_reason=span.info.get("reason"))
    rec.iterations = sum(r.iterations for r in recs.values())
    rec.gradient_distance = distances[winner]
    certified = passed if winner == "span" else passes(observation, rec.token_ids, distances[winner])
    if not certified:
        certified = _certify_fedavg(observation, rec, deadline)
    rec.certified = [certified] * len(rec.token_ids)
    rec.seconds = time.perf_counter() - start
    return rec
