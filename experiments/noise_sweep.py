"""[noise] Gaussian noise on the gradient (the second seed paper's defense): leakage, epsilon, accuracy and training
loss against the noise level sigma.

Two halves, both over the library:

* leakage: TAG attacks each sentence's defended gradient (``AttackJob(defense=...)``, lengths public as in the TAG
  threat model) for every sigma: ROUGE and Recover Rate against sigma;
* utility: ``fedsim.sweep.sweep`` runs one federation per sigma (FedSGD, no attack in the loop): final dev accuracy
  and training loss per round against sigma.

The defense is ``clip:c=C+noise:sigma=S``: the clip bounds the update's norm (C = 10 by default, above the ~6.6 norm
of a TinyBERT4 sentence gradient at normal:0.02, so it rarely changes the update) and so gives the noise a finite
privacy cost. Epsilon (delta = 1e-5) is what the federation accounts (``defenses`` over dp-accounting): the
composition over the rounds a client sent, and the single-release Gaussian bound the seed paper uses. Noise without
a clip has epsilon = inf.

    python experiments/noise_sweep.py                                  # tinybert4 (wall times: experiments/README.md)
    python experiments/noise_sweep.py --model tiny --init uniform:0.1  # -> noise_sweep_tiny.{csv,md,png}
    python experiments/noise_sweep.py --quick                          # tiny model, pii, two settings

The last line printed is one JSON object: the smallest sigma of the grid at which mean TAG ROUGE-1 falls below
``--target`` (0.2), and the federation's accuracy there against no defense.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import common
from fedsim.settings import Settings
from fedsim.sweep import sweep
from fedsim.core.plots import pyplot
from fedsim.results import RunDir
from fedsim.core.io import read_jsonl

NAME = "noise_sweep"
SIGMAS = (0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 1.0)  # half decades: the threshold to ~3x


def spec(sigma: float, clip: float) -> str:
    return "none" if sigma == 0 else f"clip:c={clip:g}+noise:sigma={sigma:g}"


def plot(rows: list[dict], runs: dict[str, list[dict]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    labels = ["0" if r["sigma"] == 0 else f"{r['sigma']:g}" for r in rows]
    xs = list(range(len(rows)))
    ax = axes[0][0]
    for m in ("rouge1", "rouge2", "recover_rate"):
        ax.errorbar(xs, [r[f"{m}_mean"] for r in rows], yerr=[0 if math.isnan(r[f"{m}_ci95"]) else r[f"{m}_ci95"]
                    for r in rows], marker="o", capsize=3, label=common.LABELS[m])
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("leakage (TAG, mean and 95% CI over sentences)")
    ax = axes[0][1]
    for key, label in (("epsilon_rounds", "composed over the client's rounds (RDP)"),
                       ("epsilon_single", "single release (analytic Gaussian)")):
        finite = [(x, r[key]) for x, r in zip(xs, rows) if math.isfinite(r[key])]
        ax.plot([x for x, _ in finite], [e for _, e in finite], marker="o", label=label)
    ax.set_yscale("log")
    ax.set_title("epsilon (delta = 1e-5); sigma = 0 has no finite epsilon")
    ax = axes[1][0]
    ax.plot(xs, [r["final_accuracy"] for r in rows], marker="o", label="final dev accuracy")
    ax.plot(xs, [r["final_train_loss"] for r in rows], marker="s", label="final training loss")
    ax.set_title("utility of the federation")
    for a in (axes[0][0], axes[0][1], axes[1][0]):
        a.set_xticks(xs, labels, rotation=45)
        a.set_xlabel("noise sigma (clip c fixed)")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    ax = axes[1][1]
    for label, rounds in zip(labels, runs.values()):
        ax.plot([r["round"] for r in rounds], [r["train_loss"] for r in rounds], marker=".", label=f"sigma={label}")
    ax.set_xlabel("round")
    ax.set_ylabel("mean client training loss")
    ax.set_title("convergence under noisy gradients")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    RunDir(path.parent, "experiment").save_figure(path.name, fig)


def main(argv: list[str] | None = None, federation: Callable[[Any], dict] | None = None) -> list[dict]:
    """``federation(settings) -> summary``: how each sweep run is executed (default: ``fedleak simulate`` on Ray)."""
    p = common.parser(__doc__, full=common.Scale(5, 300), quick=common.Scale(1, 10))
    p.add_argument("--sigmas", type=float, nargs="+", default=None, help=f"default: {SIGMAS}; quick: 0 0.1")
    p.add_argument("--clip", type=float, default=10.0, help="clip norm C before the noise (default: 10)")
    p.add_argument("--rounds", type=int, default=None, help="federation rounds (default: 10; quick: 1)")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8, help="client batch in the federation (default: 8)")
    p.add_argument("--lr", type=float, default=0.02, help="client SGD learning rate (default: 0.02)")
    p.add_argument("--mode", choices=("fedsgd", "fedavg"), default="fedsgd", help="federation mode (default: fedsgd)")
    p.add_argument("--local-steps", type=int, default=1, help="SGD steps per round with --mode fedavg (default: 1)")
    p.add_argument("--model", default=None, help="default: tinybert4; quick: tiny")
    p.add_argument("--init", default=None, help="default: normal:0.02; quick: uniform:0.1")
    p.add_argument("--target", type=float, default=0.2, help="leakage threshold on mean ROUGE-1 (default: 0.2)")
    args = common.setup(p.parse_args(argv))

    sigmas = args.sigmas or ([0.0, 0.1] if args.quick else list(SIGMAS))
    default_model = "tiny" if args.quick else "tinybert4"
    model, dataset = args.model or default_model, "pii" if args.quick else "sst2"
    init = args.init or ("uniform:0.1" if args.quick else "normal:0.02")
    name = NAME if model == default_model else f"{NAME}_{model}"
    rounds = args.rounds or (1 if args.quick else 10)
    defenses = [spec(s, args.clip) for s in sigmas]
    texts = common.pii_sentences(args.sentences, args.seed) if args.quick else \
        common.glue_sentences("sst2", args.sentences, args.data_dir, args.seed, min_words=3, max_words=30)
    cells = [common.Cell({"sigma": s, "defense": d}, texts, common.AttackJob(
        model=model, init=init, method="tag", iterations=args.iterations, seed=args.seed,
        defense=[] if d == "none" else [d])) for s, d in zip(sigmas, defenses)]
    attacks = common.aggregate(common.run_cells(cells, name, args.out, resume=args.resume), ["sigma", "defense"])

    data_dir = "" if args.quick else str(args.data_dir)
    base = Settings(model=model, init=init, dataset=dataset, data_dir=data_dir, clients=args.clients,
                    rounds=rounds, batch_size=args.batch_size, lr=args.lr, mode=args.mode,
                    local_steps=args.local_steps, attack="none", attack_backend="inline",
                    eval_examples=20 if args.quick else 300, seed=args.seed, out=str(args.out / "raw"))
    federations = sweep(base, defenses, ["none"], args.out / "raw" / f"{name}_runs", run=federation,
                        resume=args.resume)
    rows, runs = [], {}
    for a, f in zip(attacks, federations):  # the federation accounts epsilon per client and round (defenses)
        summary = json.loads((Path(f["run_dir"]) / "summary.json").read_text())
        runs[a["defense"]] = [r for r in read_jsonl(Path(f["run_dir"]) / "rounds.jsonl") if r.get("train_loss") is not None]
        rows.append({**a, "epsilon_rounds": f["epsilon"], "epsilon_single": f["epsilon_single_release"],
                     "final_accuracy": f["final_accuracy"], "initial_accuracy": summary.get("initial_accuracy"),
                     "final_train_loss": summary.get("final_train_loss"), "rounds": summary.get("rounds_completed")})
    columns = ["sigma", "defense", "n"] + [f"{m}_{s}" for m in common.METRICS for s in ("mean", "std", "ci95")] + \
        ["epsilon_rounds", "epsilon_single", "initial_accuracy", "final_accuracy", "final_train_loss", "rounds"]
    common.write_csv(args.out / f"{name}.csv", rows, columns)
    verdict = threshold(rows, args.target, model, init)
    table = [[f"{r['sigma']:g}", r["defense"], r["n"], *(common.pm(r, m) for m in common.METRICS),
              f"{r['epsilon_rounds']:.3g}", f"{r['epsilon_single']:.3g}", f"{r['final_accuracy']:.3f}",
              f"{r['final_train_loss']:.3f}"] for r in rows]
    common.write_markdown(args.out / f"{name}.md", f"Noise defense: leakage, epsilon and utility against sigma ({model})",
                          [common.markdown_table(["sigma", "defense", "n", "Recover Rate", "ROUGE-1", "ROUGE-2",
                                                  "ROUGE-L", "ε (rounds)", "ε (single)", "final acc.",
                                                  "final train loss"], table)],
                          [common.METRIC_NOTE,
                           f"Federation: {model} on {dataset}, {args.clients} clients, {rounds} rounds of "
                           + (f"FedAvg ({args.local_steps} local steps)" if args.mode == "fedavg" else "FedSGD")
                           + f", batch {args.batch_size}, lr {base.lr:g}, the defense on every step's gradient, dev "
                           f"accuracy on {base.eval_examples} examples (before training: "
                           f"{rows[0]['initial_accuracy']:.3f}). ε at δ = 1e-5: 'rounds' composes "
                           "the update-level Gaussian mechanism over the rounds one client sent (RDP), 'single' is one "
                           "release (the seed paper's bound); inf = no finite guarantee.",
                           verdict["text"], common.describe_run(args, f", model {model} ({init})")])
    plot(rows, runs, args.out / f"{name}.png")
    print(json.dumps({k: v for k, v in verdict.items() if k != "text"}))
    return rows


def threshold(rows: list[dict], target: float, model: str, init: str) -> dict[str, Any]:
    """The smallest sigma of the grid whose mean ROUGE-1 is below ``target``, and its accuracy cost.

    ``None`` when no sigma of the grid gets there; the grid's resolution bounds the answer (the next lower sigma
    still leaked), so both are reported.
    """
    rows = sorted(rows, key=lambda r: r["sigma"])
    below = [i for i, r in enumerate(rows) if r["rouge1_mean"] < target]
    base = rows[0] if rows[0]["sigma"] == 0 else None
    verdict: dict[str, Any] = {"model": model, "init": init, "target_rouge1": target, "threshold_sigma": None}
    if below:
        i = below[0]
        hit, prev = rows[i], rows[i - 1] if i > 0 else None
        verdict.update(threshold_sigma=hit["sigma"], rouge1_at_threshold=hit["rouge1_mean"],
                       last_leaking_sigma=prev["sigma"] if prev else None,
                       rouge1_at_last_leaking=prev["rouge1_mean"] if prev else None,
                       accuracy_at_threshold=hit["final_accuracy"], epsilon_at_threshold=hit["epsilon_rounds"],
                       epsilon_single_at_threshold=hit["epsilon_single"])
    if base is not None:
        verdict["accuracy_no_defense"] = base["final_accuracy"]
        verdict["rouge1_no_defense"] = base["rouge1_mean"]
        if below:
            verdict["accuracy_cost"] = base["final_accuracy"] - verdict["accuracy_at_threshold"]
    if verdict["threshold_sigma"] is None:
        verdict["text"] = f"No sigma of the grid brought mean TAG ROUGE-1 below {target:g}."
    else:
        prev = verdict["last_leaking_sigma"]
        verdict["text"] = (f"Smallest sigma of the grid with mean TAG ROUGE-1 < {target:g}: **{verdict['threshold_sigma']:g}** "
                           f"(ROUGE-1 {verdict['rouge1_at_threshold']:.3f}"
                           + (f"; sigma {prev:g} still leaked {verdict['rouge1_at_last_leaking']:.3f}" if prev is not None
                              else "") + ")"
                           + (f"; final accuracy {verdict['accuracy_at_threshold']:.3f} against "
                              f"{verdict['accuracy_no_defense']:.3f} without defense" if base is not None else "") + ".")
    return verdict


if __name__ == "__main__":
    common.run_script(main)
