"""The sweep's verdict: the cheapest setting (least accuracy lost) that stops the worst attack in the grid.

Rule: a defense's worst-case leakage is the upper end of the 95 % t-interval of mean ROUGE-1 over every attacked
update, maximised over the attacks the grid ran against it; it stops the attack when that is below ``THRESHOLD``.
Among those, the one with the highest mean accuracy (equivalently the least cost against ``none``) wins. A mean
alone would let a setting pass on a lucky few updates; the upper end makes few updates count against it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from fedsim.frontier.stats import BASELINE, CONFIDENCE

THRESHOLD = 0.2
RULE = ("worst-case leakage of a defense = the upper end of the 95% t-interval of mean ROUGE-1 over every attacked "
        "update of every seed, maximised over the attacks in the grid; a defense qualifies when it is below {t:g}; "
        "the qualifying defense with the highest mean accuracy (least accuracy cost) wins, the lower bound on a tie")


def epsilon_text(eps: Any) -> str:
    """ε as a label: ∞ when there is no finite guarantee."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        return "ε=∞"
    return "ε=∞" if math.isinf(value) else f"ε={value:.3g}"


def defense_summaries(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per defense, in grid order: the closest attack's row (highest mean ROUGE-1) and the worst-case bound.

    ``leakage_bound`` is None when no attack was scored against the defense or one scored attack has no interval
    (a single update): such a defense cannot qualify. Accuracy is taken from the closest attack's runs.
    """
    out = []
    for defense in dict.fromkeys(r["defense"] for r in rows):
        own = [r for r in rows if r["defense"] == defense]
        measured = [r for r in own if r.get("n_updates") and r.get("rouge1_mean") is not None]
        closest = max(measured, key=lambda r: r["rouge1_mean"]) if measured else None
        bounds = [r.get("rouge1_hi") for r in measured]
        bound = max(bounds) if bounds and all(b is not None for b in bounds) else None
        out.append({"defense": defense, "row": closest or own[0], "closest": closest, "leakage_bound": bound,
                    "attacks": [r["attack"] for r in own]})
    return out


def verdict(rows: Sequence[dict[str, Any]], threshold: float = THRESHOLD) -> dict[str, Any]:
    """The verdict as a JSON-ready dict; ``text`` holds the lines to print last."""
    summaries = defense_summaries(rows)
    result: dict[str, Any] = {"threshold": threshold, "confidence": CONFIDENCE, "rule": RULE.format(t=threshold),
                              "attacks": list(dict.fromkeys(r["attack"] for r in rows)), "stopped": False,
                              "setting": None, "lowest_leakage": None}
    qualifying = [s for s in summaries if s["leakage_bound"] is not None and s["leakage_bound"] < threshold
                  and s["row"].get("accuracy_mean") is not None]
    if qualifying:
        best = max(qualifying, key=lambda s: (s["row"]["accuracy_mean"], -s["leakage_bound"]))
        result.update(stopped=True, setting=_setting(best))
        result["text"] = [f"VERDICT: {_name(best)} is the cheapest setting that stops the attack: worst-case "
                          f"ROUGE-1 {best['leakage_bound']:.3f} < {threshold:g} (upper end of the 95% interval).",
                          *_details(best)]
    else:
        measured = [s for s in summaries if s["closest"] is not None]
        if not measured:
            result["text"] = ["VERDICT: no attacked update was scored in this grid (attack none, or every attack "
                              "job failed): nothing to judge."]
        else:
            low = min(measured, key=lambda s: (math.inf if s["leakage_bound"] is None else s["leakage_bound"],
                                               s["closest"]["rouge1_mean"]))
            result["lowest_leakage"] = _setting(low)
            bound = "no interval (a single update)" if low["leakage_bound"] is None else f"{low['leakage_bound']:.3f}"
            result["text"] = [f"VERDICT: no setting in this grid stops the attack (worst-case ROUGE-1 below "
                              f"{threshold:g} at the upper end of its 95% interval).",
                              f"  lowest leakage: {_name(low)}, worst-case ROUGE-1 {bound}.", *_details(low)]
    result["text"].append(f"  rule: {result['rule']}.")
    return result


def _name(summary: dict[str, Any]) -> str:
    return f"{summary['defense']} ({epsilon_text(summary['row'].get('epsilon'))})"


def _setting(summary: dict[str, Any]) -> dict[str, Any]:
    row, closest = summary["row"], summary["closest"] or {}
    return {"defense": summary["defense"], "epsilon": row.get("epsilon"), "n_seeds": row.get("n_seeds"),
            "accuracy_mean": row.get("accuracy_mean"), "accuracy_sd": row.get("accuracy_sd"),
            "accuracy_cost_points": row.get("accuracy_cost_points"),
            "accuracy_cost_ci95": [row.get("accuracy_cost_lo"), row.get("accuracy_cost_hi")],
            "leakage_bound": summary["leakage_bound"], "closest_attack": closest.get("attack"),
            "rouge1_mean": closest.get("rouge1_mean"),
            "rouge1_ci95": [closest.get("rouge1_lo"), closest.get("rouge1_hi")],
            "rouge2_mean": closest.get("rouge2_mean"), "n_updates": closest.get("n_updates"),
            "n_failed": closest.get("n_failed"), "attacks_in_grid": summary["attacks"]}


def _num(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _details(summary: dict[str, Any]) -> list[str]:
    row, closest = summary["row"], summary["closest"]
    sd = row.get("accuracy_sd")
    lines = [f"  accuracy {_num(row.get('accuracy_mean'))}" + ("" if sd is None else f" ± {sd:.3f} (sd)")
             + f" over {row.get('n_seeds')} seed(s); " + _cost(row)]
    if closest is not None:
        lines.insert(0, f"  closest attack of {', '.join(summary['attacks'])}: {closest['attack']}, ROUGE-1 "
                        f"{closest['rouge1_mean']:.3f} [{_num(closest.get('rouge1_lo'))}, "
                        f"{_num(closest.get('rouge1_hi'))}] over {closest['n_updates']} attacked update(s) "
                        f"({closest.get('n_failed', 0)} failed).")
    return lines


def _cost(row: dict[str, Any]) -> str:
    cost = row.get("accuracy_cost_points")
    if row.get("defense") == BASELINE:
        return "no accuracy cost: it is the reference (no defense)."
    if cost is None:
        return "accuracy cost unknown (no 'none' setting in the grid to compare with)."
    lo, hi = row.get("accuracy_cost_lo"), row.get("accuracy_cost_hi")
    ci = "no interval (one seed)" if lo is None else f"95% CI {lo:.1f} to {hi:.1f}"
    return f"accuracy cost {cost:.1f} points against no defense ({ci})."


def read_verdict(sweep_dir: str | Path) -> dict[str, Any]:
    """A sweep's verdict.json ({} when it has none: an unfinished sweep, or one from before the verdict)."""
    try:
        verdict = json.loads((Path(sweep_dir) / "verdict.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return verdict if isinstance(verdict, dict) else {}
