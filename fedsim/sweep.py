"""`fedleak sweep`: one federation per (defense, attack) setting, and the leakage-accuracy trade-off they trace.

Each run is an ordinary `simulate` run in its own sub-directory. ``tradeoff.csv`` and ``summary.json`` (kind
``sweep``) are rewritten after every run, so an interrupted sweep keeps the rows it finished; ``tradeoff.png`` plots
leakage against final accuracy (each point labelled with its setting and ε) next to the training-loss curves
(convergence under perturbed gradients). Files: ``fedsim.results.FILES["sweep"]``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from defenses import format_defenses, parse_defenses, single_release_epsilon
from fedsim.core.plots import pyplot
from fedsim.results import Resume, RunDir, read_records
from fedsim.server_app import resolve_defense
from fedsim.settings import Settings

COLUMNS = ("defense", "attack", "epsilon", "epsilon_single_release", "final_accuracy", "rouge1", "rouge2", "rougeL",
           "recover_rate", "attacks_scored", "run_dir")


def run_label(defense: str, attack: str) -> str:
    """A directory name for a setting: readable, filesystem-safe."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{defense}__{attack}")


def sweep(base: Settings, defenses: Sequence[str], attacks: Sequence[str], out: str | Path,
          run: Callable[[Settings], dict[str, Any]] | None = None, echo: Callable[[str], None] = print,
          resume: bool = False) -> list[dict]:
    """Run every (defense, attack) pair; returns the trade-off rows. ``run`` is the federation (default: simulate).

    ``resume``: a pair whose sub-directory already holds a completed run of the same settings is read, not rerun.
    An epsilon budget (``dp:epsilon=E,c=C``) is resolved per run with that run's settings, all of them before the
    first run starts (an impossible one fails the sweep at once); its row keeps the budget as its label.
    """
    if run is None:
        from fedsim.simulate import run as run_simulation

        run = run_simulation
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings_list = []
    resolved: dict[str, list[str]] = {}  # label -> the sigma specs its runs run (the attack does not change it)
    for spec in defenses:
        label = format_defenses(spec)  # validates every spec before the first run starts
        for attack in attacks:
            specs = [] if label == "none" else [label]
            settings = dataclasses.replace(base, defense=specs, attack=attack, out=str(out / run_label(label, attack)))
            settings_list.append((label, attack, settings))
            if label not in resolved:
                resolved[label] = resolve_defense(settings)[0].defense
    files = RunDir(out, "sweep")
    earlier = Resume.runs([s.out for _, _, s in settings_list], "federation run", enabled=resume)
    rows: list[dict] = []
    facts = {"settings": {k: v for k, v in base.to_run_config().items() if k not in ("defense", "attack", "out")},
             "defenses": list(dict.fromkeys(label for label, _, _ in settings_list)), "attacks": list(attacks),
             "runs": len(settings_list), "run_dirs": [s.out for _, _, s in settings_list]}

    def record(status: str) -> None:
        files.write_summary({"status": status, **facts, "rows": len(rows), "reused": earlier.kept})

    record("running")
    try:
        for i, (label, attack, settings) in enumerate(settings_list, 1):
            summary = earlier.take(settings.to_run_config(), run_key(settings))
            echo(f"== sweep {i}/{len(settings_list)}: defense {label}, attack {attack} -> {settings.out}"
                 + (f" ({Resume.KEPT})" if summary is not None else ""))
            if summary is None:
                summary = run(settings)
            single, _ = single_release_epsilon(list(parse_defenses(resolved[label])))
            rows.append({"defense": label, "attack": attack, "epsilon": _eps(summary.get("epsilon")),
                         "epsilon_single_release": single, "final_accuracy": summary.get("final_accuracy"),
                         **{k: summary.get(k) for k in ("rouge1", "rouge2", "rougeL", "recover_rate")},
                         "attacks_scored": (summary.get("attacks") or {}).get("scored", 0), "run_dir": settings.out})
            files.write_csv("tradeoff.csv", rows, COLUMNS)
            record("running")
    except BaseException as exc:
        record("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        raise
    files.save_figure("tradeoff.png", plot_tradeoff(rows, earlier.kept), dpi=120)
    record("completed")
    return rows


# How a run executes, not what it computes: a run that differs only in these is the same run.
_EXECUTION_ONLY = ("out", "data-dir", "attack-backend", "attack-gpus", "attack-threads", "attack-timeout")


def run_key(settings: Settings) -> list[str]:
    """The settings a kept run must share with this one (``Resume`` matches completed runs on them)."""
    return [k for k in settings.to_run_config() if k not in _EXECUTION_ONLY]


def _eps(value: Any) -> float:
    """ε from a summary: None (no defense accounted) and "inf" both mean no finite guarantee."""
    if value is None:
        return math.inf
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.inf


def _eps_text(eps: float) -> str:
    return "ε=∞" if math.isinf(eps) else f"ε={eps:.3g}"


def plot_tradeoff(rows: list[dict], reused: int = 0) -> Any:
    """Left: leakage (ROUGE-1) vs final accuracy per setting. Right: training loss per round per setting.
    The x label says how many runs were kept from an earlier run (--resume)."""
    plt = pyplot()
    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(13, 5))
    attacks = sorted({r["attack"] for r in rows})
    markers = dict(zip(attacks, "os^Dv<>p"))
    for r in rows:
        if r.get("final_accuracy") is None or r.get("rouge1") is None:
            continue
        ax.scatter(r["final_accuracy"], r["rouge1"], marker=markers[r["attack"]], s=60)
        ax.annotate(f"{r['defense']}\n{_eps_text(r['epsilon'])}", (r["final_accuracy"], r["rouge1"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    for attack, m in markers.items():
        ax.scatter([], [], marker=m, color="gray", label=f"attack: {attack}")
    ax.set_xlabel(f"final dev accuracy\n(runs reused from an earlier run with --resume: {reused} of {len(rows)})")
    ax.set_ylabel("mean ROUGE-1 of reconstructions (leakage)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("leakage vs accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    seen: set[str] = set()
    for r in rows:  # training is the same for every attack under one defense: one curve per defense
        if r["defense"] in seen:
            continue
        seen.add(r["defense"])
        if (Path(r["run_dir"]) / "rounds.jsonl").is_file():
            rounds = [x for x in read_records(r["run_dir"], "rounds.jsonl") if x.get("train_loss") is not None]
            ax_loss.plot([x["round"] for x in rounds], [x["train_loss"] for x in rounds], marker=".", label=r["defense"])
    ax_loss.set_xlabel("round")
    ax_loss.set_ylabel("mean client training loss")
    ax_loss.set_title("convergence under perturbed gradients")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    return fig
