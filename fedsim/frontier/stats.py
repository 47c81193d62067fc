"""Per-setting aggregates of a sweep: accuracy over seeds, leakage over every attacked update of every seed.

A run is one dict (``fedsim.sweep`` builds it from the run's own files): ``defense``, ``attack``, ``seed``,
``epsilon``, ``epsilon_single_release``, ``final_accuracy``, ``updates`` (one dict per attacked update: ``rouge1``,
``rouge2``, or ``error``), ``reused``, ``run_dir``. Leakage and accuracy of a row thus come from the same federations.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BASELINE = "none"  # the accuracy cost of a setting is measured against this defense

COLUMNS = ("defense", "attack", "epsilon", "epsilon_single_release", "n_seeds", "accuracy_mean", "accuracy_sd",
           "accuracy_cost_points", "accuracy_cost_lo", "accuracy_cost_hi", "n_updates", "n_failed", "rouge1_mean",
           "rouge1_lo", "rouge1_hi", "rouge1_failures_as_zero", "rouge2_mean", "rouge2_lo", "rouge2_hi",
           "runs_reused")


def _numbers(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and not isinstance(v, bool) and math.isfinite(float(v))]


def mean_sd(values: Iterable[Any]) -> tuple[float | None, float | None]:
    """Mean and sample sd (n - 1); sd is None below two values (one seed says nothing about the spread)."""
    xs = _numbers(values)
    if not xs:
        return None, None
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None)


def mean_interval(values: Iterable[Any], confidence: float = CONFIDENCE) -> tuple[float | None, float | None,
                                                                                    float | None]:
    """Mean and its two-sided t-interval (scipy.stats.t); no interval below two values, a point when all are equal."""
    xs = _numbers(values)
    if not xs:
        return None, None, None
    mean = float(np.mean(xs))
    if len(xs) < 2:
        return mean, None, None
    sem = float(stats.sem(xs))
    if sem == 0:
        return mean, mean, mean
    lo, hi = stats.t.interval(confidence, len(xs) - 1, loc=mean, scale=sem)
    return mean, float(lo), float(hi)


def difference_interval(a: Sequence[Any], b: Sequence[Any], confidence: float = CONFIDENCE
                        ) -> tuple[float | None, float | None, float | None]:
    """mean(a) - mean(b) and its Welch t-interval (unequal variances); no interval when either side has < 2 values."""
    xa, xb = _numbers(a), _numbers(b)
    if not xa or not xb:
        return None, None, None
    diff = float(np.mean(xa) - np.mean(xb))
    if len(xa) < 2 or len(xb) < 2:
        return diff, None, None
    if np.var(xa) == 0 and np.var(xb) == 0:
        return diff, diff, diff
    ci = stats.ttest_ind(xa, xb, equal_var=False).confidence_interval(confidence)
    return diff, float(ci.low), float(ci.high)


def aggregate(runs: Sequence[dict[str, Any]], confidence: float = CONFIDENCE) -> list[dict[str, Any]]:
    """One row per (defense, attack), in the order the runs first name them (see ``COLUMNS``).

    Accuracy: mean and sd over seeds; its cost, in points, is mean(baseline) - mean(setting) with a Welch interval,
    against the ``none`` runs of the same attack (of any attack when the grid has none with this one; training does
    not depend on the attack). Leakage: mean and t-interval over every scored update of every seed; failed attack
    jobs are counted (``n_failed``) and, in ``rouge1_failures_as_zero``, scored 0.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["defense"], run["attack"]), []).append(run)
    baselines = {attack: group for (defense, attack), group in groups.items() if defense == BASELINE}
    rows = []
    for (defense, attack), group in groups.items():
        accuracies = [r.get("final_accuracy") for r in group]
        acc_mean, acc_sd = mean_sd(accuracies)
        base = baselines.get(attack) or next(iter(baselines.values()), None)
        if defense == BASELINE:
            cost = (0.0 if acc_mean is not None else None, None, None)  # the reference itself: no interval
        elif base is None:
            cost = (None, None, None)
        else:
            cost = difference_interval([r.get("final_accuracy") for r in base], accuracies, confidence)
        updates = [u for r in group for u in r.get("updates") or []]
        scored = [u for u in updates if "error" not in u]
        r1, r2 = (mean_interval([u.get(k) for u in scored], confidence) for k in ("rouge1", "rouge2"))
        rows.append({
            "defense": defense, "attack": attack,
            # the largest over seeds: a seed's partition can change the smallest shard, hence the accounting
            "epsilon": max(math.inf if r.get("epsilon") is None else float(r["epsilon"]) for r in group),
            "epsilon_single_release": group[0].get("epsilon_single_release"),
            "n_seeds": len(group), "accuracy_mean": acc_mean, "accuracy_sd": acc_sd,
            **{f"accuracy_cost_{k}": None if v is None else 100 * v for k, v in zip(("points", "lo", "hi"), cost)},
            "n_updates": len(scored), "n_failed": len(updates) - len(scored),
            "rouge1_mean": r1[0], "rouge1_lo": r1[1], "rouge1_hi": r1[2],
            "rouge1_failures_as_zero": mean_sd(0.0 if "error" in u else u.get("rouge1") for u in updates)[0],
            "rouge2_mean": r2[0], "rouge2_lo": r2[1], "rouge2_hi": r2[2],
            "runs_reused": sum(bool(r.get("reused")) for r in group),
            "run_dirs": [r.get("run_dir") for r in group],
        })
    return rows


def loss_curves(runs: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Per defense, the training loss of each round averaged over seeds (``train_loss``: [(round, loss)] per run).

    Training does not depend on the attack, so each (defense, seed) counts once."""
    per_seed: dict[tuple[str, Any], list] = {}
    for run in runs:
        per_seed.setdefault((run["defense"], run.get("seed")), run.get("train_loss") or [])
    curves: dict[str, dict[int, list[float]]] = {}
    for (defense, _), curve in per_seed.items():
        for rnd, loss in curve:
            if loss is not None:
                curves.setdefault(defense, {}).setdefault(int(rnd), []).append(float(loss))
    return {d: [(r, float(np.mean(v))) for r, v in sorted(by_round.items())] for d, by_round in curves.items()}
